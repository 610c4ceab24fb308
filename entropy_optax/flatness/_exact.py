"""The exact Hessian spectrum: the dense matrix from Hessian-vector products, then eigvalsh."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from entropy_optax.flatness import _inputs
from entropy_optax.flatness._hvp import mean_hvp
from entropy_optax.flatness._loss import LossTree


@functools.partial(jax.jit, static_argnames=("num_batches", "chunk_size"))
def _dense_hessian_eigenvalues(loss_fn, params, batches, num_batches, chunk_size):
  x, _ = _inputs.flat_params(params)
  n = x.size

  def column(i):
    basis_vector = jax.nn.one_hot(i, n, dtype=x.dtype)
    return mean_hvp(loss_fn, params, batches, num_batches, basis_vector)

  # Columns in chunks: the n x n result is unavoidable, n x n x activations
  # (what one vmap over all n basis vectors would hold) is not.
  hessian = jax.lax.map(column, jnp.arange(n), batch_size=min(chunk_size, n))
  hessian = 0.5 * (hessian + hessian.T)  # Rounding breaks exact symmetry.
  return jnp.linalg.eigvalsh(hessian)


def hessian_eigenvalues(
  loss_fn: _inputs.LossFn,
  params,
  batches,
  *,
  max_params: int = 50_000,
  chunk_size: int = 64,
) -> jax.Array:
  r"""All eigenvalues of the exact Hessian of the batch-averaged loss.

  Builds the dense matrix

  .. math::
    H = \frac{1}{B} \sum_{b=1}^{B} \nabla^2_x f(x; \xi_b) \in \mathbb{R}^{n \times n}

  column by column from Hessian-vector products with the basis vectors
  (forward-over-reverse, ``chunk_size`` columns at a time), symmetrises it and
  returns ``jnp.linalg.eigvalsh(H)``. This is what the paper did for its
  networks of ~50k weights (Fig. 1, Fig. 3a-b). Memory is ``n**2`` floats
  (10 GB in float32 at n = 50,000) and time ``O(n**3)``; above
  ``max_params`` use the matrix-free `lanczos_extremes` / `spectral_density`.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``, the mean loss of one batch;
      the arrays it closes over are traced (one compilation per code and shapes).
    params: the parameters (any pytree) at which H is taken.
    batches: a list of batches, or a stacked pytree (leading axis = batch).
    max_params: refuse models with more parameters than this.
    chunk_size: Hessian columns computed together (one vmapped HVP).

  Returns:
    The ``n`` eigenvalues in ascending order (dtype at least float32).

  Raises:
    ValueError: if the model has more than ``max_params`` parameters.

  Examples:
    >>> import jax.numpy as jnp
    >>> from entropy_optax import flatness
    >>> loss = lambda p, _: p["a"] ** 2 + 3.0 * p["b"] ** 2 + p["a"] * p["b"]
    >>> ev = flatness.hessian_eigenvalues(loss, {"a": 1.0, "b": 2.0}, [None])
    >>> print(*(f"{v:.4f}" for v in ev))  # of [[2, 1], [1, 6]]: 4 -+ sqrt(5)
    1.7639 6.2361

  References:
    Chaudhari et al., 2017. Entropy-SGD: Biasing Gradient Descent Into Wide
    Valleys. ICLR 2017, Sec. 5.1.
  """
  num_params = _inputs.num_params(params)
  if num_params > max_params:
    raise ValueError(
      f"The model has {num_params:,} parameters, more than max_params="
      f"{max_params:,}: the dense Hessian would take {num_params**2:,} "
      "floats and O(n^3) time to diagonalise. Use the matrix-free Lanczos "
      "path instead: `lanczos_extremes(...)` for the largest and most "
      "negative eigenvalues, `spectral_density(...)` for the whole "
      "spectrum (stochastic Lanczos quadrature), `hutchinson_trace(...)` "
      "for the trace; or raise `max_params` if you have the memory."
    )
  stacked, num_batches = _inputs.stack_batches(batches)
  return _inputs.finished(
    _dense_hessian_eigenvalues(LossTree.of(loss_fn), params, stacked, num_batches, chunk_size)
  )
