"""The jitted training loop of the experiments: Entropy-SGD or any optax optimizer, Linen models.

``train(config, model, tx, data, workdir)`` trains a Linen model called as
``model.apply(variables, x, train=...)`` (BatchNorm in ``batch_stats``, dropout on the rng
stream ``'dropout'``, as in ``experiments/models.py``) on a classification data set:

* The whole data set is put on the device once. Every data pass is shuffled on the device
  (``jax.random.permutation`` of a key folded with the pass number), and mini-batches are
  gathered there: no host input pipeline, no per-step host-to-device copy.
* An outer step consumes ``config.langevin_steps`` = L fresh mini-batches (the paper), or one
  mini-batch reused by all L Langevin steps (``fresh_batches=False``). Step 0 is the ordinary
  training forward pass at x; its gradient, loss and BatchNorm statistics are kept, and
  Langevin steps 1..L-1 go through ``grad_fn`` (see ``entropy_optax.flax``). With L = 1 and a
  plain optax optimizer it is ordinary training.
* ``steps_per_call`` outer steps run in one jitted ``lax.scan``: no host sync per step. After
  each call the metrics come back to the host once: train loss at x (mean over the call), the
  ``LangevinStats`` of the local-entropy transformation (gamma, grad norms, cosine, distance),
  epochs (outer steps x batch / examples) and effective epochs (L x epochs: gradient
  evaluations), the wall time, and, every ``eval_every`` steps, validation loss and error with
  the running statistics. They are appended to ``workdir/metrics.jsonl``, one JSON object per
  call and seed, and shown by a tqdm progress bar.
* orbax checkpoints every ``checkpoint_every`` steps. The PRNG keys and the step count are part
  of the state and the data order is a function of (seed, step), so a resumed run reproduces an
  uninterrupted one bit for bit on CPU. A checkpoint is written to a temporary directory and
  renamed when complete (orbax), so a crash never leaves a partial one in place of the last
  good one; a corrupt or missing checkpoint raises ``CheckpointError`` saying what to do.
* ``num_seeds`` > 1 trains that many seeds at once, ``vmap`` over the whole train state (the
  seeds share the data, not its order).
* ``mesh``: data parallelism over a ``jax.sharding.Mesh`` axis ``'batch'``: each mini-batch is
  split across the devices, parameters and data set are replicated, XLA inserts the gradient
  and BatchNorm reductions. Same result as one device up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
import dataclasses
import functools
import json
import math
import os
import pathlib
import shutil
import subprocess
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm.auto import tqdm
from jax.sharding import NamedSharding, PartitionSpec as P

import entropy_optax
from entropy_optax import flax as eflax

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
BATCH_AXIS = "batch"
_STATS_FIELDS = entropy_optax.LangevinStats._fields

# Config fields that change the trajectory: a resumed run must use the values it was saved with.
_TRAJECTORY_FIELDS = (
    "batch_size", "langevin_steps", "fresh_batches", "steps_per_call", "seed", "num_seeds")


class CheckpointError(RuntimeError):
  """A checkpoint to resume from is missing, corrupt or does not match the run."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """What ``train`` does; plain data (``dataclasses.asdict`` is stored with the results).

  Attributes:
    batch_size: examples per mini-batch (divisible by the mesh size in data-parallel mode).
    num_steps: outer steps to train for; or give ``effective_epochs`` instead.
    effective_epochs: budget in effective epochs (gradient evaluations x batch_size /
      examples); the run takes ceil(effective_epochs x examples / (batch_size x L)) steps.
    langevin_steps: L, gradient evaluations per outer step; must equal the optimizer's
      ``num_langevin_steps`` (1 for plain optax optimizers). A smaller value makes the extra
      Langevin steps see NaN inputs, a loud failure rather than a silent one.
    fresh_batches: True (the paper): each outer step consumes L fresh mini-batches; False:
      one mini-batch per outer step, used by all L Langevin steps.
    steps_per_call: outer steps per jitted call (one host sync per call).
    eval_every: evaluate every this many steps (a multiple of ``steps_per_call``; 0: only at
      the end).
    eval_batch_size: examples per evaluation batch.
    checkpoint_every: save a checkpoint every this many steps (a multiple of
      ``steps_per_call``; 0: no checkpoints). The last step is always saved when > 0.
    keep_checkpoints: how many of the latest checkpoints to keep (at least 2 is safer).
    seed: the seed of the initialisation, dropout, data order and Langevin noise.
    num_seeds: train seeds ``seed .. seed + num_seeds - 1`` at once (vmap).
    progress: show a tqdm progress bar.
  """

  batch_size: int = 128
  num_steps: int | None = None
  effective_epochs: float | None = None
  langevin_steps: int = 1
  fresh_batches: bool = True
  steps_per_call: int = 50
  eval_every: int = 0
  eval_batch_size: int = 1000
  checkpoint_every: int = 0
  keep_checkpoints: int = 2
  seed: int = 0
  num_seeds: int = 1
  progress: bool = True

  def __post_init__(self):
    if (self.num_steps is None) == (self.effective_epochs is None):
      raise ValueError("Give exactly one of num_steps and effective_epochs.")
    for name in ("batch_size", "langevin_steps", "steps_per_call", "eval_batch_size",
                 "keep_checkpoints", "num_seeds"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
    for name in ("eval_every", "checkpoint_every"):
      value = getattr(self, name)
      if value < 0 or value % self.steps_per_call:
        raise ValueError(
            f"{name} must be 0 or a multiple of steps_per_call={self.steps_per_call}, got "
            f"{value}: evaluation and checkpoints happen between jitted calls.")

  @property
  def batches_per_step(self) -> int:
    """Mini-batches an outer step consumes."""
    return self.langevin_steps if self.fresh_batches else 1

  def total_steps(self, num_examples: int) -> int:
    if self.num_steps is not None:
      return self.num_steps
    return math.ceil(self.effective_epochs * num_examples / (self.batch_size * self.langevin_steps))


class LoopState(eflax.TrainState):
  """``entropy_optax.flax.TrainState`` plus the key of the data order.

  Attributes:
    data_key: raw uint32 key; data pass e is shuffled with ``fold_in(data_key, e)``.
  """

  data_key: jax.Array | None = None


@dataclasses.dataclass
class TrainResult:
  """What ``train`` returns.

  Attributes:
    state: the final ``LoopState`` (a leading seed axis on every array if num_seeds > 1).
    records: the metrics records of this run (those written to metrics.jsonl).
  """

  state: LoopState
  records: list[dict[str, Any]]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross entropy with integer labels, computed in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()


# ---------------------------------------------------------------------------
# Data order.
# ---------------------------------------------------------------------------


def batch_indices(data_key: jax.Array, first_batch: jax.Array, num_batches: int,
                  num_examples: int, batch_size: int) -> jax.Array:
  """Example indices of mini-batches ``first_batch .. first_batch + num_batches - 1``.

  Mini-batch b is the (b mod n)-th slice of the permutation of data pass b div n, with
  n = num_examples // batch_size (the last incomplete slice of each pass is dropped). Only the
  permutations of the few passes these batches touch are computed.

  Returns:
    int32 array (num_batches, batch_size).
  """
  per_pass = num_examples // batch_size
  num_passes = (num_batches - 1) // per_pass + 2  # static bound on the passes touched
  first_pass = first_batch // per_pass
  passes = first_pass + jnp.arange(num_passes)
  perms = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(data_key, e), num_examples))(passes)
  perms = perms[:, : per_pass * batch_size].reshape(num_passes, per_pass, batch_size)
  b = first_batch + jnp.arange(num_batches)
  return perms[b // per_pass - first_pass, b % per_pass].astype(jnp.int32)


# ---------------------------------------------------------------------------
# Steps.
# ---------------------------------------------------------------------------


def _reseed_optimizer(opt_state: Any, key: jax.Array) -> Any:
  """Folds ``key`` into every PRNG key of an optax state (``local_entropy``'s ``langevin_key``,
  ``optax.add_noise``'s ``rng_key``), so that seeds get distinct noise."""
  def reseed(path, leaf):
    if getattr(path[-1], "name", None) in ("langevin_key", "rng_key"):
      return jax.random.fold_in(leaf, jax.random.bits(key, (), jnp.uint32))
    return leaf
  return jax.tree_util.tree_map_with_path(reseed, opt_state)


def _init_state(model: nn.Module, tx: optax.GradientTransformation, example_x: jax.Array,
                seed: jax.Array) -> LoopState:
  init_key, dropout_key, data_key, noise_key = jax.random.split(jax.random.PRNGKey(seed), 4)
  variables = model.init({"params": init_key, "dropout": init_key}, example_x, train=False)
  state = LoopState.create(
      apply_fn=model.apply, params=variables["params"], batch_stats=variables.get("batch_stats"),
      tx=tx, key=dropout_key, data_key=data_key)
  # A strongly typed int32 step: the scan carry keeps one type.
  return state.replace(step=jnp.zeros([], jnp.int32),
                       opt_state=_reseed_optimizer(state.opt_state, noise_key))


def _model_loss(state: LoopState, loss_fn: Callable, params: Any, batch: Any, key: jax.Array):
  """Training-mode loss; aux = the new batch_stats (None without BatchNorm)."""
  variables = {"params": params}
  if state.batch_stats is not None:
    variables["batch_stats"] = state.batch_stats
    logits, updates = state.apply_fn(variables, batch[0], train=True, rngs={"dropout": key},
                                     mutable=["batch_stats"])
    return loss_fn(logits, batch[1]), updates["batch_stats"]
  logits = state.apply_fn(variables, batch[0], train=True, rngs={"dropout": key})
  return loss_fn(logits, batch[1]), None


def _has_langevin_stats(opt_state: Any) -> bool:
  return bool(optax.tree.get_all_with_path(opt_state, "langevin_stats"))


def train_step(state: LoopState, xs: jax.Array, ys: jax.Array, *, loss_fn: Callable = cross_entropy,
               fresh_batches: bool = True) -> tuple[LoopState, dict[str, jax.Array]]:
  """One outer step on the mini-batches ``xs[k], ys[k]`` (leading axis: L, or 1).

  The gradient at x on mini-batch 0 (the training forward pass, whose BatchNorm statistics are
  kept) is Langevin step 0; ``grad_fn`` serves steps 1..L-1 (``entropy_optax.flax``).

  Returns:
    ``(state, metrics)``: metrics has the train loss at x and, for a local-entropy optimizer,
    the fields of ``LangevinStats``.
  """
  key = state.step_key()
  loss = lambda p, b, k: _model_loss(state, loss_fn, p, b, k)
  (value, batch_stats), grads = jax.value_and_grad(loss, has_aux=True)(
      state.params, (xs[0], ys[0]), key)
  if fresh_batches:
    grad_fn = eflax.make_grad_fn(loss, (xs, ys), key=key, has_aux=True)
  else:
    grad_fn = eflax.make_grad_fn(loss, (xs[0], ys[0]), key=key, has_aux=True, shared_batch=True)
  state = state.apply_gradients(grads=grads, grad_fn=grad_fn, batch_stats=batch_stats)
  metrics = {"train_loss": value.astype(jnp.float32)}
  if _has_langevin_stats(state.opt_state):
    metrics.update(optax.tree.get(state.opt_state, "langevin_stats")._asdict())
  return state, metrics


def evaluate(state: LoopState, x: jax.Array, y: jax.Array, weights: jax.Array, batch_size: int,
             loss_fn: Callable = cross_entropy,
             shard: Callable[[jax.Array], jax.Array] = lambda a: a) -> dict[str, jax.Array]:
  """Loss and error of the model in evaluation mode (running statistics, no dropout).

  ``x``, ``y`` are padded to a multiple of ``batch_size``; ``weights`` is 1 on real examples;
  ``shard`` places each input batch (data parallelism).
  """
  variables = state.variables
  num_batches = x.shape[0] // batch_size

  def body(carry, i):
    xb, yb, wb = (jax.lax.dynamic_slice_in_dim(a, i * batch_size, batch_size) for a in (x, y, weights))
    logits = state.apply_fn(variables, shard(xb), train=False).astype(jnp.float32)
    losses = jax.vmap(loss_fn)(logits[:, None], yb[:, None])
    errors = (jnp.argmax(logits, -1) != yb).astype(jnp.float32)
    return (carry[0] + jnp.sum(wb * losses), carry[1] + jnp.sum(wb * errors)), None

  (loss_sum, error_sum), _ = jax.lax.scan(
      body, (jnp.zeros([], jnp.float32), jnp.zeros([], jnp.float32)), jnp.arange(num_batches))
  total = jnp.sum(weights)
  return {"val_loss": loss_sum / total, "val_error": error_sum / total}


def _pad(x: np.ndarray, multiple: int) -> np.ndarray:
  extra = -len(x) % multiple
  return np.concatenate([x, np.zeros((extra, *x.shape[1:]), x.dtype)]) if extra else x


# ---------------------------------------------------------------------------
# Checkpoints and files.
# ---------------------------------------------------------------------------


def _state_dict(state: LoopState) -> dict[str, Any]:
  return {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
          "opt_state": state.opt_state, "key": state.key, "data_key": state.data_key}


def _atomic_write(path: pathlib.Path, text: str) -> None:
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _code_version() -> str | None:
  try:
    return subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=pathlib.Path(__file__).parent,
        capture_output=True, text=True, timeout=10, check=True).stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    return None


class _Checkpoints:
  """orbax checkpoints of the state under ``workdir/checkpoints``, with clear errors."""

  def __init__(self, workdir: pathlib.Path, keep: int):
    self.directory = (workdir / CHECKPOINT_DIR).absolute()
    self.keep = keep
    self.manager = self._manager()

  def _manager(self) -> ocp.CheckpointManager:
    # Synchronous saves: the state buffers are donated to the next jitted call.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=self.keep, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: LoopState) -> None:
    self.manager.save(step, args=ocp.args.StandardSave(_state_dict(state)))
    self.manager.wait_until_finished()

  def restore(self, step: int, target: LoopState) -> LoopState:
    """The state saved at ``step``; ``target`` gives the structure, shapes and shardings."""
    steps = self.steps()
    if step not in steps:
      raise CheckpointError(
          f"No checkpoint of step {step} in {self.directory}; available steps: {steps or 'none'}.")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _state_dict(target))
    try:
      restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax raises many types for unreadable or mismatched files.
      older = [s for s in steps if s < step]
      hint = (f" Resume from an older one with resume={older[-1]}" if older
              else " There is no older checkpoint; start afresh in a new workdir")
      raise CheckpointError(
          f"Checkpoint of step {step} in {self.directory / str(step)} is corrupt or does not "
          f"match this run ({type(e).__name__}: {e}).{hint}, or delete it. Nothing was "
          "overwritten.") from e
    if int(np.max(np.asarray(restored["step"]))) != step:
      raise CheckpointError(f"Checkpoint {self.directory / str(step)} holds step "
                            f"{restored['step']}, not {step}.")
    return target.replace(**restored)

  def set_aside_after(self, step: int) -> None:
    """Moves checkpoints newer than ``step`` (when resuming from an older one) out of the way."""
    newer = [s for s in self.steps() if s > step]
    if not newer:
      return
    aside = self.directory.parent / f"{CHECKPOINT_DIR}_set_aside_{int(time.time())}"
    aside.mkdir(parents=True, exist_ok=True)
    for s in newer:
      shutil.move(str(self.directory / str(s)), str(aside / str(s)))
    self.manager.close()
    self.manager = self._manager()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _read_records(path: pathlib.Path) -> list[dict[str, Any]]:
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      break  # a line cut by a crash: it and what follows are dropped
  return records


def _json_value(value: Any) -> Any:
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


# ---------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------


def _vmap_if(batched: bool, fn: Callable, in_axes) -> Callable:
  return jax.vmap(fn, in_axes=in_axes) if batched else fn


@dataclasses.dataclass(frozen=True)
class _Functions:
  init: Callable  # (seed(s), example_x) -> state
  chunk: Callable  # num_steps -> jitted (state, (train_x, train_y)) -> (state, metrics)
  evaluate: Callable  # (state, (val_x, val_y, val_w)) -> metrics


@functools.lru_cache(maxsize=32)
def _compiled_functions(model, tx, loss_fn, mesh, batched, batch_size, langevin_steps,
                        fresh_batches, num_examples, eval_batch_size) -> _Functions:
  """The jitted functions of a run, shared by runs with the same arguments (e.g. a resume)."""
  batches_per_step = langevin_steps if fresh_batches else 1
  replicated = NamedSharding(mesh, P()) if mesh is not None else None

  def constrain_batch(a, axis):
    if mesh is None:
      return a
    spec = [None] * a.ndim
    spec[axis] = BATCH_AXIS
    return jax.lax.with_sharding_constraint(a, NamedSharding(mesh, P(*spec)))

  def init(seed, example_x):
    return _init_state(model, tx, example_x, seed)

  def run_steps(state, data, num_steps):
    train_x, train_y = data

    def one_step(state, idx):
      xs, ys = constrain_batch(train_x[idx], 1), constrain_batch(train_y[idx], 1)
      return train_step(state, xs, ys, loss_fn=loss_fn, fresh_batches=fresh_batches)

    idx = batch_indices(state.data_key, state.step * batches_per_step,
                        num_steps * batches_per_step, num_examples, batch_size)
    idx = idx.reshape(num_steps, batches_per_step, batch_size)
    return jax.lax.scan(one_step, state, idx)

  @functools.lru_cache(maxsize=None)
  def chunk(num_steps):
    fn = functools.partial(run_steps, num_steps=num_steps)
    return jax.jit(_vmap_if(batched, fn, (0, None)), donate_argnums=0)

  def evaluate_one(state, data):
    return evaluate(state, *data, eval_batch_size, loss_fn, lambda a: constrain_batch(a, 0))

  return _Functions(
      init=jax.jit(_vmap_if(batched, init, (0, None)), out_shardings=replicated),
      chunk=chunk,
      evaluate=jax.jit(_vmap_if(batched, evaluate_one, (0, None))))


def train(
    config: TrainConfig,
    model: nn.Module,
    tx: optax.GradientTransformation,
    data: Iterable[Any],
    workdir: str | os.PathLike | None = None,
    *,
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array] = cross_entropy,
    mesh: jax.sharding.Mesh | None = None,
    resume: bool | int | None = None,
    metadata: Mapping[str, Any] | None = None,
    callback: Callable[[list[dict[str, Any]], LoopState], None] | None = None,
) -> TrainResult:
  """Trains ``model`` with ``tx`` on ``data``; see the module docstring.

  Args:
    config: a ``TrainConfig``.
    model: a Linen module called as ``model.apply(variables, x, train=bool)``.
    tx: any optax optimizer; a local-entropy one (``entropy_optax.entropy_sgd``) needs
      ``config.langevin_steps`` equal to its ``num_langevin_steps``. The loop folds each seed
      into every PRNG key (``langevin_key``) of the optimizer state, so seeds get distinct
      Langevin noise.
    data: ``(train_x, train_y, val_x, val_y)`` arrays (an ``experiments.data.Dataset`` unpacks so).
    workdir: where ``metrics.jsonl``, ``config.json`` and ``checkpoints/`` go; None keeps
      everything in memory (no checkpoints).
    loss_fn: ``loss_fn(logits, labels)``, the mean training loss.
    mesh: a ``jax.sharding.Mesh`` with an axis ``'batch'`` for data parallelism; None: the
      default device.
    resume: None: resume from the latest checkpoint if there is one, else start afresh;
      True: resume from the latest, error if none; an int: resume from that step; False: start
      afresh (error if the workdir has checkpoints).
    metadata: JSON-able facts about the run to store in ``config.json`` (e.g. the optimizer's
      hyper-parameters); a resumed run must pass the same.
    callback: ``callback(records, state)`` after each call (one record per seed), on the host;
      it may raise to stop the run (the checkpoints written so far stay).

  Returns:
    A ``TrainResult``.

  Raises:
    CheckpointError: a checkpoint to resume from is missing, corrupt or from another config.
  """
  train_x, train_y, val_x, val_y = (np.asarray(a) for a in data)
  num_examples = len(train_x)
  if num_examples < config.batch_size:
    raise ValueError(f"batch_size={config.batch_size} exceeds the {num_examples} training examples.")
  if mesh is not None:
    if BATCH_AXIS not in mesh.axis_names:
      raise ValueError(f"The mesh needs an axis named {BATCH_AXIS!r}; it has {mesh.axis_names}.")
    if config.batch_size % mesh.shape[BATCH_AXIS]:
      raise ValueError(f"batch_size={config.batch_size} must be divisible by the "
                       f"{mesh.shape[BATCH_AXIS]} devices of the mesh axis {BATCH_AXIS!r}.")
  total_steps = config.total_steps(num_examples)
  batched = config.num_seeds > 1
  eval_bs = min(config.eval_batch_size, len(val_x))
  if mesh is not None:  # a multiple of the device count
    eval_bs = -(-eval_bs // mesh.shape[BATCH_AXIS]) * mesh.shape[BATCH_AXIS]
  val_w = _pad(np.ones(len(val_x), np.float32), eval_bs)
  val_x, val_y = _pad(val_x, eval_bs), _pad(val_y, eval_bs)

  # The data set goes to the device once (replicated over a mesh) and enters the jitted
  # functions as an argument: a closed-over array would be compiled in as a constant.
  replicated = NamedSharding(mesh, P()) if mesh is not None else None
  put = (lambda a: jax.device_put(a, replicated)) if mesh is not None else jax.device_put
  train_data = tuple(map(put, (train_x, train_y)))
  val_data = tuple(map(put, (val_x, val_y, val_w)))

  fns = _compiled_functions(model, tx, loss_fn, mesh, batched, config.batch_size,
                            config.langevin_steps, config.fresh_batches, num_examples, eval_bs)
  seeds = jnp.asarray(config.seed + np.arange(config.num_seeds), jnp.uint32)
  state = fns.init(seeds if batched else seeds[0], train_data[0][:1])
  if config.langevin_steps > 1 and not _has_langevin_stats(state.opt_state):
    raise ValueError(
        f"config.langevin_steps={config.langevin_steps} but tx has no local_entropy: plain "
        "optimizers take langevin_steps=1.")

  # Files, checkpoints, resume.
  records_path = config_path = checkpoints = None
  previous_records: list[dict[str, Any]] = []
  run_info = {"config": dataclasses.asdict(config), "metadata": dict(metadata or {}),
              "num_examples": num_examples, "num_val": int(np.sum(np.asarray(val_w)))}
  if workdir is not None:
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    records_path, config_path = workdir / METRICS_FILE, workdir / CONFIG_FILE
    checkpoints = _Checkpoints(workdir, config.keep_checkpoints) if config.checkpoint_every else None
    available = checkpoints.steps() if checkpoints is not None else []
    if resume is False and available:
      raise CheckpointError(f"{workdir} has checkpoints {available}; pass resume=None/True to "
                            "continue the run, or use another workdir.")
    resume_step = None
    if isinstance(resume, int) and not isinstance(resume, bool):
      resume_step = resume
    elif resume is True or (resume is None and available):
      if not available:
        raise CheckpointError(f"resume=True but there is no checkpoint in {workdir / CHECKPOINT_DIR}.")
      resume_step = available[-1]
    if resume_step is not None:
      if checkpoints is None:
        raise CheckpointError("Resuming needs config.checkpoint_every > 0.")
      _check_resumable(config_path, run_info)
      state = checkpoints.restore(resume_step, state)
      checkpoints.set_aside_after(resume_step)
      previous_records = [r for r in _read_records(records_path) if r["step"] <= resume_step]
    info = dict(run_info, code_version=_code_version(), jax=jax.__version__,
                entropy_optax=entropy_optax.__version__, devices=str(jax.devices()))
    _atomic_write(config_path, json.dumps(info, indent=1, default=str) + "\n")
    _atomic_write(records_path, "".join(json.dumps(r) + "\n" for r in previous_records))

  start_step = int(np.max(np.asarray(state.step)))
  wall_offset = previous_records[-1]["wall_time"] if previous_records else 0.0
  records: list[dict[str, Any]] = []
  bar = tqdm(total=total_steps, initial=start_step, disable=not config.progress, unit="step",
             dynamic_ncols=True)
  start_time = time.perf_counter()
  step = start_step
  try:
    while step < total_steps:
      num_steps = min(config.steps_per_call - step % config.steps_per_call, total_steps - step)
      state, metrics = fns.chunk(num_steps)(state, train_data)
      step += num_steps
      done = step == total_steps
      evaluated = None
      if done or (config.eval_every and step % config.eval_every == 0):
        evaluated = fns.evaluate(state, val_data)
      metrics = jax.device_get(metrics)  # the one host sync of the call
      evaluated = jax.device_get(evaluated)
      wall_time = wall_offset + time.perf_counter() - start_time
      new_records = _make_records(config, step, metrics, evaluated, num_examples, wall_time, batched)
      records.extend(new_records)
      if records_path is not None:
        with open(records_path, "a") as f:
          f.write("".join(json.dumps(r) + "\n" for r in new_records))
      if checkpoints is not None and (done or step % config.checkpoint_every == 0):
        checkpoints.save(step, state)
      bar.update(num_steps)
      bar.set_postfix({k: f"{new_records[0][k]:.4g}" for k in ("train_loss", "val_error")
                       if k in new_records[0]})
      if callback is not None:
        callback(new_records, state)
  finally:
    bar.close()
    if checkpoints is not None:
      checkpoints.close()
  return TrainResult(state=state, records=records)


def _check_resumable(config_path: pathlib.Path, run_info: dict[str, Any]) -> None:
  if not config_path.exists():
    raise CheckpointError(f"{config_path} is missing: cannot check that the checkpoints belong "
                          "to this config.")
  saved = json.loads(config_path.read_text())
  diffs = [f"{name}: saved {saved['config'].get(name)!r}, now {run_info['config'][name]!r}"
           for name in _TRAJECTORY_FIELDS if saved["config"].get(name) != run_info["config"][name]]
  if saved.get("metadata", {}) != json.loads(json.dumps(run_info["metadata"], default=str)):
    diffs.append(f"metadata: saved {saved.get('metadata')!r}, now {run_info['metadata']!r}")
  if diffs:
    raise CheckpointError("The checkpoints in this workdir are from a different run: "
                          + "; ".join(diffs) + ". Use another workdir.")


def _make_records(config: TrainConfig, step: int, metrics: dict[str, np.ndarray],
                  evaluated: dict[str, np.ndarray] | None, num_examples: int, wall_time: float,
                  batched: bool) -> list[dict[str, Any]]:
  """One record per seed: means over the call's steps, evaluation, counters."""
  epoch = step * config.batch_size / num_examples
  records = []
  for s in range(config.num_seeds):
    pick = (lambda a: a[s]) if batched else (lambda a: a)
    record = {"step": step, "seed": config.seed + s, "epoch": epoch,
              "effective_epochs": config.langevin_steps * epoch, "wall_time": wall_time}
    for name, values in metrics.items():
      values = pick(np.asarray(values))  # (steps,)
      record[name] = _json_value(values[-1] if name == "langevin_gamma" else values.mean())
    for name, value in (evaluated or {}).items():
      record[name] = _json_value(pick(np.asarray(value)))
    records.append(record)
  return records
