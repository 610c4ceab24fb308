"""Hessian-vector products of the batch-averaged loss, by forward-over-reverse."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from entropy_optax import _unroll
from entropy_optax.flatness import _inputs
from entropy_optax.flatness._loss import LossTree


def mean_hvp(loss_fn, params, batches, num_batches: int, v: jax.Array) -> jax.Array:
  """(1/B) sum_b H_b v by forward-over-reverse, one batch at a time (traced).

  On XLA:CPU a loss that convolves is differentiated outside any XLA loop: the sum over batches,
  and the Lanczos, SLQ and Hutchinson loops around it, call back to the host, which runs one
  loop-free compiled program per batch. Inside a loop the CPU runtime misses its fast
  convolution paths (a LeNet's HVP over 1000 images: 1.3 s loop-free, 5 s in a loop).
  """
  first = jax.tree.map(lambda a: a[0], batches)
  if _unroll.convolves_on_cpu(lambda: loss_fn(params, first)):
    return _host_mean_hvp(loss_fn, params, batches, num_batches, v)
  x, unravel = _inputs.flat_params(params)

  def accumulate(total, batch):
    return total + _batch_hvp(loss_fn, x, unravel, batch, v), None

  total, _ = jax.lax.scan(accumulate, jnp.zeros_like(x), batches, length=num_batches)
  return total / num_batches


def _batch_hvp(loss_fn, x, unravel, batch, v):
  """H_b v of one batch at the flat parameters ``x`` (traced)."""

  def flat_grad(y):
    return jax.grad(lambda z: loss_fn(unravel(z), batch))(y)

  return jax.jvp(flat_grad, (x,), (v.astype(x.dtype),))[1]


@jax.jit
def _batch_hvps_jit(loss_fn, params, batch, vs):
  """H_b v for each row v of ``vs``, one batch: a loop-free program (a vmap, not a loop)."""
  x, unravel = _inputs.flat_params(params)
  return jax.vmap(lambda v: _batch_hvp(loss_fn, x, unravel, batch, v))(vs)


def _host_mean_hvp(loss_fn, params, batches, num_batches, v):
  """``mean_hvp`` as a host callback: each batch's H_b v a loop-free program (traced).

  Under ``jax.vmap`` (the dense path's chunks of columns) the callback gets the vectors with
  leading axes (``vmap_method="expand_dims"``: the unbatched operands with axes of size 1) and
  computes them together, as the in-loop path would; operands batched beyond ``v`` (a vmap over
  the parameters) are computed one element at a time.
  """
  leaves, treedef = jax.tree.flatten((loss_fn, params, batches))
  x, _ = _inputs.flat_params(params)

  def mean_over_batches(host_leaves, vs):
    loss_host, params_host, batches_host = jax.tree.unflatten(treedef, host_leaves)
    total = 0.0
    for b in range(num_batches):
      # NumPy indexing: no JAX operation of its own on the callback's thread.
      batch = jax.tree.map(lambda a, b=b: np.asarray(a)[b], batches_host)
      total = total + _batch_hvps_jit(loss_host, params_host, batch, vs)
    return np.asarray(total / num_batches, x.dtype)

  def on_host(v_host, *host_leaves):
    extra = v_host.ndim - 1  # leading axes added by vmap
    lead = np.broadcast_shapes(v_host.shape[:extra], *(np.shape(a)[:extra] for a in host_leaves))
    vs = np.broadcast_to(v_host, (*lead, x.size)).reshape(-1, x.size)
    if all(np.shape(a)[:extra] == (1,) * extra for a in host_leaves):
      shared = [np.reshape(a, np.shape(a)[extra:]) for a in host_leaves]
      return mean_over_batches(shared, vs).reshape(*lead, x.size)
    each = [
      np.broadcast_to(a, (*lead, *np.shape(a)[extra:])).reshape(-1, *np.shape(a)[extra:])
      for a in host_leaves
    ]
    rows = [mean_over_batches([a[i] for a in each], vs[i : i + 1])[0] for i in range(len(vs))]
    return np.stack(rows).reshape(*lead, x.size)

  out = jax.ShapeDtypeStruct(x.shape, x.dtype)
  return jax.pure_callback(on_host, out, v.astype(x.dtype), *leaves, vmap_method="expand_dims")


_mean_hvp_jit = jax.jit(mean_hvp, static_argnames="num_batches")


def hvp(loss_fn: _inputs.LossFn, params, batches) -> Callable[[jax.Array], jax.Array]:
  r"""Hessian-vector products of the batch-averaged loss, on flat vectors.

  .. math::
    v \mapsto H v = \frac{1}{B} \sum_{b=1}^{B} \nabla^2 f(x; \xi_b)\, v,

  computed by forward-over-reverse differentiation (``jax.jvp`` of
  ``jax.grad``; Pearlmutter, 1994) at the cost of about two gradients per
  batch, without forming H. Vectors live in the flat parameter space of
  ``jax.flatten_util.ravel_pytree(params)``. On XLA:CPU a loss that convolves
  is differentiated one batch at a time by a loop-free program called through
  ``jax.pure_callback`` (see `entropy_optax.flatness`).

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
