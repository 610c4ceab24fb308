"""The training loop: ``train(config, model, make_tx, data, workdir)``.

``config`` is the run's ``RunConfig``, the one form of a run's configuration from the command
line to the step; its counts in outer steps come from ``experiments.run.schema.schedule``.

It trains a Linen model (``model.apply(variables, x, train=...)``, BatchNorm in
``batch_stats``, dropout on the rng stream ``'dropout'``) on a classification data set held on
the device, with any optax optimizer or a local-entropy one:

* The data set is put on the device once; each data pass is shuffled there
  (``tasks.Task.batch_indices``). An outer step consumes L = ``langevin_steps`` mini-batches.
* Calls of up to ``Schedule.steps_per_call`` outer steps (``experiments.trainer.step_runners``:
  a ``lax.scan``, or on CPU for conv nets one jitted step dispatched per step); one host sync
  per call, when the metrics come back and are appended to ``metrics.jsonl``
  (``experiments.run.run_files``) and to its view as TensorBoard events
  (``experiments.run.tensorboard``).
* Evaluation every ``Schedule.eval_every_steps``, checkpoints every
  ``Schedule.checkpoint_every_steps`` and at the end (``experiments.run.checkpoints``: verified
  by checksums before a restore). Keys and step are part of the state and the data order is a
  function of (seed, step): a resumed run reproduces an uninterrupted one bit for bit on CPU.
* SIGTERM and SIGINT (``experiments.trainer.preemption``): the call in flight finishes, a
  checkpoint of its step is saved, and ``preemption.Interrupted`` says to continue with
  ``--resume``.
* Divergence (``experiments.trainer.divergence``): a seed whose training loss or parameters
  are no longer finite is caught at the call's record, reported in one line (``log``) and marked
  in its records; the other seeds go on, and the run stops when every seed has diverged.
* ``num_seeds`` > 1 trains that many seeds at once (vmap over the whole state; each seed builds
  its optimizer with its own noise key). ``mesh`` (``experiments.run.distributed.make_mesh``):
  the seeds split over its axis ``'seed'``, every batch over its axis ``'data'``; with several
  processes (``jax.distributed``) every process runs this same loop on the global arrays and
  process 0 alone writes.
* Extensions (a carried recurrent state, a pre-evaluation hook, another data order, another
  loss): ``tasks.Task``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from entropy_optax.flax import takes_grad_fn
from experiments.run import distributed, run_files, schema
from experiments.run.schema import RunConfig
from experiments.trainer import device_data, divergence, loop_state, preemption, step_runners
from experiments.trainer import records as records_lib
from experiments.trainer import steps as steps_lib
from experiments.trainer.loop_state import LoopState
from experiments.trainer.tasks import Task

__all__ = ["TrainResult", "evaluate", "train"]


@dataclasses.dataclass
class TrainResult:
  """``state``: the final ``LoopState`` (a leading seed axis if num_seeds > 1, then a replica
  axis if replicas > 1); ``records``: the metrics records of this process's calls;
  ``diverged``: ``{seed: step}`` of the seeds whose loss or parameters stopped being finite
  (``experiments.trainer.divergence``)."""

  state: LoopState
  records: list[dict[str, Any]]
  diverged: dict[int, int] = dataclasses.field(default_factory=dict)


def train(
  config: RunConfig,
  model,
  make_tx: optax.GradientTransformation | Callable,
  data: Iterable[Any],
  workdir: str | os.PathLike | None = None,
  *,
  task: Task = Task(),
  mesh: jax.sharding.Mesh | None = None,
  resume: bool | None = None,
  plan: schema.Schedule | None = None,
  learning_rate: optax.ScalarOrSchedule | None = None,
  progress: bool = True,
  tensorboard: bool = True,
  callback: Callable[[list[dict[str, Any]], LoopState], None] | None = None,
  log: Callable[[str], None] = print,
  divergence_hint: str = "try a lower learning rate or clip the gradients",
) -> TrainResult:
  """Trains ``model`` on ``data``; see the module docstring.

  Args:
    config: the run (its batch size, L, seeds, replicas, budget, evaluation and checkpoint
      periods, step runner; ``experiments.run.schema.RunConfig``). The data set, model and
      optimizer it names are not looked up here: they are the next three arguments.
    model: a Linen module called as ``model.apply(variables, x, train=bool)``.
    make_tx: ``make_tx(key)`` -> the optax optimizer with Langevin noise key ``key`` (each seed
      gets its own), or an optimizer (then every seed shares its noise key).
    data: ``(train_x, train_y, val_x, val_y)`` arrays (an ``experiments.data.datasets.Dataset``).
    workdir: where ``metrics.jsonl``, ``config.json`` and the checkpoints go; None keeps
      everything in memory.
    task: the loss and the loop's extension points (``tasks.Task``).
    mesh: a ``jax.sharding.Mesh`` with an axis ``'seed'`` (the seeds split over it) and/or
      ``'data'`` (every batch split over it); None: one device.
    resume: None: resume from the newest good checkpoint if any, else start afresh; True: the
      same, but an error if there is none; False: start afresh (an error if there are some).
    plan: the run's ``experiments.run.schema.Schedule`` (None: ``schema.schedule`` of
      ``config`` on ``data``), computed once by a caller that also needs it.
    learning_rate: the optimizer's learning rate, a number or a schedule of the update count
      (0 at the first update), recorded as ``learning_rate``: that of a call's last update;
      None records none.
    progress: show a tqdm progress bar when stderr is a terminal.
    tensorboard: write the records as TensorBoard events too, beside ``metrics.jsonl``
      (``experiments.run.tensorboard``).
    callback: ``callback(records, state)`` after each call, on the host; it may raise to stop.
    log: where a fallback to an older checkpoint and a divergence are reported.
    divergence_hint: what the line that reports a divergence tells the user to try.

  Returns:
    A ``TrainResult``.
  """
  if isinstance(make_tx, optax.GradientTransformation):
    make_tx = _Constant(make_tx)
  prepared = step_runners.prepare(config, model, make_tx, data, task=task, mesh=mesh)
  fns, train_data, val_data = prepared.fns, prepared.train_data, prepared.val_data
  plan = plan or schema.schedule(config, prepared.num_examples)
  seed_list = [config.seed + s for s in range(config.num_seeds)]
  state = _initial_state(config, fns, seed_list, train_data)
  run = None
  if workdir is not None:
    run = run_files.RunFiles(
      workdir,
      config,
      _run_info(config, plan, prepared, mesh),
      seeds=seed_list,
      checkpoints=plan.checkpoint_every_steps > 0,
      tensorboard=tensorboard,
      log=log,
    )
  previous: list[dict[str, Any]] = []
  if run is not None:
    restored, previous = run.open(loop_state.state_dict(state), resume)
    if restored is not None:
      state = state.replace(**restored)
  step = int(np.max(distributed.fetch(state.step)))
  where = str(workdir or "the run")
  recorder = _Recorder(
    config, plan, seed_list, previous, learning_rate, log, where, divergence_hint
  )
  bar = tqdm(
    total=plan.num_steps,
    initial=step,
    disable=None if progress else True,  # None: tqdm draws only on a terminal
    unit="step",
    dynamic_ncols=True,
  )
  stop = preemption.StopOnSignal(log)  # SIGTERM, SIGINT: a checkpoint, then Interrupted
  stop.install()
  failure = None
  try:
    while step < plan.num_steps:
      num_steps = min(plan.steps_per_call - step % plan.steps_per_call, plan.num_steps - step)
      state, metrics = fns.call(state, train_data, num_steps)
      step += num_steps
      done = step == plan.num_steps
      evaluated = None
      if done or step % plan.eval_every_steps == 0:
        evaluated = fns.evaluate(fns.before_eval(state, train_data), val_data)
      made = recorder.record(step, state, metrics, evaluated)
      stopped = len(recorder.diverged) == config.num_seeds  # every seed diverged: nothing left
      # A signal that comes later is handled after the next call; with several processes, one
      # that reached any of them stops all (they save the checkpoint together).
      interrupting = stop.agree(distributed.largest)
      if run is not None:
        every = plan.checkpoint_every_steps
        save = done or (every and step % every == 0)
        save = (save or interrupting) and not stopped  # all diverged: not worth keeping
        run.write(step, made, checkpoint=loop_state.state_dict(state) if save else None)
      bar.update(num_steps)
      bar.set_postfix({k: f"{made[0][k]:.4g}" for k in ("train_loss", "val_error") if k in made[0]})
      if callback is not None:
        callback(made, state)
      if stopped or interrupting:
        break
    if stop.agree(distributed.largest) and len(recorder.diverged) < config.num_seeds:
      saved = run is not None and run.checkpoints is not None
      raise preemption.Interrupted(stop.message(where, step, saved), stop.requested)
  except BaseException as e:
    failure = e  # with several processes, closing depends on whether the others stop too
    raise
  finally:
    stop.restore()
    bar.close()
    if run is not None:
      run.close(failure)
  return TrainResult(state=state, records=recorder.new_records, diverged=recorder.diverged)


def _initial_state(config: RunConfig, fns, seed_list: list[int], train_data) -> LoopState:
  """The state of a fresh run (one per seed, stacked when several)."""
  seeds = jnp.asarray(seed_list, jnp.uint32)
  state = fns.init(seeds if config.num_seeds > 1 else seeds[0], train_data[0][:1])
  # local_entropy and gaussian_smoothing take grad_fn over the L mini-batches.
  if config.langevin_steps > 1 and not takes_grad_fn(state.opt_state):
    raise ValueError(
      f"langevin_steps={config.langevin_steps} but the optimizer has no "
      "local_entropy: plain optimizers take langevin_steps=1."
    )
  return state


def _run_info(config: RunConfig, plan: schema.Schedule, prepared, mesh) -> dict[str, Any]:
  """What config.json says of the run besides its config."""
  return {
    "config": dataclasses.asdict(config),
    "schedule": dataclasses.asdict(plan),
    "num_examples": prepared.num_examples,
    "num_val": prepared.num_val,
    "step_runner_used": prepared.runner,
    "devices": distributed.describe(mesh),
  }


class _Recorder:
  """A call's records (``records_lib.make``) with the divergences caught in them."""

  def __init__(self, config, plan, seed_list, previous, learning_rate, log, where, hint):
    self.config, self.plan, self.seed_list = config, plan, seed_list
    self.learning_rate, self.log, self.where, self.hint = learning_rate, log, where, hint
    self.wall_offset = previous[-1]["wall_time"] if previous else 0.0
    self.start = time.perf_counter()
    self.diverged = divergence.from_records(previous)
    self.new_records: list[dict[str, Any]] = []

  def record(self, step: int, state: LoopState, metrics, evaluated) -> list[dict[str, Any]]:
    """The records of the call that ended at ``step``, after its one host sync."""
    batched = self.config.num_seeds > 1
    finite = divergence.params_finite(state.params, batched=batched)
    metrics, evaluated, finite = distributed.fetch((metrics, evaluated, finite))
    found = divergence.find(
      metrics["train_loss"], finite, step=step, seeds=self.seed_list, batched=batched
    )
    for seed, at in found.items():
      if seed not in self.diverged:
        self.diverged[seed] = at
        self.log(divergence.message(self.where, seed, at, self.hint))
    lr = self.learning_rate
    made = records_lib.make(
      step=step,
      seeds=self.seed_list,
      steps_per_epoch=self.plan.steps_per_epoch,
      langevin_steps=self.config.langevin_steps,
      metrics=metrics,
      evaluated=evaluated,
      wall_time=self.wall_offset + time.perf_counter() - self.start,
      batched=batched,
      learning_rate=None if lr is None else float(lr(step - 1) if callable(lr) else lr),
    )
    divergence.mark(made, self.diverged)
    self.new_records += made
    return made


def evaluate(
  config: RunConfig, state: LoopState, data, *, task: Task = Task(), mesh=None
) -> dict[str, np.ndarray]:
  """Metrics of a trained ``state`` (a leading seed axis when num_seeds > 1) on ``data`` =
  ``(x, y)``, computed as the loop evaluates its validation data (e.g. a text's test split);
  with replicas, of their average (its BatchNorm statistics averaged, not re-estimated)."""
  size = device_data.eval_batch_size(config, len(data[0]), mesh)
  center = loop_state.replica_mean if config.replicas > 1 else (lambda s: s)
  fn = lambda s, x, y, w: steps_lib.evaluate(center(s), x, y, w, size, task)  # noqa: E731
  if config.num_seeds > 1:
    fn = jax.vmap(fn, in_axes=(0, None, None, None))
  return distributed.fetch(jax.jit(fn)(state, *device_data.padded_with_weights(*data, size)))


@dataclasses.dataclass(frozen=True)
class _Constant:
  """``make_tx`` for a given optimizer: the same one for every key."""

  tx: Any

  def __call__(self, key):
    del key
    return self.tx
