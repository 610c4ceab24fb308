"""The jitted functions of a run: init, a call of several steps, evaluation.

A call of k outer steps runs in one of two ways (``RunConfig.step_runner``):

* ``scan``: one jitted ``lax.scan`` over the k steps. Fastest on GPU/TPU and for MLPs on CPU.
* ``dispatch``: one jitted step dispatched k times from Python, asynchronously (no host sync
  inside the call; the batch indices of the call are computed once). On XLA:CPU a convolution
  inside a rolled loop runs 3-40x slower than outside (XLA keeps the weight-gradient convs in
  a layout its fast conv runtime does not take), so this is ``auto``'s choice for conv nets on
  CPU; ``benchmarks/loop_speed.py`` measures both against standalone jitted steps.

Both give the same trajectory up to float rounding, and each is deterministic, so a resumed run
(which makes the same choice) reproduces an uninterrupted one bit for bit on CPU.

Over a ``Mesh`` (``experiments.run.distributed.make_mesh``) the state's leading seed axis is
split over the mesh axis ``seed`` (``vmap(spmd_axis_name=...)``: each device trains its own
seeds) and every mini-batch over the axis ``data`` (XLA inserts the gradient all-reduce). A
mesh may lack either axis.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import entropy_optax
from experiments.run import distributed
from experiments.run.distributed import DATA_AXIS, SEED_AXIS
from experiments.run.schema import RunConfig
from experiments.trainer import device_data, loop_state, steps, tasks


def choose_runner(runner: str, model, example_x, task: tasks.Task = tasks.Task()) -> str:
  """``scan`` or ``dispatch`` for ``runner`` (``RunConfig.step_runner``: ``auto``, ``scan`` or
  ``dispatch``; see the module docstring)."""
  if runner in ("scan", "dispatch"):
    return runner
  if runner != "auto":
    raise ValueError(f"step_runner must be auto, scan or dispatch, got {runner!r}.")
  forward = lambda: model.init(  # noqa: E731
    jax.random.PRNGKey(0), example_x, train=False, **tasks.carry_kwargs(task, example_x)
  )
  # The core unrolls its Langevin scan by the same rule (XLA:CPU, a convolution): one fact.
  return "dispatch" if entropy_optax.default_unroll(2, forward) > 1 else "scan"


def state_sharding(mesh, batched: bool) -> NamedSharding | None:
  """Where the state lives: its leading seed axis split over ``seed``, or replicated."""
  if mesh is None:
    return None
  seed_split = batched and SEED_AXIS in mesh.axis_names
  return NamedSharding(mesh, P(SEED_AXIS) if seed_split else P())


@dataclasses.dataclass(frozen=True)
class Functions:
  """init(seeds, example_x) -> state; call(state, train_data, num_steps) -> (state, metrics
  with a trailing steps axis); evaluate(state, val_data) -> metrics; before_eval(state,
  train_data) -> state; scan_call(num_steps): the jitted scan (to inspect its HLO)."""

  init: Callable
  call: Callable
  evaluate: Callable
  before_eval: Callable
  scan_call: Callable


@functools.lru_cache(maxsize=32)
def compiled_functions(
  config: RunConfig,
  model,
  make_tx,
  task: tasks.Task,
  *,
  mesh,
  num_examples: int,
  eval_batch_size: int,
  runner: str,
) -> Functions:
  """The jitted functions of a run, shared by runs with the same arguments (e.g. a resume).

  ``config`` gives the batch size, L (an outer step takes L fresh mini-batches), the seeds
  (``num_seeds`` > 1: a leading seed axis, vmapped) and the replicas: ``replicas`` > 1, every
  seed's state has a leading replica axis (``loop_state.init_state``), each step runs the replicas
  under ``jax.vmap(..., axis_name=loop_state.REPLICA_AXIS)`` (on one device) with the step's metrics
  averaged over them, and the replicas' average is evaluated (``loop_state.replica_mean``, then
  ``task.before_eval``).
  """
  batched, batch_size, replicas = config.num_seeds > 1, config.batch_size, config.replicas
  batches_per_step = config.langevin_steps
  spmd_axis = SEED_AXIS if mesh is not None and SEED_AXIS in mesh.axis_names else None

  def vmap_seeds(fn: Callable, in_axes) -> Callable:
    # spmd_axis_name: the sharding constraints inside put the seed axis on the mesh's `seed`.
    return jax.vmap(fn, in_axes=in_axes, spmd_axis_name=spmd_axis) if batched else fn

  def constrain_batch(a, axis):
    if mesh is None or DATA_AXIS not in mesh.axis_names:
      return a
    spec = [None] * a.ndim
    spec[axis] = DATA_AXIS
    return jax.lax.with_sharding_constraint(a, NamedSharding(mesh, P(*spec)))

  def init(seed, example_x):
    return loop_state.init_state(model, make_tx, task, example_x, seed, batch_size, replicas)

  def indices(state, num_steps):
    if replicas > 1:  # each replica its own data order; steps first: (steps, replicas, L, B)
      return jnp.moveaxis(jax.vmap(lambda s: replica_indices(s, num_steps))(state), 0, 1)
    return replica_indices(state, num_steps)

  def replica_indices(state, num_steps):
    idx = task.batch_indices(
      state.data_key,
      state.step * batches_per_step,
      num_steps * batches_per_step,
      num_examples,
      batch_size,
    )
    return idx.reshape(num_steps, batches_per_step, batch_size)

  def one_step(state, data, idx):
    if replicas == 1:
      return replica_step(state, data, idx)
    state, metrics = jax.vmap(replica_step, (0, None, 0), axis_name=loop_state.REPLICA_AXIS)(
      state, data, idx
    )
    return state, jax.tree.map(lambda m: jnp.mean(m, 0), metrics)

  def replica_step(state, data, idx):
    train_x, train_y = data
    xs, ys = constrain_batch(train_x[idx], 1), constrain_batch(train_y[idx], 1)
    reset = task.carry_reset(state.step, num_examples, batch_size) if task.carry_reset else False
    return steps.train_step(state, xs, ys, task=task, reset_carry=reset)

  def scan_steps(state, data, num_steps):
    return jax.lax.scan(lambda s, i: one_step(s, data, i), state, indices(state, num_steps))

  @functools.cache
  def scan_call(num_steps):
    fn = functools.partial(scan_steps, num_steps=num_steps)
    return jax.jit(vmap_seeds(fn, (0, None)), donate_argnums=0)

  @functools.cache
  def indices_call(num_steps):
    fn = functools.partial(indices, num_steps=num_steps)
    return jax.jit(vmap_seeds(fn, (0,)))

  step_at = jax.jit(
    vmap_seeds(lambda s, d, idx, i: one_step(s, d, idx[i]), (0, None, 0, None)),
    donate_argnums=0,
  )
  stack_axis = 1 if batched else 0

  def call(state, data, num_steps):
    if runner == "scan":
      return scan_call(num_steps)(state, data)
    idx = indices_call(num_steps)(state)
    metrics = []
    for i in range(num_steps):  # asynchronous dispatches: nothing waits for the device here
      state, m = step_at(state, data, idx, jnp.int32(i))
      metrics.append(m)
    return state, jax.tree.map(lambda *a: jnp.stack(a, stack_axis), *metrics)

  def evaluate_one(state, data):
    return steps.evaluate(state, *data, eval_batch_size, task, lambda a: constrain_batch(a, 0))

  def before_eval(state, data):
    state = loop_state.replica_mean(state) if replicas > 1 else state
    return task.before_eval(state, *data) if task.before_eval else state

  return Functions(
    init=jax.jit(vmap_seeds(init, (0, None)), out_shardings=state_sharding(mesh, batched)),
    call=call,
    evaluate=jax.jit(vmap_seeds(evaluate_one, (0, None))),
    before_eval=(
      jax.jit(vmap_seeds(before_eval, (0, None)))
      if task.before_eval or replicas > 1
      else (lambda state, data: state)
    ),
    scan_call=scan_call,
  )


@dataclasses.dataclass(frozen=True)
class Prepared:
  """What the loop runs: the jitted functions, the data on the device (validation padded, with
  weights), the sizes and the step runner used."""

  fns: Functions
  train_data: tuple[jax.Array, jax.Array]
  val_data: tuple[jax.Array, jax.Array, jax.Array]
  num_examples: int
  num_val: int
  runner: str


def prepare(config: RunConfig, model, make_tx, data, *, task=tasks.Task(), mesh=None) -> Prepared:
  """The jitted functions and device data of a run, as the loop uses them (also for callers
  that compose the functions themselves, e.g. a vmapped grid of runs).

  Raises:
    ConfigError: a mesh that cannot split the seeds or the batch
      (``experiments.run.distributed.check_mesh``).
    ValueError: replicas with a mesh.
  """
  if mesh is not None:
    if config.replicas > 1:
      raise ValueError(
        f"replicas={config.replicas} run vmapped on one device; drop the mesh (a mesh axis of "
        "replicas is jax.shard_map over entropy_optax.parle's axis_name, not in this loop yet)."
      )
    distributed.check_mesh(mesh, num_seeds=config.num_seeds, batch_size=config.batch_size)
  on_device = device_data.put(data, config, mesh)
  runner = choose_runner(config.step_runner, model, on_device.train[0][:1], task)
  fns = compiled_functions(
    config,
    model,
    make_tx,
    task,
    mesh=mesh,
    num_examples=on_device.num_examples,
    eval_batch_size=on_device.eval_batch_size,
    runner=runner,
  )
  return Prepared(
    fns, on_device.train, on_device.val, on_device.num_examples, on_device.num_val, runner
  )
