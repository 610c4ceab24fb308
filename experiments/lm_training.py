"""Training and evaluating an LSTM language model with a recipe: the loop of the text jobs.

``train_and_evaluate`` puts the training streams on the device once, trains every seed at once
(``jax.vmap`` over the whole state) in jitted ``lax.scan`` calls of many outer steps
(``experiments.bptt``), and evaluates the validation split between calls; one host sync per
call. It has no checkpoints: a run of the recurrent recipes through the experiments harness
(``experiments.training``, with its checkpoints and exact resume) is the next step.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import bptt
from experiments import recurrent_models
from experiments import recurrent_recipes
from experiments import text_data


def train_and_evaluate(recipe: recurrent_recipes.LMRecipe,
                       model: recurrent_models.LSTMLanguageModel, corpus: text_data.TextCorpus,
                       seeds: list[int], num_evals: int, eval_batch_size: int = 50) -> dict:
  """Trains ``model`` with ``recipe``, ``len(seeds)`` seeds at once (vmap).

  Args:
    recipe: the optimizer, schedule, batch, BPTT length, clipping and training length.
    model: the language model.
    corpus: its training, validation and test token ids.
    seeds: one run per seed (initialisation, dropout, Langevin noise).
    num_evals: validation points, evenly spaced over the run (one host sync each).
    eval_batch_size: parallel streams of the evaluation (each starts from the zero state).

  Returns:
    A JSON-ready dict: ``recipe``, ``seeds``, ``curve`` (effective epochs, mean training loss of
    the last chunk and validation nats per seed at each point), ``valid`` and ``test`` (nats,
    bits, perplexity per seed), ``effective_epochs`` and ``wall_s`` (compilation included).
  """
  streams = jnp.asarray(text_data.bptt_streams(corpus.train, recipe.batch_size))
  num_segments = text_data.num_segments(streams, recipe.num_steps)
  total_steps = max(num_evals, round(recipe.outer_epochs * num_segments))
  make_tx = recipe.make_tx(steps_per_outer_epoch=num_segments)
  states = jax.vmap(lambda s: bptt.create_state(model, make_tx, s, recipe.batch_size))(
      jnp.asarray(seeds))
  step = bptt.make_train_step(model, num_steps=recipe.num_steps,
                              langevin_steps=recipe.langevin_steps, clip_norm=recipe.clip_norm)
  # num_evals calls; the last takes the remainder, so that the run has exactly total_steps
  # steps (equal effective epochs across optimizers) at the cost of one more compilation.
  chunk = total_steps // num_evals
  sizes = [chunk] * (num_evals - 1) + [total_steps - chunk * (num_evals - 1)]
  runners = {n: jax.jit(jax.vmap(bptt.make_train_steps(step, n), in_axes=(0, None)))
             for n in set(sizes)}
  evaluate = jax.jit(jax.vmap(lambda p, x, y: bptt.evaluate(model, p, x, y),
                              in_axes=(0, None, None)))
  valid, test = _same_shape(
      text_data.eval_streams(corpus.valid, eval_batch_size, recipe.num_steps),
      text_data.eval_streams(corpus.test, eval_batch_size, recipe.num_steps))
  curve, start = [], time.perf_counter()
  steps = 0
  for size in sizes:
    states, train_loss = runners[size](states, streams)
    steps += size
    nats = np.asarray(evaluate(states.params, *valid)["nats"])
    curve.append({"effective_epochs": steps * recipe.langevin_steps / num_segments,
                  "train_nats": np.asarray(train_loss).tolist(), "valid_nats": nats.tolist()})
    print(f"  {recipe.optimizer:12s} {curve[-1]['effective_epochs']:6.2f} eff. epochs  "
          f"valid {nats.mean():.4f} nats (perplexity {np.exp(nats).mean():.2f})  "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
  final = {split: {k: np.asarray(v).tolist() for k, v in evaluate(states.params, *data).items()}
           for split, data in (("valid", valid), ("test", test))}
  return {"recipe": dataclasses.asdict(recipe), "seeds": seeds, "curve": curve, **final,
          "effective_epochs": curve[-1]["effective_epochs"],
          "wall_s": time.perf_counter() - start}


def _same_shape(*splits):
  """Evaluation streams padded with unscored segments to one shape: one compilation for all."""
  length = max(inputs.shape[0] for inputs, _ in splits)
  pad = lambda a, value: np.concatenate(
      [a, np.full((length - a.shape[0], *a.shape[1:]), value, a.dtype)])
  return [(jnp.asarray(pad(inputs, 0)), jnp.asarray(pad(targets, -1)))
          for inputs, targets in splits]
