"""Hessian-vector products of the batch-averaged loss, by forward-over-reverse."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from entropy_optax.flatness import _inputs
from entropy_optax.flatness._loss import LossTree


def mean_hvp(loss_fn, params, batches, num_batches: int, v: jax.Array) -> jax.Array:
  """(1/B) sum_b H_b v by forward-over-reverse, one batch at a time (traced)."""
  x, unravel = _inputs.flat_params(params)

  def flat_grad(x_, batch):
    return jax.grad(lambda y: loss_fn(unravel(y), batch))(x_)

  def accumulate(total, batch):
    _, hv = jax.jvp(lambda y: flat_grad(y, batch), (x,), (v.astype(x.dtype),))
    return total + hv, None

  total, _ = jax.lax.scan(accumulate, jnp.zeros_like(x), batches, length=num_batches)
  return total / num_batches


_mean_hvp_jit = jax.jit(mean_hvp, static_argnames="num_batches")


def hvp(loss_fn: _inputs.LossFn, params, batches) -> Callable[[jax.Array], jax.Array]:
  r"""Hessian-vector products of the batch-averaged loss, on flat vectors.

  .. math::
    v \mapsto H v = \frac{1}{B} \sum_{b=1}^{B} \nabla^2 f(x; \xi_b)\, v,

  computed by forward-over-reverse differentiation (``jax.jvp`` of
  ``jax.grad``; Pearlmutter, 1994) at the cost of about two gradients per
  batch, without forming H. Vectors live in the flat parameter space of
  ``jax.flatten_util.ravel_pytree(params)``.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``, the mean loss of one batch.
      The arrays it closes over are traced, so closures over other arrays of
      the same shapes reuse one compilation (see `entropy_optax.flatness`).
    params: the parameters (any pytree) at which H is taken.
    batches: a list of batches, or a stacked pytree (leading axis = batch).

  Returns:
    A jitted function ``matvec(v) -> H v`` of flat vectors of length
    ``n = ravel_pytree(params)[0].size`` (dtype at least float32).

  Examples:
    >>> import jax.numpy as jnp
    >>> from entropy_optax import flatness
    >>> loss = lambda p, scale: 0.5 * scale * jnp.sum(p["w"] ** 2)
    >>> matvec = flatness.hvp(loss, {"w": jnp.ones(3)}, [1.0, 3.0])
    >>> matvec(jnp.array([1.0, 0.0, -1.0]))
    Array([ 2.,  0., -2.], dtype=float32)

  References:
    Pearlmutter, 1994. Fast exact multiplication by the Hessian. Neural
    Computation 6(1).
  """
  stacked, num_batches = _inputs.stack_batches(batches)
  _inputs.flat_params(params)  # Fail early on empty params.
  return functools.partial(_mean_hvp_jit, LossTree.of(loss_fn), params, stacked, num_batches)
