"""A grid of runs of one recipe as one jitted program: every grid point and every seed.

The grid is a list of ``RunConfig``s that differ only in ``TRACED_FIELDS`` (the learning rate,
gamma0, the Langevin step, the noise, ...). Each run is built and trained as the main job
builds and trains it: data, model and task from ``experiments.launch.components``, the optimizer
from the registry (``experiments.optimizers.registry``), the step counts and evaluations from
``experiments.run.schema.schedule``, and the loop's own jitted steps
(``experiments.trainer.step_runners.prepare``: the same step, data order, loss and
evaluation). Only the differing fields are traced values, so
the grid of points x seeds is one ``jax.jit(jax.vmap(jax.vmap(run)))`` program and one
compilation, and each of its runs is the main job's run of that config
(``tests/test_sensitivity_lib.py`` checks it against ``experiments.launch.jobs``).
``one_program=False`` runs the same runs one after another (one compilation of one run, the
traced fields and the seed as arguments): the throughput comparison. The command:
``python -m experiments.sensitivity`` (``sensitivity_report.py``).

Examples:
  >>> from experiments.configs import mnist1d
  >>> from experiments.studies import sensitivity_training as st
  >>> recipe = mnist1d.PRESETS["entropy-sgd"].config.replace(
  ...   num_train=200, num_test=100, num_seeds=2, outer_epochs=1, langevin_steps=2)
  >>> curves = st.train_grid([recipe.replace(gamma0=g) for g in (0.03, 0.3)])
  >>> curves.val_error.shape  # (grid points, seeds, evaluations: after steps 1 and 2)
  (2, 2, 2)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.launch import components
from experiments.optimizers import registry
from experiments.run.schema import ConfigError, RunConfig, field_names, schedule
from experiments.trainer import loop_state, step_runners

# The fields a grid may vary: float hyper-parameters that the optimizers take as traced values.
TRACED_FIELDS = (
  "learning_rate",
  "gamma0",
  "langevin_lr",
  "noise",
  "smoothing_sigma",
  "sgld_decay_power",
  "sgld_temperature",
)


@dataclasses.dataclass(frozen=True)
class GridCurves:
  """The evaluations of a grid, as the loop evaluates (each array: points x seeds x evals).

  Attributes:
    val_loss: test loss.
    val_error: test error (a fraction).
    steps: the outer step of each evaluation.
    effective_epochs: the effective epochs of each evaluation.
  """

  val_loss: np.ndarray
  val_error: np.ndarray
  steps: tuple[int, ...]
  effective_epochs: tuple[float, ...]


def check_grid(configs: Sequence[RunConfig]) -> RunConfig:
  """Validates every config (``components.validate``); returns the first.

  Raises:
    ConfigError: no config, or configs that differ in a field outside ``TRACED_FIELDS``.
  """
  if not configs:
    raise ConfigError("a grid needs at least one config.")
  for config in configs:
    components.validate(config)
  first = configs[0]
  differ = [
    name
    for name in field_names()
    if name not in TRACED_FIELDS and any(getattr(c, name) != getattr(first, name) for c in configs)
  ]
  if differ:
    raise ConfigError(
      f"the configs of one grid may differ only in {', '.join(TRACED_FIELDS)}; they differ in "
      f"{', '.join(differ)}: train those as separate grids."
    )
  return first


def train_grid(
  configs: Sequence[RunConfig],
  *,
  one_program: bool = True,
  fast_compile: bool = False,
  timings: dict[str, float] | None = None,
) -> GridCurves:
  """Trains every config of the grid and each of its seeds; see the module docstring.

  Args:
    configs: the grid points: ``RunConfig``s equal but in ``TRACED_FIELDS``; each trains its
      ``num_seeds`` seeds from ``seed``.
    one_program: True: every run in one jitted, vmapped program; False: the same runs one after
      another (one compiled run called per grid point and seed).
    fast_compile: compile with XLA's backend optimisation level 0: on the 2-core CPU a small
      program then compiles ~3x faster and runs up to ~2x slower.
    timings: if given, gets "compile_s" and "run_s" (the run's results on the host).

  Returns:
    A ``GridCurves``.
  """
  base = check_grid(configs)
  ds = components.load_data(base)
  model = components.make_model(base, ds.num_classes)
  task = components.make_task(base, model)
  # The seeds are vmapped here, around the loop's functions for one seed.
  one_seed = base.replace(num_seeds=1, step_runner="scan")
  plan = schedule(base, len(ds.train_x))
  # The optimizer travels in the state: the jitted steps are the same for every grid point.
  prepared = step_runners.prepare(
    one_seed, model, registry.optimizer_factory(base, plan.steps_per_epoch), ds, task=task
  )
  eval_every = plan.eval_every_steps
  full, rest = divmod(plan.num_steps, eval_every)
  fns = prepared.fns

  def run(values, seed, train_data, val_data):
    """The evaluations of one run: the config with ``values`` (traced) and ``seed``."""
    make_tx = registry.optimizer_factory(base.replace(**values), plan.steps_per_epoch)
    state = loop_state.init_state(model, make_tx, task, train_data[0][:1], seed, base.batch_size)

    def segment(state, num_steps):
      state, _ = fns.scan_call(num_steps)(state, train_data)
      return state, fns.evaluate(fns.before_eval(state, train_data), val_data)

    state, metrics = jax.lax.scan(lambda s, _: segment(s, eval_every), state, length=full)
    if rest:
      _, last = segment(state, rest)
      metrics = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), metrics, last)
    return metrics

  values = {k: jnp.asarray([getattr(c, k) for c in configs], jnp.float32) for k in TRACED_FIELDS}
  seeds = jnp.asarray([base.seed + s for s in range(base.num_seeds)], jnp.uint32)
  data = (prepared.train_data, prepared.val_data)
  options = {"xla_backend_optimization_level": 0} if fast_compile else None
  if one_program:
    vmapped = jax.vmap(jax.vmap(run, (None, 0, None, None)), (0, None, None, None))
    program, compile_s = timed(jax.jit(vmapped).lower(values, seeds, *data).compile, options)
    metrics, run_s = timed(lambda: jax.device_get(program(values, seeds, *data)))
  else:
    point = lambda g: {k: v[g] for k, v in values.items()}  # noqa: E731
    program, compile_s = timed(jax.jit(run).lower(point(0), seeds[0], *data).compile, options)

    def one_after_another():
      stack = lambda runs: jax.tree.map(lambda *a: np.stack(a), *runs)  # noqa: E731
      return stack(
        [
          stack([jax.device_get(program(point(g), seed, *data)) for seed in seeds])
          for g in range(len(configs))
        ]
      )

    metrics, run_s = timed(one_after_another)
  if timings is not None:
    timings.update(compile_s=compile_s, run_s=run_s)
  at = [eval_every * (i + 1) for i in range(full)] + ([plan.num_steps] if rest else [])
  return GridCurves(
    val_loss=np.asarray(metrics["val_loss"]),
    val_error=np.asarray(metrics["val_error"]),
    steps=tuple(at),
    effective_epochs=tuple(s * base.langevin_steps / plan.steps_per_epoch for s in at),
  )


def timed(fn, *args, **kwargs) -> tuple[Any, float]:
  """(result, seconds), the result already on the host."""
  start = time.perf_counter()
  result = fn(*args, **kwargs)
  return result, time.perf_counter() - start
