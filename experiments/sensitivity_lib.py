"""Hyper-parameter sensitivity of Entropy-SGD as one jitted program: every grid point and seed.

A grid of Entropy-SGD hyper-parameters (gamma, the Langevin step size, the noise, the outer
learning rate) and of seeds is trained in a single ``jax.jit(jax.vmap(jax.vmap(run)))``: the
hyper-parameters are traced values (the core's argument checks let traced values through), so the
whole grid of one L is one compilation and one program, and the runs share every matrix multiply
(batched). ``train_grid`` returns the test-accuracy curves; ``time_to_target`` and ``summarise``
turn them into the study's table (where Entropy-SGD beats the best SGD, how flat the region is);
``train_sequential`` runs the same runs one after another, for the throughput comparison.

Library only (no command line yet): see the README section "Sensitivity study".

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

import entropy_optax
from experiments import models, sgld_baseline

ENTROPY_KEYS = ("gamma", "langevin_lr", "noise", "learning_rate")
SGD_KEYS = ("learning_rate",)
SGLD_KEYS = ("learning_rate", "decay_power", "temperature")


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


def mnist1d_data() -> Data:
  from experiments import data  # pylint: disable=import-outside-toplevel

  d = data.load_mnist1d()
  return Data(jnp.asarray(a) for a in (d.train_x, d.train_y, d.test_x, d.test_y))


def _optimizer(name: str, hparams: Mapping[str, Any], num_langevin_steps: int, seed):
  if name == "sgd":
    return optax.sgd(hparams["learning_rate"], momentum=0.9, nesterov=True)
  if name == "entropy_sgd":
    # The paper's MNIST practice: Nesterov inside the chain, none outside (the authors' Lua code),
    # alpha = 0.25, gamma growing by 1.001 per update.
    return entropy_optax.entropy_sgd(
      hparams["learning_rate"],
      num_langevin_steps=num_langevin_steps,
      gamma=entropy_optax.exponential_scoping(hparams["gamma"], 1e-3),
      langevin_lr=hparams["langevin_lr"],
      noise=hparams["noise"],
      alpha=0.25,
      momentum=0.0,
      langevin_momentum=0.9,
      key=seed,
    )
  if name == "sgld":
    return sgld_baseline.sgld(
      hparams["learning_rate"], hparams["decay_power"], hparams["temperature"], key=seed
    )
  raise ValueError(f"optimizer must be 'sgd', 'sgld' or 'entropy_sgd', got {name!r}.")


def _build_run(
  model_name: str,
  data: Data,
  optimizer: str,
  num_langevin_steps: int,
  effective_epochs: float,
  batch_size: int,
  num_evals: int,
):
  """run(hparams, seed) -> test accuracy at ``num_evals`` evenly spaced points (pure)."""
  model = models.create_model(model_name)
  train_x, train_y, test_x, test_y = data
  evals_per_update = num_langevin_steps if optimizer == "entropy_sgd" else 1
  total_updates = int(effective_epochs * train_x.shape[0] / (batch_size * evals_per_update))
  updates_per_eval = max(total_updates // num_evals, 1)

  def loss(params, x, y):
    logits = model.apply({"params": params}, x, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def accuracy(params):
    logits = model.apply({"params": params}, test_x, train=False)
    return jnp.mean(jnp.argmax(logits, -1) == test_y)

  def run(hparams, seed):
    init_key, data_key = jax.random.split(jax.random.PRNGKey(seed))
    params = model.init(init_key, train_x[:1], train=False)["params"]
    tx = _optimizer(optimizer, hparams, num_langevin_steps, seed)

    def update(carry, key):
      params, state = carry
      idx = jax.random.randint(key, (evals_per_update, batch_size), 0, train_x.shape[0])
      grad_fn = lambda p, k: jax.grad(loss)(p, train_x[idx[k]], train_y[idx[k]])
      grads = grad_fn(params, 0)
      extra = {"grad_fn": grad_fn} if optimizer == "entropy_sgd" else {}
      updates, state = tx.update(grads, state, params, **extra)
      return (optax.apply_updates(params, updates), state), None

    def segment(carry, key):
      carry, _ = jax.lax.scan(update, carry, jax.random.split(key, updates_per_eval))
      return carry, accuracy(carry[0])

    keys = jax.random.split(data_key, num_evals)
    _, accuracies = jax.lax.scan(segment, (params, tx.init(params)), keys)
    return accuracies

  return run


def _grid_arrays(optimizer: str, grid: Mapping[str, Any]) -> dict[str, jax.Array]:
  keys = {"entropy_sgd": ENTROPY_KEYS, "sgld": SGLD_KEYS}.get(optimizer, SGD_KEYS)
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
) -> np.ndarray:
  """Every grid point and seed in one jitted, vmapped program: test accuracy curves.

  Args:
    model_name: "mlp1d" or "cnn1d" (``experiments.models``).
    data: ``(train_x, train_y, test_x, test_y)``.
    optimizer: "entropy_sgd" (grid keys gamma, langevin_lr, noise, learning_rate), "sgd"
      (learning_rate) or "sgld" (learning_rate, decay_power, temperature: the paper's App. C.1
      baseline, ``sgld_baseline``): one value per grid point in each entry (a flattened grid).
    seeds: seeds per grid point (0..seeds-1: initialisation, batches, Langevin noise).
    num_langevin_steps: L; SGD ignores it.
    effective_epochs: training length in gradient evaluations / training-set size.
    batch_size: mini-batch size of every gradient evaluation.
    num_evals: test-accuracy evaluations, evenly spaced.

  Returns:
    (grid points, seeds, num_evals) float array of test accuracies.
  """
  arrays = _grid_arrays(optimizer, grid)
  run = _build_run(
    model_name, data, optimizer, num_langevin_steps, effective_epochs, batch_size, num_evals
  )
  program = jax.jit(jax.vmap(jax.vmap(run, (None, 0)), (0, None)))
  return np.asarray(program(arrays, jnp.arange(seeds)))


def train_sequential(
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
) -> np.ndarray:
  """``train_grid``'s runs one after another (one compilation, hyper-parameters as arguments)."""
  arrays = _grid_arrays(optimizer, grid)
  program = jax.jit(
    _build_run(
      model_name, data, optimizer, num_langevin_steps, effective_epochs, batch_size, num_evals
    )
  )
  points = len(next(iter(arrays.values())))
  return np.stack(
    [
      np.stack(
        [
          np.asarray(program({k: v[g] for k, v in arrays.items()}, jnp.int32(s)))
          for s in range(seeds)
        ]
      )
      for g in range(points)
    ]
  )


def timed(fn, *args, **kwargs) -> tuple[Any, float]:
  """(result, seconds), the result already on the host (np.asarray blocks)."""
  start = time.perf_counter()
  result = fn(*args, **kwargs)
  return result, time.perf_counter() - start


def time_to_target(curves: np.ndarray, target: float, effective_epochs: float) -> np.ndarray:
  """Effective epochs at which each curve first reaches ``target`` (nan if never)."""
  num_evals = curves.shape[-1]
  reached = curves >= target
  first = np.where(reached.any(-1), reached.argmax(-1), -1)
  epochs = (first + 1) * effective_epochs / num_evals
  return np.where(first >= 0, epochs, np.nan)


def summarise(entropy_final: np.ndarray, sgd_final: np.ndarray, tolerance: float = 0.01):
  """Where Entropy-SGD beats the best SGD, and how flat its grid is.

  Args:
    entropy_final: (grid points, seeds) final test accuracy of Entropy-SGD.
    sgd_final: (learning rates, seeds) of SGD.
    tolerance: "flat" counts grid points within this accuracy of Entropy-SGD's best mean.

  Returns:
    dict: best SGD mean, Entropy-SGD best mean, indices of grid points whose mean beats the best
    SGD by more than two standard errors of the difference, and the flat fraction.
  """
  sgd_mean = sgd_final.mean(1)
  best = int(np.argmax(sgd_mean))
  sgd_se = sgd_final[best].std(ddof=1) / np.sqrt(sgd_final.shape[1])
  mean = entropy_final.mean(1)
  se = entropy_final.std(1, ddof=1) / np.sqrt(entropy_final.shape[1])
  beats = np.nonzero(mean - sgd_mean[best] > 2 * np.sqrt(se**2 + sgd_se**2))[0]
  return {
    "best_sgd": float(sgd_mean[best]),
    "best_sgd_index": best,
    "best_entropy": float(mean.max()),
    "beats_best_sgd": beats.tolist(),
    "flat_fraction": float(np.mean(mean >= mean.max() - tolerance)),
  }
