"""Hutchinson's estimate of the Hessian trace, with its standard error."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from entropy_optax._utils import canonical_key
from entropy_optax.flatness import _inputs
from entropy_optax.flatness._hvp import mean_hvp
from entropy_optax.flatness._loss import LossTree


class TraceEstimate(NamedTuple):
  """A Monte Carlo trace estimate.

  Attributes:
    estimate: the mean of the per-probe estimates ``z^T H z``.
    stderr: its standard error, ``std(ddof=1) / sqrt(num_samples)``.
  """

  estimate: jax.Array
  stderr: jax.Array


@functools.partial(jax.jit, static_argnames="num_batches")
def _hutchinson_samples(loss_fn, params, batches, num_batches, keys):
  x, _ = _inputs.flat_params(params)

  def one_probe(key):
    z = jax.random.rademacher(key, x.shape, x.dtype)
    return jnp.vdot(z, mean_hvp(loss_fn, params, batches, num_batches, z))

  return jax.lax.map(one_probe, keys)


def hutchinson_trace(
  loss_fn: _inputs.LossFn,
  params,
  batches,
  *,
  num_samples: int,
  key: jax.Array | int,
) -> TraceEstimate:
  r"""Hutchinson's estimate of the Hessian trace, with its standard error.

  .. math::
    \operatorname{tr} H \approx \frac{1}{S} \sum_{s=1}^{S} z_s^T H z_s,
    \qquad z_s \in \{-1, +1\}^n \text{ i.i.d. Rademacher},

  unbiased because ``E[z z^T] = I``; one probe's variance is
  ``2 sum_{i != j} H_ij^2`` (the diagonal adds none), the smallest of any
  i.i.d. probe distribution. ``tr H / n`` is the mean eigenvalue, a one-number
  sharpness summary.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``, the mean loss of one batch.
    params: the parameters (any pytree) at which H is taken.
    batches: a list of batches, or a stacked pytree (leading axis = batch).
    num_samples: number of probes ``S`` (>= 2 for a standard error); each
      costs one HVP per batch.
    key: PRNG key (or int seed) for the probes.

  Returns:
    ``TraceEstimate(estimate, stderr)``; stderr is the sample standard
    deviation of ``z^T H z`` over ``sqrt(num_samples)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from entropy_optax import flatness
    >>> loss = lambda p, _: 0.5 * jnp.sum(jnp.arange(5.0) * p ** 2)
    >>> est = flatness.hutchinson_trace(loss, jnp.zeros(5), [None],
    ...                                 num_samples=8, key=0)
    >>> print(f"{est.estimate:.1f} +- {est.stderr:.1f}")  # diagonal: exact
    10.0 +- 0.0

  References:
    Hutchinson, 1990. A stochastic estimator of the trace of the influence
    matrix for Laplacian smoothing splines. Comm. Stat. Sim. Comp. 19(2).
    Avron & Toledo, 2011. Randomized algorithms for estimating the trace of
    an implicit symmetric positive semi-definite matrix. J. ACM 58(2).
  """
  if num_samples < 2:
    raise ValueError(f"num_samples must be >= 2 to give a standard error, got {num_samples}.")
  stacked, num_batches = _inputs.stack_batches(batches)
  keys = jax.random.split(canonical_key(key), num_samples)
  samples = _inputs.finished(
    _hutchinson_samples(LossTree.of(loss_fn), params, stacked, num_batches, keys)
  )
  return TraceEstimate(
    estimate=jnp.mean(samples),
    stderr=jnp.std(samples, ddof=1) / math.sqrt(num_samples),
  )
