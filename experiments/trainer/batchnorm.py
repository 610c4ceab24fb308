"""BatchNorm running statistics re-estimated at the current weights, as the authors' codes do.

Every gradient evaluation of Entropy-SGD in the authors' codes runs the model in training mode,
so the running statistics also follow the Langevin samples x'. Before each evaluation both codes
therefore re-estimate them at the kept weights x: dropout set to 0, the data fed through the
model in training mode (Lua ``compute_bn_params``: the evaluated set itself, in batches of 1024;
PyTorch port ``dry_feed``: training mini-batches of 128). Here the statistics are fed the given
set (the loop passes the training set) and set to its exact mean and (biased) variance over all
batches, instead of the codes' running average over the batches, which weights the last ones most.

``reestimate_batch_stats`` is a pure, jittable function; ``BatchNormReestimation`` is the
``tasks.Task.before_eval`` hook of the training loop (``--bn-reestimate``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

DROPOUT_FIELDS = ("dropout", "input_dropout")


def without_dropout(model):
  """``model`` with every dropout rate field of ``DROPOUT_FIELDS`` it has set to 0."""
  fields = {f.name for f in dataclasses.fields(model)}
  return model.clone(**{name: 0.0 for name in DROPOUT_FIELDS if name in fields})


def _is_bn(node) -> bool:
  return isinstance(node, Mapping) and set(node) == {"mean", "var"}


def _map_bn(fn: Callable[..., dict], *trees):
  """``fn(*bn_dicts)`` on every {"mean", "var"} dict of ``trees`` (same structure)."""
  if _is_bn(trees[0]):
    return fn(*trees)
  mapped = {k: _map_bn(fn, *(t[k] for t in trees)) for k in trees[0]}
  return mapped if type(trees[0]) is dict else type(trees[0])(mapped)  # e.g. a FrozenDict


def reestimate_batch_stats(
  apply_fn: Callable[..., Any],
  params: Any,
  batch_stats: Any,
  x: jax.Array,
  *,
  batch_size: int = 1024,
) -> Any:
  """Running statistics of every BatchNorm set to the mean and variance of its inputs over ``x``.

  ``x`` is fed through the model in training mode in consecutive batches of ``batch_size`` (the
  last one smaller), as the codes do; each BatchNorm layer's statistics become the mean and the
  biased variance of its input over all of ``x`` (combining the batches exactly: mean of the
  batch means, variance = mean of the batch variances + variance of the batch means, weighted
  by batch size). The batch statistics are read back from the model's own running-average update
  started at 0, ``(1 - momentum) batch_stat``, and ``momentum`` from a one-example probe, so any
  BatchNorm momentum works.

  Args:
    apply_fn: ``apply_fn(variables, x, train=True, mutable=["batch_stats"])``, a model without
      dropout (``without_dropout(model).apply``): the codes set dropout to 0 here.
    params: the weights x at which to estimate.
    batch_stats: the current running statistics (only their structure is used).
    x: the inputs (e.g. the training set), leading axis examples.
    batch_size: examples per forward pass (1024 in the Lua code).

  Returns:
    ``batch_stats`` of the same structure, float32 like the model's.
  """
  num = x.shape[0]
  if num < 1:
    raise ValueError("reestimate_batch_stats needs at least one example.")
  batch_size = min(batch_size, num)
  zeros = jax.tree.map(jnp.zeros_like, batch_stats)
  ones = jax.tree.map(jnp.ones_like, batch_stats)

  def updated(stats, xb):
    _, new = apply_fn(
      {"params": params, "batch_stats": stats}, xb, train=True, mutable=["batch_stats"]
    )
    return new["batch_stats"]

  # new = momentum old + (1 - momentum) batch: from old = 1 and old = 0 on one example.
  probe = x[:1]
  momentum = jax.tree.map(lambda a, b: a - b, updated(ones, probe), updated(zeros, probe))

  def batch_moments(xb):
    scaled = updated(zeros, xb)  # (1 - momentum) * batch statistics
    return jax.tree.map(lambda s, m: s / (1 - m), scaled, momentum)

  num_full, rest = divmod(num, batch_size)
  full = x[: num_full * batch_size].reshape(num_full, batch_size, *x.shape[1:])
  moments = jax.lax.map(batch_moments, full)  # leading axis: batches
  weights = jnp.full([num_full], batch_size, jnp.float32)
  if rest:
    last = batch_moments(x[num_full * batch_size :])
    moments = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), moments, last)
    weights = jnp.concatenate([weights, jnp.full([1], rest, jnp.float32)])
  weights = weights / num

  def combine(bn):
    w = weights.reshape(-1, *([1] * (bn["mean"].ndim - 1)))
    mean = jnp.sum(w * bn["mean"], axis=0)
    var = jnp.sum(w * (bn["var"] + jnp.square(bn["mean"] - mean)), axis=0)
    return {"mean": mean, "var": var}

  return _map_bn(combine, moments)


@dataclasses.dataclass(frozen=True)
class BatchNormReestimation:
  """``tasks.Task.before_eval``: the state with its BatchNorm statistics re-estimated at its
  weights on the training set (dropout off), as the authors' codes before every evaluation."""

  model: Any  # the Linen model of the run (its dropout is turned off here)
  batch_size: int = 1024

  def __call__(self, state, train_x, train_y):
    del train_y
    if state.batch_stats is None:
      return state
    stats = reestimate_batch_stats(
      without_dropout(self.model).apply,
      state.params,
      state.batch_stats,
      train_x,
      batch_size=self.batch_size,
    )
    return state.replace(
      batch_stats=jax.tree.map(lambda n, o: n.astype(o.dtype), stats, state.batch_stats)
    )
