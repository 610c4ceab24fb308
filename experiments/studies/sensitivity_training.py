"""Hyper-parameter sensitivity of Entropy-SGD as one jitted program: every grid point and seed.

A grid of Entropy-SGD hyper-parameters (gamma, the Langevin step size, the noise, the outer
learning rate) and of seeds is trained in a single ``jax.jit(jax.vmap(jax.vmap(run)))``: the
hyper-parameters are traced values (the core's argument checks let traced values through), so the
whole grid of one L is one compilation and one program, and the runs share every matrix multiply
(batched). ``train_grid`` returns the test-accuracy curves; with ``one_program=False`` it runs
the same runs one after another, for the throughput comparison. It times compilation and running
apart (``timings=``). The command: ``python -m experiments.sensitivity`` (``sensitivity_study.py``).

Examples:
  >>> import numpy as np
  >>> from experiments import sensitivity_lib as sl
  >>> data = sl.synthetic_data(num_train=64, num_test=32)
  >>> grid = {"gamma": np.array([0.03, 0.3]), "langevin_lr": np.array([0.1, 0.1]),
  ...         "noise": np.array([1e-4, 1e-4]), "learning_rate": np.array([1.0, 1.0])}
  >>> curves = sl.train_grid("mlp1d", data, "entropy_sgd", grid, seeds=2, num_langevin_steps=2,
  ...                        effective_epochs=2, batch_size=16, num_evals=2)
  >>> curves.shape  # (grid points, seeds, evaluations)
  (2, 2, 2)
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import entropy_optax
from experiments.models import feedforward as models
from experiments.optimizers import sgld
from experiments.run import distributed

ENTROPY_KEYS = ("gamma", "langevin_lr", "noise", "learning_rate")
SGD_KEYS = ("learning_rate",)
SGLD_KEYS = ("learning_rate", "decay_power", "temperature")
SMOOTHING_KEYS = ("sigma", "learning_rate")
GRID_KEYS = {
  "entropy_sgd": ENTROPY_KEYS,
  "sgd": SGD_KEYS,
  "sgld": SGLD_KEYS,
  "smoothing_sgd": SMOOTHING_KEYS,
}
# Optimizers whose update costs L gradient evaluations (on L fresh mini-batches).
L_COST = ("entropy_sgd", "smoothing_sgd")


class Data(tuple):
  """(train_x, train_y, test_x, test_y) as jax arrays."""


def synthetic_data(num_train: int = 256, num_test: int = 128, seed: int = 0) -> Data:
  """A learnable 10-class problem shaped like MNIST-1D (40 features), for tests."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(10, 40)).astype(np.float32)

  def split(n):
    y = rng.integers(0, 10, n).astype(np.int32)
    return centres[y] + 0.5 * rng.normal(size=(n, 40)).astype(np.float32), y

  return Data(jnp.asarray(a) for a in (*split(num_train), *split(num_test)))


def mnist1d_data(num_train: int = 0, num_test: int = 0) -> Data:
  """MNIST-1D, generated offline: num_train / num_test examples (0: 4000 / 1000)."""
  from experiments.data import datasets as data  # pylint: disable=import-outside-toplevel

  d = data.load_mnist1d(num_train or 4000, num_test or 1000)
  return Data(jnp.asarray(a) for a in (d.train_x, d.train_y, d.test_x, d.test_y))


def _shift_batches(tx):
  """``tx`` with its ``grad_fn`` sample k on mini-batch k + 1 (0 served the gradient at x)."""

  def update(updates, state, params=None, *, grad_fn, **extra):
    del extra
    return tx.update(updates, state, params, grad_fn=lambda p, k: grad_fn(p, k + 1))

  return optax.GradientTransformationExtraArgs(tx.init, update)


def _optimizer(
  name: str, hparams: Mapping[str, Any], num_langevin_steps: int, seed, outer_momentum: float
):
  if name == "sgd":
    return optax.sgd(hparams["learning_rate"], momentum=0.9, nesterov=True)
  if name == "smoothing_sgd":
    # Equal cost with Entropy-SGD(L): the gradient at x (computed anyway) + L - 1 samples.
    smoothing = entropy_optax.gaussian_smoothing(num_langevin_steps - 1, hparams["sigma"], key=seed)
    return optax.chain(
      _shift_batches(smoothing), optax.sgd(hparams["learning_rate"], 0.9, nesterov=True)
    )
  if name == "entropy_sgd":
    # The paper's MNIST practice: Nesterov inside the chain, alpha = 0.25, gamma growing by
    # 1.001 per update; outside, the Lua code's plain step (outer_momentum 0) or Nesterov.
    return entropy_optax.entropy_sgd(
      hparams["learning_rate"],
      num_langevin_steps=num_langevin_steps,
      gamma=entropy_optax.exponential_scoping(hparams["gamma"], 1e-3),
      langevin_lr=hparams["langevin_lr"],
      noise=hparams["noise"],
      alpha=0.25,
      momentum=outer_momentum,
      nesterov=outer_momentum > 0,
      langevin_momentum=0.9,
      key=seed,
    )
  if name == "sgld":
    return sgld.sgld(
      hparams["learning_rate"], hparams["decay_power"], hparams["temperature"], key=seed
    )
  raise ValueError(f"optimizer must be one of {', '.join(GRID_KEYS)}, got {name!r}.")


def _build_run(
  model_name: str,
  data: Data,
  optimizer: str,
  num_langevin_steps: int,
  effective_epochs: float,
  batch_size: int,
  num_evals: int,
  outer_momentum: float,
):
  """run(hparams, seed, data) -> test accuracy at ``num_evals`` evenly spaced points (pure).

  The data is an argument, not a closed-over constant: XLA would otherwise fold it into the
  program, which made compiling several times slower.
  """
  model = models.create_model(model_name)
  num_train = data[0].shape[0]
  evals_per_update = num_langevin_steps if optimizer in L_COST else 1
  total_updates = int(effective_epochs * num_train / (batch_size * evals_per_update))
  updates_per_eval = max(total_updates // num_evals, 1)

  def loss(params, x, y):
    logits = model.apply({"params": params}, x, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def accuracy(params, test_x, test_y):
    logits = model.apply({"params": params}, test_x, train=False)
    return jnp.mean(jnp.argmax(logits, -1) == test_y)

  def run(hparams, seed, data):
    train_x, train_y, test_x, test_y = data
    init_key, data_key = jax.random.split(jax.random.PRNGKey(seed))
    params = model.init(init_key, train_x[:1], train=False)["params"]
    tx = _optimizer(optimizer, hparams, num_langevin_steps, seed, outer_momentum)

    def update(carry, key):
      params, state = carry
      idx = jax.random.randint(key, (evals_per_update, batch_size), 0, train_x.shape[0])
      grad_fn = lambda p, k: jax.grad(loss)(p, train_x[idx[k]], train_y[idx[k]])
      grads = grad_fn(params, 0)
      extra = {"grad_fn": grad_fn} if optimizer in L_COST else {}
      updates, state = tx.update(grads, state, params, **extra)
      return (optax.apply_updates(params, updates), state), None

    def segment(carry, key):
      carry, _ = jax.lax.scan(update, carry, jax.random.split(key, updates_per_eval))
      return carry, accuracy(carry[0], test_x, test_y)

    keys = jax.random.split(data_key, num_evals)
    _, accuracies = jax.lax.scan(segment, (params, tx.init(params)), keys)
    return accuracies

  return run


def _grid_arrays(optimizer: str, grid: Mapping[str, Any]) -> dict[str, jax.Array]:
  if optimizer not in GRID_KEYS:
    raise ValueError(f"optimizer must be one of {', '.join(GRID_KEYS)}, got {optimizer!r}.")
  keys = GRID_KEYS[optimizer]
  missing = [k for k in keys if k not in grid]
  if missing:
    raise ValueError(f"grid for {optimizer} needs {missing}; got {sorted(grid)}.")
  arrays = {k: jnp.asarray(grid[k], jnp.float32) for k in keys}
  if len({a.shape for a in arrays.values()}) != 1:
    raise ValueError("every grid entry must list one value per grid point (same length).")
  return arrays


def train_grid(
  model_name: str,
  data: Data,
  optimizer: str,
  grid: Mapping[str, Any],
  *,
  seeds: int,
  num_langevin_steps: int = 5,
  effective_epochs: float = 20,
  batch_size: int = 128,
  num_evals: int = 10,
  outer_momentum: float = 0.0,
  fast_compile: bool = False,
  timings: dict[str, float] | None = None,
  one_program: bool = True,
  mesh=None,
) -> np.ndarray:
  """Every grid point and seed in one jitted, vmapped program: test accuracy curves.

  Args:
    model_name: "mlp1d" or "cnn1d" (``experiments.models.feedforward``).
    data: ``(train_x, train_y, test_x, test_y)``.
    optimizer: "entropy_sgd" (grid keys gamma, langevin_lr, noise, learning_rate), "sgd"
      (learning_rate), "sgld" (learning_rate, decay_power, temperature: the paper's App. C.1
      baseline, ``sgld_baseline``) or "smoothing_sgd" (sigma, learning_rate: SGD on the
      Gaussian-smoothed loss, L - 1 samples besides the gradient at x): one value per grid point
      in each entry (a flattened grid).
    seeds: seeds per grid point (0..seeds-1: initialisation, batches, Langevin noise).
    num_langevin_steps: L, gradient evaluations per update of entropy_sgd and smoothing_sgd.
    effective_epochs: training length in gradient evaluations / training-set size.
    batch_size: mini-batch size of every gradient evaluation.
    num_evals: test-accuracy evaluations, evenly spaced.
    outer_momentum: Entropy-SGD's outer (Nesterov) momentum; 0 is the Lua code's plain step.
    fast_compile: compile with XLA's backend optimisation level 0: on this 2-core CPU a small
      program then compiles ~3x faster and runs up to ~2x slower (the study's short runs are
      dominated by compilation).
    timings: if given, gets "compile_s" and "run_s" (the run's result on the host).
    one_program: False runs the same runs one after another instead (one compilation of one
      run, hyper-parameters and seed as arguments): the throughput comparison.
    mesh: a ``jax.sharding.Mesh`` whose axis ``seed`` splits the seeds over devices (one
      program; its size divides ``seeds``); None: one device.

  Returns:
    (grid points, seeds, num_evals) float array of test accuracies.
  """
  arrays = _grid_arrays(optimizer, grid)
  run = _build_run(
    model_name,
    data,
    optimizer,
    num_langevin_steps,
    effective_epochs,
    batch_size,
    num_evals,
    outer_momentum,
  )
  options = _compiler_options(fast_compile)
  if one_program:
    args = (arrays, jnp.arange(seeds), tuple(data))
    seed_axis = None
    if mesh is not None:  # the seeds on their devices, the rest replicated
      seed_axis = distributed.SEED_AXIS
      put = lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec))  # noqa: E731
      args = (
        jax.tree.map(lambda a: put(a, P()), args[0]),
        put(args[1], P(seed_axis)),
        jax.tree.map(lambda a: put(a, P()), args[2]),
      )
    per_seed = jax.vmap(run, (None, 0, None), spmd_axis_name=seed_axis)
    vmapped = jax.vmap(per_seed, (0, None, None))
    program, compile_s = timed(jax.jit(vmapped).lower(*args).compile, options)
    curves, run_s = timed(lambda: np.asarray(program(*args)))
  else:
    point = lambda g: {k: v[g] for k, v in arrays.items()}
    program, compile_s = timed(
      jax.jit(run).lower(point(0), jnp.int32(0), tuple(data)).compile, options
    )
    points = len(next(iter(arrays.values())))
    curves, run_s = timed(
      lambda: np.stack(
        [
          np.stack([np.asarray(program(point(g), jnp.int32(s), tuple(data))) for s in range(seeds)])
          for g in range(points)
        ]
      )
    )
  if timings is not None:
    timings.update(compile_s=compile_s, run_s=run_s)
  return curves


def _compiler_options(fast_compile: bool) -> dict[str, Any] | None:
  return {"xla_backend_optimization_level": 0} if fast_compile else None


def timed(fn, *args, **kwargs) -> tuple[Any, float]:
  """(result, seconds), the result already on the host (np.asarray blocks)."""
  start = time.perf_counter()
  result = fn(*args, **kwargs)
  return result, time.perf_counter() - start
