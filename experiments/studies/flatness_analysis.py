"""The flatness of one final point: the training loss's Hessian spectrum (exact, or Lanczos
extremes and SLQ density) or a diagonal Fisher, in evaluation mode, and the paper's statistics;
the loss under random perturbations and the local entropy.

Used by ``python -m experiments.flatness``; ``entropy_optax.flatness`` does the numerics.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from entropy_optax import flatness
from experiments.configs.flatness import FlatnessJob
from experiments.launch import components, final_state
from experiments.models import recurrent
from experiments.run.schema import ConfigError
from experiments.studies import flatness_perturbation
from experiments.trainer import tasks

THRESHOLDS = (1e-4, 1e-3, 1e-2)


def choose_method(args: FlatnessJob, configs: dict, num_params: int) -> str:
  """``args.method``, "auto" resolved by the model's size; a ``ConfigError`` for a method the
  runs cannot take (too many weights for the exact spectrum, adam-fisher on non-Adam runs)."""
  method = args.method
  if method == "auto":
    method = "exact" if num_params <= args.max_exact_params else "lanczos"
  if method == "exact" and num_params > args.max_exact_params:
    raise ConfigError(
      f"the model has {num_params:,} weights, more than --max-exact-params "
      f"{args.max_exact_params:,}: use --method lanczos (or fisher), or raise the limit if "
      f"{num_params**2 * 4 / 1e9:.1f} GB fit in memory."
    )
  if method == "adam-fisher":
    other = [c.optimizer for c in configs.values() if c.optimizer not in ("adam", "entropy-adam")]
    if other:
      raise ConfigError(
        f"--method adam-fisher reads Adam's second moment: --optimizers may "
        f"name adam and entropy-adam runs only, not {', '.join(other)}."
      )
  return method


def eval_loss(model, batch_stats=None):
  """``loss(params, (x, y))``: mean cross entropy of ``model`` in evaluation mode (a language
  model: per token, every segment from the zero state, as the paper's independent lines).

  A plain closure: ``entropy_optax.flatness`` keys its compilations on the code and the model
  and traces the closed-over BatchNorm statistics (``jax.Array``s), so the runs of one model
  share one compilation.
  """
  if batch_stats is not None:
    batch_stats = jax.tree.map(jnp.asarray, batch_stats)  # NumPy would be static: traced instead

  def loss(params, batch):
    variables = {"params": params}
    if batch_stats is not None:
      variables["batch_stats"] = batch_stats
    if isinstance(model, recurrent.LSTMLanguageModel):
      zero = recurrent.zero_state(model, batch[0].shape[0])
      logits, _ = model.apply(variables, batch[0], zero, train=False)
    else:
      logits = model.apply(variables, batch[0], train=False)
    return tasks.cross_entropy(logits, batch[1])

  return loss


def weight_norms(params) -> dict[str, Any]:
  """The Euclidean norm of all the weights (``weight_norm``) and of each array
  (``weight_norms``, keyed by its path, ``Dense_0/kernel``): curvature and perturbation
  measures compare only at equal scale, and a weight array that feeds a BatchNorm can grow
  without changing the function while its curvature falls as 1/norm²."""
  leaves = jax.tree_util.tree_leaves_with_path(params)
  norms = {_path_name(path): float(np.linalg.norm(np.asarray(w))) for path, w in leaves}
  return {"weight_norm": float(np.sqrt(sum(v * v for v in norms.values()))), "weight_norms": norms}


def array_curvatures(loss_fn, params, batches, num_iters: int, key: int) -> dict[str, Any]:
  """Each weight array's own curvature: the largest eigenvalue of the Hessian block of that
  array (the loss as a function of it alone, the others held fixed), by ``num_iters`` Lanczos
  steps, with the array's norm and their scale-free product ``eigenvalue x norm²``.

  Scaling an array that feeds a BatchNorm by c leaves the function unchanged and divides its
  block's eigenvalues by c², so only the product compares such arrays between solutions of
  different scales; for the other arrays (the output layer, biases) it is a reference, not an
  invariant.
  """
  leaves_with_paths, treedef = jax.tree_util.tree_flatten_with_path(params)
  leaves = [jnp.asarray(w) for _, w in leaves_with_paths]  # traced, not baked into programs
  norms = weight_norms(params)["weight_norms"]
  curvatures = {}
  for i, (path, _) in enumerate(leaves_with_paths):

    def block_loss(block, batch, i=i):
      return loss_fn(jax.tree.unflatten(treedef, [*leaves[:i], block, *leaves[i + 1 :]]), batch)

    extremes = flatness.lanczos_extremes(
      block_loss, leaves[i], batches, num_iters=num_iters, key=key
    )
    largest, norm = float(extremes.largest), norms[_path_name(path)]
    curvatures[_path_name(path)] = {
      "max_eigenvalue": largest,
      "norm": norm,
      "eigenvalue_times_norm2": largest * norm**2,
    }
  return curvatures


def _path_name(path) -> str:
  """``Dense_0/kernel`` for the key path of a parameter."""
  return "/".join(str(getattr(k, "key", k)) for k in path)


def _seed_variables(variables: dict[str, Any], seed_index: int, num_seeds: int):

  if num_seeds == 1:
    return variables
  return jax.tree.map(lambda a: a[seed_index], variables)


def _batches(ds, args: FlatnessJob):

  batch = min(args.hessian_batch, args.hessian_examples, len(ds.train_x))
  num_batches = max(1, min(args.hessian_examples, len(ds.train_x)) // batch)
  n = num_batches * batch
  return (
    jnp.asarray(ds.train_x[:n]).reshape(num_batches, batch, *ds.input_shape),
    jnp.asarray(ds.train_y[:n]).reshape(num_batches, batch, *ds.train_y.shape[1:]),
  ), n


def analyse(
  run: final_state.Run, ds, args: FlatnessJob, method: str, seed_index: int
) -> tuple[dict[str, Any], Any, np.ndarray]:
  """The statistics of one seed of a finished run, what to plot, and the values (eigenvalues,
  Fisher diagonal, or SLQ nodes)."""

  config = run.config
  if run.state is not None:
    state = {
      "params": run.state.params,
      "batch_stats": run.state.batch_stats,
      "opt_state": run.state.opt_state,
    }
  else:
    state = final_state.load_final_state(run.workdir, args.run.data_dir)
  state = _seed_variables(jax.device_get(state), seed_index, config.num_seeds)
  params = state["params"]
  batches, n = _batches(ds, args)
  loss_fn = eval_loss(components.make_model(config, ds.num_classes), state.get("batch_stats"))
  num_params = run.results["num_params"]
  start = time.perf_counter()
  stats: dict[str, Any] = {"method": method, "examples": n, "num_params": num_params}
  stats.update(weight_norms(params))
  if method == "exact":
    values = np.asarray(
      flatness.hessian_eigenvalues(loss_fn, params, batches, max_params=args.max_exact_params)
    )
    stats.update(flatness.spectrum_summary(values, thresholds=THRESHOLDS))
    plotted = values
  elif method in ("fisher", "adam-fisher"):
    if method == "fisher":
      diagonal = flatness.fisher_diagonal(loss_fn, params, batches)
    else:
      diagonal = flatness.fisher_diagonal_from_adam(state["opt_state"], b2=config.b2)
    values = np.asarray(ravel_pytree(diagonal)[0])
    stats.update(flatness.spectrum_summary(values, thresholds=THRESHOLDS))
    plotted = values
  else:
    extremes = flatness.lanczos_extremes(
      loss_fn, params, batches, num_iters=args.lanczos_iters, key=seed_index
    )
    density = flatness.spectral_density(
      loss_fn,
      params,
      batches,
      num_iters=args.lanczos_iters,
      num_samples=args.slq_samples,
      key=seed_index + 1,
    )
    nodes, weights = np.asarray(density.nodes), np.asarray(density.weights)
    stats.update(
      {
        "count": num_params,
        "max_eigenvalue": float(extremes.largest),
        "min_eigenvalue": float(extremes.smallest),
        "frac_negative": float(np.mean(np.sum(weights * (nodes < 0), axis=1))),
      }
    )
    for t in THRESHOLDS:
      stats[f"frac_abs_below_{t:.0e}"] = float(
        np.mean(np.sum(weights * (np.abs(nodes) < t), axis=1))
      )
    plotted, values = density, nodes
  stats["loss"] = float(jnp.mean(jax.lax.map(jax.jit(lambda b: loss_fn(params, b)), batches)))
  stats["seconds"] = time.perf_counter() - start
  if args.per_array:
    start = time.perf_counter()
    stats["per_array"] = array_curvatures(
      loss_fn, params, batches, num_iters=args.lanczos_iters, key=seed_index
    )
    stats["per_array_seconds"] = time.perf_counter() - start
  start = time.perf_counter()
  stats["perturbation"] = flatness_perturbation.measure(
    loss_fn,
    params,
    batches,
    {"relative": args.relative_radii, "absolute": args.absolute_radii},
    args.perturbation_samples,
  )
  stats["perturbation_seconds"] = time.perf_counter() - start
  stats["test_error"] = run.results["test_error"][seed_index]
  return stats, plotted, values
