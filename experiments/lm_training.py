"""Training and evaluating an LSTM language model with a recipe: the loop of the text jobs.

``train_and_evaluate`` puts the training streams on the device once, trains every seed at once
(``jax.vmap`` over the whole state) in jitted ``lax.scan`` calls of many outer steps
(``experiments.bptt``), and evaluates the validation split between calls; one host sync per
call. With a ``workdir`` it checkpoints the state after every call (``experiments.checkpoints``:
orbax, verified by checksums before a restore) beside ``curve.json``; ``resume=True`` continues
from the last good checkpoint, and since the data order and every key are functions of the state,
a resumed run equals an uninterrupted one bit for bit on CPU.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import bptt, recurrent_models, recurrent_recipes, text_data
from experiments import checkpoints as ckpt_lib


def train_and_evaluate(
  recipe: recurrent_recipes.LMRecipe,
  model: recurrent_models.LSTMLanguageModel,
  corpus: text_data.TextCorpus,
  seeds: list[int],
  num_evals: int,
  eval_batch_size: int = 50,
  workdir: pathlib.Path | None = None,
  resume: bool = False,
  stop_after_calls: int | None = None,
) -> dict | None:
  """Trains ``model`` with ``recipe``, ``len(seeds)`` seeds at once (vmap).

  Args:
    recipe: the optimizer, schedule, batch, BPTT length, clipping and training length.
    model: the language model.
    corpus: its training, validation and test token ids.
    seeds: one run per seed (initialisation, dropout, Langevin noise).
    num_evals: validation points, evenly spaced over the run (one host sync each).
    eval_batch_size: parallel streams of the evaluation (each starts from the zero state).
    workdir: where to checkpoint after every call (None: no checkpoints).
    resume: continue from the last good checkpoint in ``workdir``.
    stop_after_calls: stop (returning None) after this many calls of this process, as a kill
      after a checkpoint would (tests).

  Returns:
    A JSON-ready dict: ``recipe``, ``seeds``, ``curve`` (effective epochs, mean training loss of
    the last chunk and validation nats per seed at each point), ``valid`` and ``test`` (nats,
    bits, perplexity per seed), ``effective_epochs`` and ``wall_s`` (compilation included,
    this process only).

  Raises:
    ckpt_lib.CheckpointError: ``workdir`` holds checkpoints and ``resume`` is False, or
      ``resume`` is True and there is nothing good to resume from.
  """
  streams = jnp.asarray(text_data.bptt_streams(corpus.train, recipe.batch_size))
  num_segments = text_data.num_segments(streams, recipe.num_steps)
  total_steps = max(num_evals, round(recipe.outer_epochs * num_segments))
  make_tx = recipe.make_tx(steps_per_outer_epoch=num_segments)
  states = jax.vmap(lambda s: bptt.create_state(model, make_tx, s, recipe.batch_size))(
    jnp.asarray(seeds)
  )
  step = bptt.make_train_step(
    model,
    num_steps=recipe.num_steps,
    langevin_steps=recipe.langevin_steps,
    clip_norm=recipe.clip_norm,
  )
  # num_evals calls; the last takes the remainder, so that the run has exactly total_steps
  # steps (equal effective epochs across optimizers) at the cost of one more compilation.
  chunk = total_steps // num_evals
  sizes = [chunk] * (num_evals - 1) + [total_steps - chunk * (num_evals - 1)]
  runners = {
    n: jax.jit(jax.vmap(bptt.make_train_steps(step, n), in_axes=(0, None))) for n in set(sizes)
  }
  evaluate = jax.jit(
    jax.vmap(lambda p, x, y: bptt.evaluate(model, p, x, y), in_axes=(0, None, None))
  )
  valid, test = _same_shape(
    text_data.eval_streams(corpus.valid, eval_batch_size, recipe.num_steps),
    text_data.eval_streams(corpus.test, eval_batch_size, recipe.num_steps),
  )
  curve, start, steps, done = [], time.perf_counter(), 0, 0
  if workdir is not None:
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
  checkpoints = None if workdir is None else ckpt_lib.Checkpoints(workdir)
  if checkpoints is not None:
    states, steps, curve = _restore(checkpoints, states, workdir, resume)
    boundaries = np.cumsum([0] + sizes).tolist()
    if steps not in boundaries:
      raise ckpt_lib.CheckpointError(
        f"{workdir}: its checkpoint at step {steps} does not fit this run's calls "
        f"{boundaries}: resume with the options it was started with."
      )
    done = boundaries.index(steps)
  calls = 0
  for size in sizes[done:]:
    if stop_after_calls is not None and calls == stop_after_calls:
      checkpoints.close()
      return None
    states, train_loss = runners[size](states, streams)
    steps += size
    calls += 1
    nats = np.asarray(evaluate(states.params, *valid)["nats"])
    curve.append(
      {
        "steps": steps,
        "effective_epochs": steps * recipe.langevin_steps / num_segments,
        "train_nats": np.asarray(train_loss).tolist(),
        "valid_nats": nats.tolist(),
      }
    )
    print(
      f"  {recipe.optimizer:12s} {curve[-1]['effective_epochs']:6.2f} eff. epochs  "
      f"valid {nats.mean():.4f} nats (perplexity {np.exp(nats).mean():.2f})  "
      f"({time.perf_counter() - start:.0f} s)",
      flush=True,
    )
    if checkpoints is not None:  # the curve first: a resume keeps its entries <= the step
      (workdir / "curve.json.tmp").write_text(json.dumps(curve))
      (workdir / "curve.json.tmp").replace(workdir / "curve.json")
      checkpoints.save(steps, _state_dict(states))
  if checkpoints is not None:
    checkpoints.close()
  final = {
    split: {k: np.asarray(v).tolist() for k, v in evaluate(states.params, *data).items()}
    for split, data in (("valid", valid), ("test", test))
  }
  return {
    "recipe": dataclasses.asdict(recipe),
    "seeds": seeds,
    "curve": curve,
    **final,
    "effective_epochs": curve[-1]["effective_epochs"],
    "wall_s": time.perf_counter() - start,
  }


def _same_shape(*splits):
  """Evaluation streams padded with unscored segments to one shape: one compilation for all."""
  length = max(inputs.shape[0] for inputs, _ in splits)
  pad = lambda a, value: np.concatenate(
    [a, np.full((length - a.shape[0], *a.shape[1:]), value, a.dtype)]
  )
  return [
    (jnp.asarray(pad(inputs, 0)), jnp.asarray(pad(targets, -1))) for inputs, targets in splits
  ]


def _state_dict(states: bptt.RecurrentTrainState) -> dict:
  return {
    "step": states.step,
    "params": states.params,
    "opt_state": states.opt_state,
    "key": states.key,
    "lstm_state": states.lstm_state,
  }


def _restore(checkpoints: ckpt_lib.Checkpoints, states, workdir: pathlib.Path, resume: bool):
  """``(states, steps, curve)`` from the last good checkpoint, or the fresh ones."""
  if not resume:
    if checkpoints.steps():
      raise ckpt_lib.CheckpointError(
        f"{workdir} holds a run: pass --resume to continue it, or another --workdir."
      )
    return states, 0, []
  step = checkpoints.latest_good()
  if step is None:
    raise ckpt_lib.CheckpointError(f"{workdir} holds no checkpoint: nothing to resume.")
  restored = checkpoints.restore(step, _state_dict(states))
  states = states.replace(**{k: v for k, v in restored.items()})
  curve = json.loads((workdir / "curve.json").read_text())
  curve = [c for c in curve if c["steps"] <= step]
  return states, step, curve
