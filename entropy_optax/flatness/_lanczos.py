"""The Lanczos method on the Hessian: the tridiagonal matrix, and the extreme eigenvalues."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from entropy_optax._utils import canonical_key
from entropy_optax.flatness import _inputs
from entropy_optax.flatness._hvp import mean_hvp
from entropy_optax.flatness._loss import LossTree

_MATFREE_HINT = (
  "{what} needs the optional dependency 'matfree'. Install it with "
  "`pip install entropy_optax[flatness]` (or `pip install matfree`)."
)


def import_matfree(what: str):
  """matfree's ``decomp`` module, or an ImportError that names the extra to install."""
  try:
    from matfree import decomp
  except ImportError as e:
    raise ImportError(_MATFREE_HINT.format(what=what)) from e
  return decomp


def tridiagonal(loss_fn, params, batches, num_batches, num_iters, v0):
  """Lanczos tridiagonal matrix T (num_iters^2) of H from start vector v0 (traced)."""
  decomp = import_matfree("Lanczos")
  # Full reorthogonalisation: without it, Ritz values of well-separated
  # outliers repeat ("ghosts") and SLQ weights are wrong; its O(n k) memory
  # per step is small next to an HVP.
  tridiag = decomp.tridiag_sym(num_iters, materialize=True, reortho="full", custom_vjp=False)

  def matvec(v, p, b):
    return mean_hvp(loss_fn, p, b, num_batches, v)

  return _decouple_after_breakdown(tridiag(matvec, v0, params, batches).J_small)


def _decouple_after_breakdown(t: jax.Array) -> jax.Array:
  """T with everything after its first negligible off-diagonal entry decoupled.

  When the Krylov space of ``v0`` is exhausted (a Hessian of low rank, or ``k`` near ``n``),
  the next off-diagonal entry is rounding noise, and the steps after it, built on that noise,
  give Ritz values outside the spectrum (e.g. +-315 for a Hessian within [-1.2, 2.3]). The
  leading block's eigenvalues are then exact; the later diagonal entries are set to ``T[0, 0]``
  (a Rayleigh quotient, inside the spectrum) with no coupling, so they move neither extreme nor
  carry quadrature weight (their eigenvectors have no first component).
  """
  if t.shape[0] == 1:
    return t
  diag, offdiag = jnp.diagonal(t), jnp.diagonal(t, 1)
  # The scale of H seen before each off-diagonal entry: entries before a breakdown are genuine.
  seen_diag = jax.lax.cummax(jnp.abs(diag[:-1]))
  seen_offdiag = jnp.concatenate([jnp.zeros(1, t.dtype), jax.lax.cummax(jnp.abs(offdiag))[:-1]])
  scale = jnp.maximum(seen_diag, seen_offdiag)
  # NaN counts too: when the first residual is exactly zero (H v0 parallel to v0, or H = 0 on a
  # block of a saturated loss), the next entries are 0/0.
  negligible = ~(jnp.abs(offdiag) > 100 * jnp.finfo(t.dtype).eps * scale)
  broken = jnp.cumsum(negligible) > 0  # at and after the first negligible entry
  offdiag = jnp.where(broken, 0.0, offdiag)
  after = jnp.concatenate([jnp.zeros(1, bool), broken])
  diag = jnp.where(after, diag[0], diag)
  return jnp.diag(diag) + jnp.diag(offdiag, 1) + jnp.diag(offdiag, -1)


@functools.partial(jax.jit, static_argnames=("num_batches", "num_iters"))
def _lanczos_ritz_values(loss_fn, params, batches, num_batches, num_iters, key):
  x, _ = _inputs.flat_params(params)
  v0 = jax.random.normal(key, x.shape, x.dtype)
  return jnp.linalg.eigvalsh(tridiagonal(loss_fn, params, batches, num_batches, num_iters, v0))


class Extremes(NamedTuple):
  """Extreme eigenvalues of a Hessian.

  Attributes:
    largest: the largest (most positive) eigenvalue estimate.
    smallest: the smallest (most negative) eigenvalue estimate.
  """

  largest: jax.Array
  smallest: jax.Array


def lanczos_extremes(
  loss_fn: _inputs.LossFn,
  params,
  batches,
  *,
  num_iters: int = 100,
  key: jax.Array | int,
) -> Extremes:
  r"""Largest and most negative Hessian eigenvalues by the Lanczos method.

  Runs ``k = min(num_iters, n)`` Lanczos steps, with full
  reorthogonalisation, on the operator ``v -> H v`` (see `hvp`) from a
  Gaussian start vector, giving ``H Q = Q T + r e_k^T`` with ``T`` tridiagonal
  ``k x k``. The extreme eigenvalues of ``T`` (Ritz values) converge to
  ``lambda_max(H)`` and ``lambda_min(H)`` fastest of all: the error shrinks
  geometrically with the gap to the next eigenvalue, and a Ritz value never
  overshoots (``lambda_min <= smallest <= largest <= lambda_max``). At a
  minimum like the paper's, the bottom of the spectrum is a dense cluster
  near zero with small negative outliers: ``smallest`` then converges slowly
  and is an upper bound on ``lambda_min`` until ``num_iters`` is large; check
  by doubling it. When the Krylov space of the start vector runs out before
  ``k`` steps (a Hessian of low rank, or ``k`` near ``n``), the steps after
  that point are dropped: the Ritz values are then exact eigenvalues. Cost:
  ``k`` HVPs (each about two gradients per batch) and ``k n`` floats for the
  reorthogonalised basis.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``, the mean loss of one batch.
    params: the parameters (any pytree) at which H is taken.
    batches: a list of batches, or a stacked pytree (leading axis = batch).
    num_iters: Lanczos steps = Hessian-vector products; 50-100 is usually
      plenty for the two extremes.
    key: PRNG key (or int seed) for the start vector.

  Returns:
    ``Extremes(largest, smallest)``, scalars.

  Examples:
    >>> import jax.numpy as jnp
    >>> from entropy_optax import flatness
    >>> lam = jnp.linspace(-1.0, 4.0, 30)
    >>> loss = lambda p, _: 0.5 * jnp.sum(lam * p ** 2)
    >>> ext = flatness.lanczos_extremes(loss, jnp.zeros(30), [None],
    ...                                 num_iters=20, key=0)
    >>> print(f"{ext.largest:.3f} {ext.smallest:.3f}")
    4.000 -1.000

  References:
    Lanczos, 1950. An iteration method for the solution of the eigenvalue
    problem of linear differential and integral operators. J. Res. NBS 45(4).
    Chaudhari et al., 2017. Entropy-SGD, ICLR 2017, Sec. 5.1 (the quantity).
  """
  stacked, num_batches = _inputs.stack_batches(batches)
  import_matfree("lanczos_extremes")
  num_iters = _inputs.num_lanczos_iters(num_iters, params)
  ritz = _inputs.finished(
    _lanczos_ritz_values(
      LossTree.of(loss_fn), params, stacked, num_batches, num_iters, canonical_key(key)
    )
  )
  return Extremes(largest=ritz[-1], smallest=ritz[0])
