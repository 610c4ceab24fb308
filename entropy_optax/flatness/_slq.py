"""Stochastic Lanczos quadrature (SLQ): the Hessian's smoothed eigenvalue density."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from entropy_optax._utils import canonical_key
from entropy_optax.flatness import _inputs
from entropy_optax.flatness._lanczos import import_matfree, tridiagonal
from entropy_optax.flatness._loss import LossTree


def gaussian_density(
  nodes: jax.Array, weights: jax.Array, grid: jax.Array, sigma: float
) -> jax.Array:
  r"""Gaussian-smoothed spectral density from quadrature nodes and weights.

  .. math::
    \phi_\σ(t) = \frac{1}{S} \sum_{s=1}^{S} \sum_{j=1}^{k} w_{sj}\,
      \frac{1}{\σ\sqrt{2\pi}} \exp\Big(-\frac{(t - \theta_{sj})^2}{2\σ^2}\Big)

  Args:
    nodes: ``(S, k)`` (or ``(k,)``) quadrature nodes theta.
    weights: matching weights w, each row summing to one.
    grid: points t at which to evaluate the density.
    sigma: standard deviation of the Gaussian kernel.

  Returns:
    The density at ``grid`` (integrates to one over the real line).

  Examples:
    >>> import jax.numpy as jnp
    >>> from entropy_optax import flatness
    >>> d = flatness.gaussian_density(jnp.array([0.0]), jnp.array([1.0]),
    ...                               jnp.array([0.0]), sigma=1.0)
    >>> print(f"{float(d[0]):.4f}")
    0.3989

  References:
    Ghorbani, Krishnan & Xiao, 2019. ICML 2019, Sec. 3 and App. A.
  """
  nodes = jnp.atleast_2d(jnp.asarray(nodes))
  weights = jnp.atleast_2d(jnp.asarray(weights))
  grid = jnp.asarray(grid)
  z = (grid[..., None, None] - nodes) / sigma
  kernel = jnp.exp(-0.5 * z**2) / (sigma * math.sqrt(2.0 * math.pi))
  return jnp.sum(weights * kernel, axis=(-2, -1)) / nodes.shape[0]


class SpectralDensity(NamedTuple):
  """Stochastic Lanczos quadrature of a Hessian's eigenvalue density.

  For each random probe ``s``, the spectral measure of H seen from the probe,
  ``v_s^T delta(t - H) v_s / |v_s|^2``, is replaced by a k-point Gauss
  quadrature with ``nodes[s]`` and ``weights[s]``; averaging over probes
  estimates ``(1/n) sum_i delta(t - lambda_i)``. Moments are exact per probe
  up to degree ``2k - 1``: ``sum_j weights[s, j] * nodes[s, j]**p ==
  v_s^T H^p v_s / |v_s|^2``, an unbiased estimate of ``tr(H^p) / n``.

  Attributes:
    nodes: ``(num_samples, k)`` Ritz values, ascending per row.
    weights: ``(num_samples, k)`` weights, each row summing to one.
    num_params: ``n``, the dimension of H (to turn densities into counts).
  """

  nodes: jax.Array
  weights: jax.Array
  num_params: int

  def density(self, grid: jax.Array, sigma: float | None = None) -> jax.Array:
    """The Gaussian-smoothed density on ``grid`` (see `gaussian_density`).

    Args:
      grid: points at which to evaluate it.
      sigma: kernel width; default 1% of the span of the nodes (Ghorbani et
        al. use ``sigma**2 = 1e-5`` after rescaling the spectrum to [-1, 1],
        i.e. ~0.3% of the span; widen it for fewer probes).

    Returns:
      The density at ``grid``; multiply by ``num_params`` for eigenvalue
      counts per unit eigenvalue.
    """
    if sigma is None:
      span = float(jnp.max(self.nodes) - jnp.min(self.nodes))
      sigma = 0.01 * span if span > 0 else 1e-3
    return gaussian_density(self.nodes, self.weights, grid, sigma)

  def moment(self, power: int) -> jax.Array:
    """Estimate of ``tr(H**power) / n``: mean over probes of sum w theta^p."""
    return jnp.mean(jnp.sum(self.weights * self.nodes**power, axis=-1))


@functools.partial(jax.jit, static_argnames=("num_batches", "num_iters"))
def _slq(loss_fn, params, batches, num_batches, num_iters, keys):
  x, _ = _inputs.flat_params(params)

  def one_probe(key):
    v0 = jax.random.rademacher(key, x.shape, x.dtype)
    nodes, vectors = jnp.linalg.eigh(
      tridiagonal(loss_fn, params, batches, num_batches, num_iters, v0)
    )
    # Gauss quadrature weights: squared first components of T's eigenvectors
    # (Golub & Welsch, 1969).
    return nodes, vectors[0, :] ** 2

  # Probes one after another: each holds an n x k Lanczos basis.
  return jax.lax.map(one_probe, keys)


def spectral_density(
  loss_fn: _inputs.LossFn,
  params,
  batches,
  *,
  num_iters: int,
  num_samples: int,
  key: jax.Array | int,
) -> SpectralDensity:
  r"""Hessian eigenvalue density by stochastic Lanczos quadrature (SLQ).

  For probes ``v_s`` with i.i.d. Rademacher entries, ``s = 1..S``, run ``k``
  Lanczos steps (full reorthogonalisation) on ``v -> H v`` from ``v_s``; the
  eigen-decomposition ``T_s = U diag(theta) U^T`` of the tridiagonal matrix
  gives the Gauss quadrature

  .. math::
    \frac{v_s^T g(H) v_s}{v_s^T v_s} \approx \sum_{j=1}^{k} w_{sj}\, g(\theta_{sj}),
    \qquad w_{sj} = U_{1j}^2,

  exact for polynomials g of degree up to ``2k - 1``. Since
  ``E[v v^T] = I``, the average over probes estimates
  ``(1/n) tr g(H) = (1/n) sum_i g(lambda_i)``, i.e. the density
  ``(1/n) sum_i delta(t - lambda_i)``; with Gaussian g it is the smoothed
  density of Ghorbani et al. (2019). Resolves the bulk and the outliers of
  the spectrum, not individual small eigenvalues: the mass near zero shows
  as a peak of total weight ~ the fraction of near-zero eigenvalues.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``, the mean loss of one batch.
    params: the parameters (any pytree) at which H is taken.
    batches: a list of batches, or a stacked pytree (leading axis = batch).
    num_iters: Lanczos steps per probe, ``k`` (clipped to n); Ghorbani et al.
      used 90.
    num_samples: number of probes ``S``; Ghorbani et al. found a handful
      (~10) enough at n in the millions.
    key: PRNG key (or int seed) for the probes.

  Returns:
    A `SpectralDensity` with ``nodes`` and ``weights`` of shape
    ``(num_samples, k)``; ``.density(grid, sigma)`` evaluates the smoothed
    density and ``.moment(p)`` estimates ``tr(H^p)/n``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from entropy_optax import flatness
    >>> lam = jnp.linspace(0.0, 1.0, 40)
    >>> loss = lambda p, _: 0.5 * jnp.sum(lam * p ** 2)
    >>> sd = flatness.spectral_density(loss, jnp.zeros(40), [None],
    ...                                num_iters=10, num_samples=4, key=0)
    >>> sd.nodes.shape
    (4, 10)
    >>> print(f"{sd.moment(0):.3f} {sd.moment(1):.3f}")  # 1 and mean(lam)
    1.000 0.500

  References:
    Ghorbani, Krishnan & Xiao, 2019. An Investigation into Neural Net
    Optimization via Hessian Eigenvalue Density. ICML 2019.
    Golub & Welsch, 1969. Calculation of Gauss quadrature rules. Math. Comp.
    Chaudhari et al., 2017. Entropy-SGD, ICLR 2017, Sec. 5.1 (the quantity).
  """
  stacked, num_batches = _inputs.stack_batches(batches)
  import_matfree("spectral_density")
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
  num_iters = _inputs.num_lanczos_iters(num_iters, params)
  keys = jax.random.split(canonical_key(key), num_samples)
  nodes, weights = _inputs.finished(
    _slq(LossTree.of(loss_fn), params, stacked, num_batches, num_iters, keys)
  )
  return SpectralDensity(nodes=nodes, weights=weights, num_params=_inputs.num_params(params))
