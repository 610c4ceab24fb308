"""BatchNorm running statistics re-estimated at the current weights, for Linen and NNX models.

An Entropy-SGD step costs L gradient evaluations but updates the running statistics once (from
the caller's pass at x on mini-batch 0), so at equal gradient evaluations they get L times fewer
running-average updates than with SGD, and lag behind the weights (see docs/model_state.md).
Both of the authors' codes re-estimate them at the kept weights x before every evaluation, with
dropout off and the model in training mode. Here the statistics are set to the exact mean and
(biased) variance of each BatchNorm layer's inputs over the given examples, combining batches
exactly, instead of the codes' running average over the batches (which weights the last most).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# updated(stats, batch) -> the statistics after one running-average update from ``batch``.
UpdateFn = Callable[[Any, Any], Any]


def _is_bn(node: Any) -> bool:
  return isinstance(node, Mapping) and set(node) == {"mean", "var"}


def _map_bn(fn: Callable[..., dict], *trees: Any) -> Any:
  """``fn(*bn_dicts)`` on every {"mean", "var"} mapping of ``trees`` (same structure), keeping
  the mappings' types (dict, FrozenDict, ``nnx.State``)."""
  if _is_bn(trees[0]):
    mapped = fn(*trees)
  else:
    mapped = {k: _map_bn(fn, *(t[k] for t in trees)) for k in trees[0]}
  return mapped if type(trees[0]) is dict else type(trees[0])(mapped)  # e.g. a FrozenDict


def _num_examples(inputs: Any) -> int:
  sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(inputs)}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(
      "inputs must be arrays (or a pytree of arrays, e.g. {'image': ..., 'label': ...}) with "
      f"the examples on a common leading axis; got leading sizes {sorted(map(str, sizes))}."
    )
  num = sizes.pop()
  if num < 1:
    raise ValueError("re-estimating BatchNorm statistics needs at least one example.")
  return num


def exact_moments(updated: UpdateFn, batch_stats: Any, inputs: Any, batch_size: int) -> Any:
  """Each layer's mean and biased variance of its inputs over all of ``inputs``.

  ``inputs`` go through ``updated`` in consecutive batches of ``batch_size`` (the last one
  smaller). The batch moments are read back from the running-average update started at 0,
  ``(1 - momentum) batch_moment``, with ``momentum`` probed on one example (started at 1 and
  at 0), so any BatchNorm momentum works; batches are combined exactly (mean of the batch means,
  variance = mean of the batch variances + variance of the batch means, weighted by size).
  """
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
  num = _num_examples(inputs)
  batch_size = min(batch_size, num)
  zeros = jax.tree.map(jnp.zeros_like, batch_stats)
  ones = jax.tree.map(jnp.ones_like, batch_stats)
  take = lambda start, stop: jax.tree.map(lambda a: a[start:stop], inputs)
  probe = take(0, 1)
  momentum = jax.tree.map(lambda a, b: a - b, updated(ones, probe), updated(zeros, probe))

  def batch_moments(batch):
    scaled = updated(zeros, batch)  # (1 - momentum) * batch moments
    return jax.tree.map(lambda s, m: s / (1 - m), scaled, momentum)

  num_full, rest = divmod(num, batch_size)
  full = jax.tree.map(
    lambda a: a[: num_full * batch_size].reshape(num_full, batch_size, *a.shape[1:]), inputs
  )
  moments = jax.lax.map(batch_moments, full)  # leading axis: batches
  weights = jnp.full([num_full], batch_size, jnp.float32)
  if rest:
    last = batch_moments(take(num_full * batch_size, num))
    moments = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), moments, last)
    weights = jnp.concatenate([weights, jnp.full([1], rest, jnp.float32)])
  weights = weights / num

  def combine(bn):
    w = weights.reshape(-1, *([1] * (bn["mean"].ndim - 1)))
    mean = jnp.sum(w * bn["mean"], axis=0)
    var = jnp.sum(w * (bn["var"] + jnp.square(bn["mean"] - mean)), axis=0)
    return {"mean": mean, "var": var}

  return _map_bn(combine, moments)


def reestimate_batch_stats(
  apply_fn: Callable[..., Any],
  params: Any,
  batch_stats: Any,
  inputs: Any,
  *,
  batch_size: int = 1024,
) -> Any:
  """BatchNorm running statistics of a Linen model re-estimated at ``params`` over ``inputs``.

  Every BatchNorm layer's ``mean`` and ``var`` become the mean and the biased variance of that
  layer's input over all of ``inputs``, fed through the model in training mode in batches of
  ``batch_size`` (each layer sees its predecessors normalised with the batch's statistics, as
  in training). Call it before evaluating an Entropy-SGD model: an update spends L gradient
  evaluations but moves the running averages once, so they lag behind the weights. The authors'
  codes do the same before every evaluation (dropout off); the NNX version is
  :func:`entropy_optax.flax.nnx_reestimate_batch_stats`. Pure and jittable.

  Args:
    apply_fn: ``apply_fn(variables, batch, mutable=["batch_stats"])`` runs the model in
      training mode without dropout and returns ``(outputs, {"batch_stats": ...})``, e.g.
      ``functools.partial(model.apply, train=True)`` for a model without dropout.
    params: the weights at which to estimate (the optimizer's x, e.g. ``state.params``).
    batch_stats: the current running statistics (only their structure is used).
    inputs: the examples to feed (e.g. a few thousand training images), an array or a pytree of
      arrays with the examples on the leading axis, as ``apply_fn`` takes a batch.
    batch_size: examples per forward pass (the last batch may be smaller).

  Returns:
    Statistics with the structure and dtypes of ``batch_stats``.

  Examples:
    >>> import functools, jax, jax.numpy as jnp, flax.linen as nn
    >>> from entropy_optax.flax import reestimate_batch_stats
    >>> model = nn.BatchNorm(use_running_average=False, momentum=0.99)
    >>> x = jnp.arange(12.0).reshape(6, 2)
    >>> variables = model.init(jax.random.key(0), x)
    >>> stats = reestimate_batch_stats(
    ...     model.apply, variables["params"], variables["batch_stats"], x, batch_size=4)
    >>> [[round(float(v), 3) for v in stats[m]] for m in ("mean", "var")]  # x's column moments
    [[5.0, 6.0], [11.667, 11.667]]
  """

  def updated(stats, batch):
    _, new = apply_fn({"params": params, "batch_stats": stats}, batch, mutable=["batch_stats"])
    return new["batch_stats"]

  stats = exact_moments(updated, batch_stats, inputs, batch_size)
  return jax.tree.map(lambda new, old: new.astype(jnp.result_type(old)), stats, batch_stats)


@functools.partial(jax.jit, static_argnames=("graphdef", "forward", "batch_size"))
def _nnx_moments(graphdef, stats, rest, inputs, *, forward, batch_size):
  """``exact_moments`` of an NNX model's ``nnx.BatchStat`` (a pure state), as a pure dict."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  def updated(pure_dict, batch):
    state = jax.tree.map(lambda a: a, stats)  # a fresh State to fill in
    nnx.replace_by_pure_dict(state, pure_dict)
    model = nnx.merge(graphdef, state, rest)
    forward(model, batch)
    return nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

  return exact_moments(updated, nnx.to_pure_dict(stats), inputs, batch_size)


def nnx_reestimate_batch_stats(
  model: Any,
  inputs: Any,
  *,
  forward: Callable[[Any, Any], Any] | None = None,
  batch_size: int = 1024,
) -> None:
  """Sets an NNX model's BatchNorm running statistics to their values at its weights, in place.

  Every ``nnx.BatchNorm``'s ``mean`` and ``var`` become the mean and the biased variance of its
  input over all of ``inputs``, fed in batches of ``batch_size`` through a view of the model with
  BatchNorm in training mode and dropout off (``nnx.view(model, use_running_average=False,
  deterministic=True)``). Call it before evaluating an Entropy-SGD model: an update spends L
  gradient evaluations but moves the running averages once. The weights, RNG states and the
  model's own mode are unchanged; the Linen version is
  :func:`entropy_optax.flax.reestimate_batch_stats`.

  Args:
    model: the ``nnx.Module`` (or a view of it, e.g. the tutorials' ``eval_model``: views share
      the statistics).
    inputs: the examples to feed (e.g. a few thousand training images), an array or a pytree of
      arrays with the examples on the leading axis, as ``forward`` takes a batch.
    forward: ``forward(model, batch)`` runs the model on a batch (its output is ignored), e.g.
      ``lambda model, x: model(x, None)`` for a model that takes call-time ``rngs``, or the
      training loss for dict batches; default ``model(batch)``. The compiled pass is reused
      for the same model structure, shapes and ``forward`` (a lambda without free variables
      written inline counts as the same ``forward`` at every call).
    batch_size: examples per forward pass (the last batch may be smaller).

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from entropy_optax.flax import nnx_reestimate_batch_stats
    >>> model = nnx.BatchNorm(2, momentum=0.99, rngs=nnx.Rngs(0))
    >>> nnx_reestimate_batch_stats(model, jnp.arange(12.0).reshape(6, 2), batch_size=4)
    >>> [[round(float(v), 3) for v in s[...]] for s in (model.mean, model.var)]  # column moments
    [[5.0, 6.0], [11.667, 11.667]]
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top

  view = nnx.view(model, use_running_average=False, deterministic=True, raise_if_not_found=False)
  graphdef, stats, rest = nnx.split(view, nnx.BatchStat, ...)
  if not jax.tree.leaves(stats):
    return  # no BatchNorm: nothing to re-estimate
  stats = nnx.as_pure(stats)
  new = _nnx_moments(
    graphdef,
    stats,
    nnx.as_pure(rest),
    inputs,
    forward=_Forward(forward or _call),
    batch_size=batch_size,
  )
  old = nnx.to_pure_dict(stats)
  nnx.replace_by_pure_dict(stats, jax.tree.map(lambda n, o: n.astype(o.dtype), new, old))
  nnx.update(model, stats)


def _call(model: Any, batch: Any) -> Any:
  return model(batch)


class _Forward:
  """``forward`` as a static jit argument. Two closure-free functions with the same code and
  defaults compare equal, so a lambda written inline at every evaluation (a new object each
  time) reuses the compiled pass instead of compiling it again."""

  def __init__(self, fn: Callable[[Any, Any], Any]):
    self.fn = fn
    code = getattr(fn, "__code__", None)
    key = (code, getattr(fn, "__defaults__", None)) if code is not None else None
    try:
      hash(key)
    except TypeError:
      key = None
    self.key = key if key is not None and fn.__closure__ is None else fn

  def __call__(self, model: Any, batch: Any) -> Any:
    return self.fn(model, batch)

  def __hash__(self) -> int:
    return hash(self.key)

  def __eq__(self, other: object) -> bool:
    return isinstance(other, _Forward) and self.key == other.key
