"""The training loop: ``train(config, model, make_tx, data, workdir)``.

It trains a Linen model (``model.apply(variables, x, train=...)``, BatchNorm in
``batch_stats``, dropout on the rng stream ``'dropout'``) on a classification data set held on
the device, with any optax optimizer or a local-entropy one:

* The data set is put on the device once; each data pass is shuffled there
  (``tasks.Task.batch_indices``). An outer step consumes L = ``langevin_steps`` mini-batches
  (or one reused by all L Langevin steps: ``fresh_batches=False``).
* Calls of up to ``steps_per_call`` outer steps (``experiments.trainer.step_runners``: a
  ``lax.scan``, or
  on CPU for conv nets one jitted step dispatched per step); one host sync per call, when the
  metrics come back and are appended to ``metrics.jsonl`` (``experiments.run.run_files``) and
  to its view as TensorBoard events (``experiments.run.tensorboard``).
* Evaluation every ``eval_every_steps``, checkpoints every ``checkpoint_every_steps`` and at the
  end (``experiments.run.checkpoints``: verified by checksums before a restore). Keys and step are
  part of the state and the data order is a function of (seed, step): a resumed run reproduces
  an uninterrupted one bit for bit on CPU.
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
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from entropy_optax.flax import takes_grad_fn
from experiments.run import distributed, run_files
from experiments.run.checkpoints import CheckpointError
from experiments.run.schema import steps_per_epoch
from experiments.trainer import divergence, loop_state, preemption, step_runners
from experiments.trainer import records as records_lib
from experiments.trainer import steps as steps_lib
from experiments.trainer.loop_state import LoopState
from experiments.trainer.tasks import Task, cross_entropy

__all__ = [
  "TrainConfig",
  "TrainResult",
  "Prepared",
  "evaluate",
  "prepare",
  "train",
  "CheckpointError",
  "LoopState",
  "Task",
  "cross_entropy",
  "DATA_AXIS",
  "SEED_AXIS",
]

DATA_AXIS, SEED_AXIS = distributed.DATA_AXIS, distributed.SEED_AXIS


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """What ``train`` does (plain data, stored in ``config.json``); every count is in steps.

  Attributes:
    batch_size: examples per mini-batch (divisible by the mesh size in data-parallel mode).
    num_steps: outer steps (optimizer updates) to train for.
    langevin_steps: L, gradient evaluations per outer step; equal to the optimizer's
      ``num_langevin_steps`` (1 for plain optax optimizers).
    fresh_batches: True (the paper): an outer step consumes L fresh mini-batches; False: one,
      used by all L Langevin steps.
    steps_per_call: outer steps per call (one host sync per call).
    eval_every_steps: evaluate every this many steps (a multiple of ``steps_per_call``; 0: only
      at the end).
    eval_batch_size: examples per evaluation batch.
    checkpoint_every_steps: checkpoint every this many steps (a multiple of
      ``steps_per_call``) and at the end; 0: never.
    keep_checkpoints: how many of the latest checkpoints to keep (2 leaves one to fall back to).
    seed: the seed of initialisation, dropout, data order and Langevin noise.
    num_seeds: train seeds ``seed .. seed + num_seeds - 1`` at once (vmap).
    replicas: replicas per seed (Parle, data-parallel SGD): a leading axis of each seed's state,
      vmapped with the axis name ``loop_state.REPLICA_AXIS`` on one device; their average is
      evaluated (``experiments.trainer.step_runners``).
    step_runner: ``auto``, ``scan`` or ``dispatch`` (``experiments.trainer.step_runners``).
    progress: show a tqdm progress bar when stderr is a terminal.
    tensorboard: write the records as TensorBoard events too, beside ``metrics.jsonl``
      (``experiments.run.tensorboard``).
  """

  batch_size: int = 128
  num_steps: int = 1
  langevin_steps: int = 1
  fresh_batches: bool = True
  steps_per_call: int = 50
  eval_every_steps: int = 0
  eval_batch_size: int = 1000
  checkpoint_every_steps: int = 0
  keep_checkpoints: int = 2
  seed: int = 0
  num_seeds: int = 1
  replicas: int = 1
  step_runner: str = "auto"
  progress: bool = True
  tensorboard: bool = True

  def __post_init__(self):
    for name in (
      "batch_size",
      "num_steps",
      "langevin_steps",
      "steps_per_call",
      "eval_batch_size",
      "keep_checkpoints",
      "num_seeds",
      "replicas",
    ):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
    for name in ("eval_every_steps", "checkpoint_every_steps"):
      value = getattr(self, name)
      if value < 0 or value % self.steps_per_call:
        raise ValueError(
          f"{name} must be 0 or a multiple of steps_per_call={self.steps_per_call}, got "
          f"{value}: evaluations and checkpoints happen between calls."
        )
    if self.step_runner not in step_runners.RUNNERS:
      raise ValueError(
        f"step_runner must be one of {step_runners.RUNNERS}, got {self.step_runner!r}."
      )

  @property
  def seeds(self) -> list[int]:
    return [self.seed + s for s in range(self.num_seeds)]


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
  config: TrainConfig,
  model,
  make_tx: optax.GradientTransformation | Callable,
  data: Iterable[Any],
  workdir: str | os.PathLike | None = None,
  *,
  task: Task = Task(),
  mesh: jax.sharding.Mesh | None = None,
  resume: bool | None = None,
  metadata: Mapping[str, Any] | None = None,
  learning_rate: optax.ScalarOrSchedule | None = None,
  callback: Callable[[list[dict[str, Any]], LoopState], None] | None = None,
  log: Callable[[str], None] = print,
  divergence_hint: str = "try a lower learning rate or clip the gradients",
) -> TrainResult:
  """Trains ``model`` on ``data``; see the module docstring.

  Args:
    config: a ``TrainConfig``.
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
    metadata: JSON-able facts stored in ``config.json``; a resumed run must pass the same.
      Its ``experiment`` entry, if any, is the run's configuration in the TensorBoard events
      (``config`` otherwise).
    learning_rate: the optimizer's learning rate, a number or a schedule of the update count
      (0 at the first update), recorded as ``learning_rate``: that of a call's last update;
      None records none.
    callback: ``callback(records, state)`` after each call, on the host; it may raise to stop.
    log: where a fallback to an older checkpoint and a divergence are reported.
    divergence_hint: what the line that reports a divergence tells the user to try.

  Returns:
    A ``TrainResult``.
  """
  if isinstance(make_tx, optax.GradientTransformation):
    make_tx = _Constant(make_tx)
  prepared = prepare(config, model, make_tx, data, task=task, mesh=mesh)
  fns, train_data, val_data = prepared.fns, prepared.train_data, prepared.val_data
  num_examples, num_val, runner = prepared.num_examples, prepared.num_val, prepared.runner
  per_epoch = steps_per_epoch(num_examples, config.batch_size)
  batched = config.num_seeds > 1
  seeds = jnp.asarray(config.seeds, jnp.uint32)
  state = fns.init(seeds if batched else seeds[0], train_data[0][:1])
  # local_entropy and gaussian_smoothing take grad_fn over the L mini-batches.
  if config.langevin_steps > 1 and not takes_grad_fn(state.opt_state):
    raise ValueError(
      f"langevin_steps={config.langevin_steps} but the optimizer has no "
      "local_entropy: plain optimizers take langevin_steps=1."
    )
  run_info = {
    "config": dataclasses.asdict(config),
    "metadata": dict(metadata or {}),
    "num_examples": num_examples,
    "num_val": num_val,
    "step_runner_used": runner,
    "devices": distributed.describe(mesh),
  }
  run = run_files.RunFiles(workdir, config, run_info, log) if workdir is not None else None
  previous: list[dict[str, Any]] = []
  if run is not None:
    restored, previous = run.open(loop_state.state_dict(state), resume)
    if restored is not None:
      state = state.replace(**restored)
  step = int(np.max(distributed.fetch(state.step)))
  wall_offset = previous[-1]["wall_time"] if previous else 0.0
  diverged = divergence.from_records(previous)
  new_records: list[dict[str, Any]] = []
  bar = tqdm(
    total=config.num_steps,
    initial=step,
    disable=None if config.progress else True,  # None: tqdm draws only on a terminal
    unit="step",
    dynamic_ncols=True,
  )
  start = time.perf_counter()
  stop = preemption.StopOnSignal(log)  # SIGTERM, SIGINT: a checkpoint, then Interrupted
  stop.install()
  try:
    while step < config.num_steps:
      num_steps = min(config.steps_per_call - step % config.steps_per_call, config.num_steps - step)
      state, metrics = fns.call(state, train_data, num_steps)
      step += num_steps
      done = step == config.num_steps
      evaluated = None
      if done or (config.eval_every_steps and step % config.eval_every_steps == 0):
        evaluated = fns.evaluate(fns.before_eval(state, train_data), val_data)
      finite = divergence.params_finite(state.params, batched=batched)
      # The call's one host sync.
      metrics, evaluated, finite = distributed.fetch((metrics, evaluated, finite))
      for seed, at in divergence.find(
        metrics["train_loss"], finite, step=step, seeds=config.seeds, batched=batched
      ).items():
        if seed not in diverged:
          diverged[seed] = at
          log(divergence.message(str(workdir or "the run"), seed, at, divergence_hint))
      stopped = len(diverged) == config.num_seeds  # every seed diverged: nothing left to train
      made = records_lib.make(
        step=step,
        seeds=config.seeds,
        steps_per_epoch=per_epoch,
        langevin_steps=config.langevin_steps,
        metrics=metrics,
        evaluated=evaluated,
        wall_time=wall_offset + time.perf_counter() - start,
        batched=batched,
        learning_rate=None
        if learning_rate is None
        else float(learning_rate(step - 1) if callable(learning_rate) else learning_rate),
      )
      divergence.mark(made, diverged)
      new_records += made
      # A signal that comes later is handled after the next call.
      interrupting = stop.requested is not None
      if run is not None:
        save = done or (config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0)
        save = (save or interrupting) and not stopped  # all diverged: not worth keeping
        run.write(step, made, checkpoint=loop_state.state_dict(state) if save else None)
      bar.update(num_steps)
      bar.set_postfix({k: f"{made[0][k]:.4g}" for k in ("train_loss", "val_error") if k in made[0]})
      if callback is not None:
        callback(made, state)
      if stopped:
        break
      if interrupting:
        break
    if stop.requested is not None and not stopped:  # also after the last call: a job stops
      saved = run is not None and run.checkpoints is not None
      raise preemption.Interrupted(
        stop.message(str(workdir or "the run"), step, saved), stop.requested
      )
  finally:
    stop.restore()
    bar.close()
    if run is not None:
      run.close()
  return TrainResult(state=state, records=new_records, diverged=diverged)


def evaluate(
  config: TrainConfig, state: LoopState, data, *, task: Task = Task(), mesh=None
) -> dict[str, np.ndarray]:
  """Metrics of a trained ``state`` (a leading seed axis when num_seeds > 1) on ``data`` =
  ``(x, y)``, computed as the loop evaluates its validation data (e.g. a text's test split);
  with replicas, of their average (its BatchNorm statistics averaged, not re-estimated)."""
  x, y = (np.asarray(a) for a in data)
  size = _eval_batch(config, len(x), mesh)
  w = _pad(np.ones(len(x), np.float32), size)
  center = loop_state.replica_mean if config.replicas > 1 else (lambda s: s)
  fn = lambda s, x, y, w: steps_lib.evaluate(center(s), x, y, w, size, task)  # noqa: E731
  if config.num_seeds > 1:
    fn = jax.vmap(fn, in_axes=(0, None, None, None))
  return distributed.fetch(jax.jit(fn)(state, _pad(x, size), _pad(y, size), w))


@dataclasses.dataclass(frozen=True)
class Prepared:
  """What ``train`` runs: the jitted functions, the data on the device (validation padded, with
  weights), the sizes and the step runner used."""

  fns: step_runners.Functions
  train_data: tuple[jax.Array, jax.Array]
  val_data: tuple[jax.Array, jax.Array, jax.Array]
  num_examples: int
  num_val: int
  runner: str


def prepare(
  config: TrainConfig, model, make_tx: Callable, data, *, task: Task = Task(), mesh=None
) -> Prepared:
  """The jitted functions and device data of a run, as ``train`` uses them (also for callers
  that compose the functions themselves, e.g. a vmapped grid of runs)."""
  if mesh is not None and config.replicas > 1:
    raise ValueError(
      f"replicas={config.replicas} run vmapped on one device; drop the mesh (a mesh axis of "
      "replicas is jax.shard_map over entropy_optax.parle's axis_name, not in this loop yet)."
    )
  train_data, val_data, num_examples, num_val = _put_data(data, config, mesh)
  runner = step_runners.choose_runner(config.step_runner, model, train_data[0][:1], task)
  fns = step_runners.compiled_functions(
    model,
    make_tx,
    task,
    mesh,
    config.num_seeds > 1,
    config.batch_size,
    config.langevin_steps,
    config.fresh_batches,
    num_examples,
    _eval_batch(config, num_val, mesh),
    runner,
    config.replicas,
  )
  return Prepared(fns, train_data, val_data, num_examples, num_val, runner)


@dataclasses.dataclass(frozen=True)
class _Constant:
  """``make_tx`` for a given optimizer: the same one for every key."""

  tx: Any

  def __call__(self, key):
    del key
    return self.tx


def _eval_batch(config: TrainConfig, num_val: int, mesh) -> int:
  size = min(config.eval_batch_size, num_val)
  parts = _axis_size(mesh, DATA_AXIS)  # a multiple of the devices that split it
  return -(-size // parts) * parts


def _axis_size(mesh, axis: str) -> int:
  return mesh.shape[axis] if mesh is not None and axis in mesh.axis_names else 1


def _pad(x: np.ndarray, multiple: int) -> np.ndarray:
  extra = -len(x) % multiple
  return np.concatenate([x, np.zeros((extra, *x.shape[1:]), x.dtype)]) if extra else x


def _put_data(data, config: TrainConfig, mesh):
  """Train and padded validation data on the device (replicated over a mesh: every process
  holds the same whole data set and contributes its devices' copies)."""
  train_x, train_y, val_x, val_y = (np.asarray(a) for a in data)
  if len(train_x) < config.batch_size:
    raise ValueError(
      f"batch_size={config.batch_size} exceeds the {len(train_x)} training examples."
    )
  if mesh is not None:
    if not set(mesh.axis_names) & {DATA_AXIS, SEED_AXIS}:
      raise ValueError(
        f"The mesh needs an axis named {DATA_AXIS!r} or {SEED_AXIS!r}; it has {mesh.axis_names}."
      )
    if config.batch_size % _axis_size(mesh, DATA_AXIS):
      raise ValueError(
        f"batch_size={config.batch_size} must be divisible by the "
        f"{_axis_size(mesh, DATA_AXIS)} devices of the mesh axis {DATA_AXIS!r}."
      )
    if config.num_seeds % _axis_size(mesh, SEED_AXIS):
      raise ValueError(
        f"num_seeds={config.num_seeds} must be divisible by the "
        f"{_axis_size(mesh, SEED_AXIS)} devices of the mesh axis {SEED_AXIS!r}."
      )
  eval_bs = _eval_batch(config, len(val_x), mesh)
  val_w = _pad(np.ones(len(val_x), np.float32), eval_bs)
  val_x, val_y = _pad(val_x, eval_bs), _pad(val_y, eval_bs)
  # Data enter the jitted functions as arguments: closed-over arrays would become constants.
  put = (
    (lambda a: jax.device_put(a, NamedSharding(mesh, P()))) if mesh is not None else jax.device_put
  )
  return (
    tuple(map(put, (train_x, train_y))),
    tuple(map(put, (val_x, val_y, val_w))),
    len(train_x),
    len(val_y) - (len(val_w) - int(val_w.sum())),
  )
