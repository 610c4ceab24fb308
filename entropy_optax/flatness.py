"""Flatness diagnostics: the Hessian eigenspectrum at a solution.

Sec. 5.1 of the Entropy-SGD paper measures how flat the minima found by an
optimizer are: the exact Hessian eigenspectrum for networks of ~50k weights
(Figs. 1 and 3: ~94% of the eigenvalues have |lambda| < 1e-4, a long positive
tail, a short negative one) and, for a 1.6M-weight All-CNN-BN, the diagonal of
the empirical Fisher taken from Adam's second moments. This module computes
the same quantities for any JAX model, and the matrix-free estimates
(Lanczos, stochastic Lanczos quadrature, Hutchinson) that scale further.

Conventions shared by every function:

* ``loss_fn(params, batch) -> scalar`` is the mean loss over one batch.
* ``batches`` is either a ``list`` of batches (or an iterator such as a
  generator, or an iterable data loader, which is read to the end), or one
  pytree whose leaves all carry a leading axis that indexes the batches
  ("stacked"). A ``tuple`` or ``dict`` is read as a stacked pytree, since a
  batch is often an ``(x, y)`` tuple itself. Batches are stacked on the
  device, so they must share shapes.
* The Hessian analysed is that of the mean of the per-batch losses,
  ``H = (1/B) sum_b Hess loss_fn(params, batch_b)``; with batches of equal
  size that is the Hessian of the mean loss over all the examples. Batches are
  visited one at a time inside a ``jax.lax.scan``, so memory holds one batch's
  activations, not all of them.
* Parameters are flattened with ``jax.flatten_util.ravel_pytree`` and the
  analysis runs in at least float32 (``eigvalsh`` has no bfloat16 kernel).

The matrix-free functions (`lanczos_extremes`, `spectral_density`) need the
optional dependency ``matfree`` (``pip install entropy_optax[flatness]``);
`plot_spectrum` needs ``matplotlib``.

References:
  Chaudhari et al., 2017. Entropy-SGD: Biasing Gradient Descent Into Wide
  Valleys. ICLR 2017, Sec. 5.1, Figs. 1 and 3.
  Ghorbani, Krishnan & Xiao, 2019. An Investigation into Neural Net
  Optimization via Hessian Eigenvalue Density. ICML 2019.
"""

from __future__ import annotations

import collections.abc
import functools
import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

__all__ = [
    "Extremes",
    "SpectralDensity",
    "TraceEstimate",
    "fisher_diagonal",
    "fisher_diagonal_from_adam",
    "gaussian_density",
    "hessian_eigenvalues",
    "hutchinson_trace",
    "hvp",
    "lanczos_extremes",
    "plot_spectrum",
    "spectral_density",
    "spectrum_summary",
]

LossFn = Callable[[Any, Any], jax.Array]

_MATFREE_HINT = (
    "{what} needs the optional dependency 'matfree'. Install it with "
    "`pip install entropy_optax[flatness]` (or `pip install matfree`)."
)


# --------------------------------------------------------------------------
# Shared plumbing: batches, keys, the averaged Hessian-vector product.
# --------------------------------------------------------------------------


def _stack_batches(batches) -> tuple[Any, int]:
  """Returns ``(stacked_batches, num_batches)`` from a list or stacked pytree."""
  def is_data_loader():  # An iterable that is no pytree: a tf.data.Dataset...
    leaves = jax.tree.leaves(batches)
    return (
        len(leaves) == 1
        and leaves[0] is batches
        and isinstance(batches, collections.abc.Iterable)
        and not isinstance(batches, (np.ndarray, jax.Array, str, bytes))
    )

  # Iterators first: JAX warns when flattening them.
  if (
      isinstance(batches, (list, collections.abc.Iterator))
      or is_data_loader()
  ):
    batch_list = list(batches)
    if not batch_list:
      raise ValueError("`batches` is empty: pass at least one batch.")
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *batch_list)
    return stacked, len(batch_list)
  leaves = jax.tree.leaves(batches)
  if not leaves:
    raise ValueError(
        "`batches` has no arrays, so the number of batches is unknown. Pass a "
        "list of batches (e.g. `[None]` for a loss that ignores the data) or a "
        "pytree whose leaves carry a leading batch axis."
    )
  sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in leaves}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(
        "`batches` is read as a stacked pytree (it is not a list), so every "
        "leaf needs the same leading axis indexing the batches; found leading "
        f"sizes {sorted(map(str, sizes))}. For a single batch pass `[batch]`; "
        "for several, pass a list of batches."
    )
  return jax.tree.map(jnp.asarray, batches), sizes.pop()


def _as_key(key: jax.Array | int) -> jax.Array:
  if isinstance(key, (int, np.integer)):
    return jax.random.key(key)
  return key


def _flat_params(params) -> tuple[jax.Array, Callable[[jax.Array], Any]]:
  """Flattens ``params``; computes in at least float32."""
  flat, unravel = ravel_pytree(params)
  if flat.size == 0:
    raise ValueError("`params` has no parameters.")
  dtype = jnp.promote_types(flat.dtype, jnp.float32)
  return flat.astype(dtype), unravel


def _mean_hvp(loss_fn, params, batches, num_batches, v):
  """(1/B) sum_b H_b v by forward-over-reverse, one batch at a time (traced)."""
  x, unravel = _flat_params(params)

  def flat_grad(x_, batch):
    return jax.grad(lambda y: loss_fn(unravel(y), batch))(x_)

  def accumulate(total, batch):
    _, hv = jax.jvp(lambda y: flat_grad(y, batch), (x,), (v.astype(x.dtype),))
    return total + hv, None

  total, _ = jax.lax.scan(
      accumulate, jnp.zeros_like(x), batches, length=num_batches
  )
  return total / num_batches


_mean_hvp_jit = jax.jit(_mean_hvp, static_argnames=("loss_fn", "num_batches"))


def hvp(loss_fn: LossFn, params, batches) -> Callable[[jax.Array], jax.Array]:
  r"""Hessian-vector products of the batch-averaged loss, on flat vectors.

  .. math::
    v \mapsto H v = \frac{1}{B} \sum_{b=1}^{B} \nabla^2 f(x; \xi_b)\, v,

  computed by forward-over-reverse differentiation (``jax.jvp`` of
  ``jax.grad``; Pearlmutter, 1994) at the cost of about two gradients per
  batch, without forming H. Vectors live in the flat parameter space of
  ``jax.flatten_util.ravel_pytree(params)``.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``, the mean loss of one batch.
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
  stacked, num_batches = _stack_batches(batches)
  _flat_params(params)  # Fail early on empty params.
  return functools.partial(_mean_hvp_jit, loss_fn, params, stacked, num_batches)


# --------------------------------------------------------------------------
# Exact spectrum.
# --------------------------------------------------------------------------


@functools.partial(
    jax.jit, static_argnames=("loss_fn", "num_batches", "chunk_size")
)
def _dense_hessian_eigenvalues(loss_fn, params, batches, num_batches,
                               chunk_size):
  x, _ = _flat_params(params)
  n = x.size

  def column(i):
    basis_vector = jax.nn.one_hot(i, n, dtype=x.dtype)
    return _mean_hvp(loss_fn, params, batches, num_batches, basis_vector)

  # Columns in chunks: the n x n result is unavoidable, n x n x activations
  # (what one vmap over all n basis vectors would hold) is not.
  hessian = jax.lax.map(column, jnp.arange(n), batch_size=min(chunk_size, n))
  hessian = 0.5 * (hessian + hessian.T)  # Rounding breaks exact symmetry.
  return jnp.linalg.eigvalsh(hessian)


def hessian_eigenvalues(
    loss_fn: LossFn,
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
    loss_fn: ``loss_fn(params, batch) -> scalar``, the mean loss of one batch.
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
  num_params = int(ravel_pytree(params)[0].size)
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
  stacked, num_batches = _stack_batches(batches)
  return _dense_hessian_eigenvalues(
      loss_fn, params, stacked, num_batches, chunk_size
  )


# --------------------------------------------------------------------------
# Lanczos (matfree).
# --------------------------------------------------------------------------


def _import_matfree(what: str):
  try:
    from matfree import decomp  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(_MATFREE_HINT.format(what=what)) from e
  return decomp


def _tridiagonal(decomp, loss_fn, params, batches, num_batches, num_iters, v0):
  """Lanczos tridiagonal matrix T (num_iters^2) of H from start vector v0."""
  # Full reorthogonalisation: without it, Ritz values of well-separated
  # outliers repeat ("ghosts") and SLQ weights are wrong; its O(n k) memory
  # per step is small next to an HVP.
  tridiag = decomp.tridiag_sym(
      num_iters, materialize=True, reortho="full", custom_vjp=False
  )

  def matvec(v, p, b):
    return _mean_hvp(loss_fn, p, b, num_batches, v)

  return tridiag(matvec, v0, params, batches).J_small


@functools.partial(
    jax.jit, static_argnames=("loss_fn", "num_batches", "num_iters")
)
def _lanczos_ritz_values(loss_fn, params, batches, num_batches, num_iters,
                         key):
  decomp = _import_matfree("lanczos_extremes")
  x, _ = _flat_params(params)
  v0 = jax.random.normal(key, x.shape, x.dtype)
  tridiagonal = _tridiagonal(
      decomp, loss_fn, params, batches, num_batches, num_iters, v0
  )
  return jnp.linalg.eigvalsh(tridiagonal)


class Extremes(NamedTuple):
  """Extreme eigenvalues of a Hessian.

  Attributes:
    largest: the largest (most positive) eigenvalue estimate.
    smallest: the smallest (most negative) eigenvalue estimate.
  """

  largest: jax.Array
  smallest: jax.Array


def lanczos_extremes(
    loss_fn: LossFn,
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
  by doubling it. Cost: ``k`` HVPs (each about two gradients per batch) and
  ``k n`` floats for the reorthogonalised basis.

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
  stacked, num_batches = _stack_batches(batches)
  _import_matfree("lanczos_extremes")
  num_params = int(ravel_pytree(params)[0].size)
  if num_iters < 1:
    raise ValueError(f"num_iters must be >= 1, got {num_iters}.")
  num_iters = min(int(num_iters), num_params)
  ritz = _lanczos_ritz_values(
      loss_fn, params, stacked, num_batches, num_iters, _as_key(key)
  )
  return Extremes(largest=ritz[-1], smallest=ritz[0])


# --------------------------------------------------------------------------
# Stochastic Lanczos quadrature.
# --------------------------------------------------------------------------


def gaussian_density(
    nodes: jax.Array, weights: jax.Array, grid: jax.Array, sigma: float
) -> jax.Array:
  r"""Gaussian-smoothed spectral density from quadrature nodes and weights.

  .. math::
    \phi_\sigma(t) = \frac{1}{S} \sum_{s=1}^{S} \sum_{j=1}^{k} w_{sj}\,
      \frac{1}{\sigma\sqrt{2\pi}} \exp\Big(-\frac{(t - \theta_{sj})^2}{2\sigma^2}\Big)

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


@functools.partial(
    jax.jit, static_argnames=("loss_fn", "num_batches", "num_iters")
)
def _slq(loss_fn, params, batches, num_batches, num_iters, keys):
  decomp = _import_matfree("spectral_density")
  x, _ = _flat_params(params)

  def one_probe(key):
    v0 = jax.random.rademacher(key, x.shape, x.dtype)
    tridiagonal = _tridiagonal(
        decomp, loss_fn, params, batches, num_batches, num_iters, v0
    )
    nodes, vectors = jnp.linalg.eigh(tridiagonal)
    # Gauss quadrature weights: squared first components of T's eigenvectors
    # (Golub & Welsch, 1969).
    return nodes, vectors[0, :] ** 2

  # Probes one after another: each holds an n x k Lanczos basis.
  return jax.lax.map(one_probe, keys)


def spectral_density(
    loss_fn: LossFn,
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
  stacked, num_batches = _stack_batches(batches)
  _import_matfree("spectral_density")
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
  num_params = int(ravel_pytree(params)[0].size)
  if num_iters < 1:
    raise ValueError(f"num_iters must be >= 1, got {num_iters}.")
  num_iters = min(int(num_iters), num_params)
  keys = jax.random.split(_as_key(key), num_samples)
  nodes, weights = _slq(loss_fn, params, stacked, num_batches, num_iters, keys)
  return SpectralDensity(nodes=nodes, weights=weights, num_params=num_params)


# --------------------------------------------------------------------------
# Trace.
# --------------------------------------------------------------------------


class TraceEstimate(NamedTuple):
  """A Monte Carlo trace estimate.

  Attributes:
    estimate: the mean of the per-probe estimates ``z^T H z``.
    stderr: its standard error, ``std(ddof=1) / sqrt(num_samples)``.
  """

  estimate: jax.Array
  stderr: jax.Array


@functools.partial(jax.jit, static_argnames=("loss_fn", "num_batches"))
def _hutchinson_samples(loss_fn, params, batches, num_batches, keys):
  x, _ = _flat_params(params)

  def one_probe(key):
    z = jax.random.rademacher(key, x.shape, x.dtype)
    return jnp.vdot(z, _mean_hvp(loss_fn, params, batches, num_batches, z))

  return jax.lax.map(one_probe, keys)


def hutchinson_trace(
    loss_fn: LossFn,
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
    raise ValueError(
        f"num_samples must be >= 2 to give a standard error, got {num_samples}."
    )
  stacked, num_batches = _stack_batches(batches)
  keys = jax.random.split(_as_key(key), num_samples)
  samples = _hutchinson_samples(loss_fn, params, stacked, num_batches, keys)
  return TraceEstimate(
      estimate=jnp.mean(samples),
      stderr=jnp.std(samples, ddof=1) / math.sqrt(num_samples),
  )


# --------------------------------------------------------------------------
# Diagonal empirical Fisher.
# --------------------------------------------------------------------------


@functools.partial(
    jax.jit,
    static_argnames=("loss_fn", "num_batches", "per_example", "centered"),
)
def _fisher_diagonal(loss_fn, params, batches, num_batches, per_example,
                     centered):
  if per_example:
    example_grad = jax.grad(loss_fn)
  else:
    # A batch of one: the example keeps its leading axis.
    def example_grad(p, example):
      return jax.grad(loss_fn)(p, jax.tree.map(lambda a: a[None], example))

  per_batch_grads = jax.vmap(example_grad, in_axes=(None, 0))
  zeros = optax.tree.zeros_like(params)

  def accumulate(carry, batch):
    sum_g, sum_g2, count = carry
    grads = per_batch_grads(params, batch)
    sum_g = jax.tree.map(lambda s, g: s + jnp.sum(g, axis=0), sum_g, grads)
    sum_g2 = jax.tree.map(lambda s, g: s + jnp.sum(g**2, axis=0), sum_g2, grads)
    return (sum_g, sum_g2, count + jax.tree.leaves(grads)[0].shape[0]), None

  (sum_g, sum_g2, count), _ = jax.lax.scan(
      accumulate, (zeros, zeros, 0), batches, length=num_batches
  )
  mean_g2 = optax.tree.scale(1.0 / count, sum_g2)
  if not centered:
    return mean_g2
  mean_g = optax.tree.scale(1.0 / count, sum_g)
  return jax.tree.map(lambda m2, m: m2 - m**2, mean_g2, mean_g)


def fisher_diagonal(
    loss_fn: LossFn,
    params,
    batches,
    *,
    per_example: bool = False,
    centered: bool = False,
):
  r"""Diagonal of the empirical Fisher: the mean squared per-example gradient.

  .. math::
    \operatorname{diag} F = \frac{1}{N} \sum_{i=1}^{N} \big(\nabla_x \ell(x; \xi_i)\big)^2
    \quad\text{or, with centered=True,}\quad
    \frac{1}{N} \sum_i g_i^2 - \Big(\frac{1}{N} \sum_i g_i\Big)^2,

  over all ``N`` examples of all batches (squares elementwise). For a
  negative log-likelihood at a minimum the Fisher approximates the Hessian,
  and the paper used its diagonal as a proxy for the Hessian eigenvalues of
  All-CNN-BN (Sec. 5.1, Fig. 3c; its formula is the centered one, which
  differs by the squared mean gradient, ~0 at a minimum).

  Per-example gradients are vmapped within a batch; batches are scanned.
  With the default ``per_example=False``, each example is fed to
  ``loss_fn`` as a batch of one (leading axis kept), so ``loss_fn`` must not
  mix examples (batch norm in training mode does). Use the mean, not the
  sum, over the batch in ``loss_fn``: the gradient of a batch of one is then
  the per-example gradient.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``, the mean loss of one batch;
      with ``per_example=True``, ``loss_fn(params, example) -> scalar`` on one
      example without a batch axis.
    params: the parameters (any pytree).
    batches: a list of batches, or a stacked pytree (leading axis = batch);
      every leaf of a batch has the examples on its leading axis.
    per_example: whether ``loss_fn`` takes a single unbatched example.
    centered: subtract the squared mean gradient (the paper's
      ``E[g^2] - (E g)^2``).

  Returns:
    A pytree like ``params`` with the diagonal.

  Examples:
    >>> import jax.numpy as jnp
    >>> from entropy_optax import flatness
    >>> loss = lambda w, batch: jnp.mean(0.5 * (batch[0] * w - batch[1]) ** 2)
    >>> xs, ys = jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 0.0]])
    >>> flatness.fisher_diagonal(loss, 1.0, (xs, ys))  # mean(x^4 w^2)
    Array(8.5, dtype=float32)

  References:
    Chaudhari et al., 2017. Entropy-SGD, ICLR 2017, Sec. 5.1.
    Kunstner, Balles & Hennig, 2019. Limitations of the empirical Fisher
    approximation for natural gradient descent. NeurIPS 2019.
  """
  stacked, num_batches = _stack_batches(batches)
  return _fisher_diagonal(
      loss_fn, params, stacked, num_batches, per_example, centered
  )


def fisher_diagonal_from_adam(
    opt_state: optax.OptState,
    *,
    b2: float | None = None,
    centered: bool = False,
    b1: float | None = None,
):
  r"""The paper's All-CNN-BN Fisher proxy: Adam's second moment ``nu``.

  Adam keeps ``nu_t = b2 nu_{t-1} + (1 - b2) g_t^2``, an exponential moving
  average of the squared **minibatch** gradients along the trajectory (not of
  per-example gradients at one point, unlike `fisher_diagonal`), and
  ``mu_t``, the same EMA of ``g_t`` with ``b1``. This returns

  .. math::
    \hat\nu = \frac{\nu_t}{1 - b_2^t}
    \quad\text{or, with centered=True,}\quad
    \hat\nu - \hat\mu^2, \qquad \hat\mu = \frac{\mu_t}{1 - b_1^t},

  the latter being the paper's ``diag(I) = E(g^2) - (E g)^2``. Minibatch
  gradients have variance ~1/batch size of per-example ones, so the scale
  differs from `fisher_diagonal`; the shape of the spectrum is what Fig. 3c
  compares. Without ``b2`` (resp. ``b1``) no bias correction is applied,
  which matters only for the first ~``1/(1 - b2)`` steps.

  The state is found with ``optax.tree.get(opt_state, 'nu')``, so it works
  for ``optax.adam``/``adamw``/``nadam`` inside chains and
  ``inject_hyperparams``, as long as exactly one ``nu`` exists.

  Args:
    opt_state: an optax state containing one Adam-like state with ``nu``.
    b2: Adam's ``b2``, for bias correction with that state's ``count``.
    centered: subtract the squared first moment ``mu``.
    b1: Adam's ``b1``, for bias correction of ``mu`` (with ``centered``).

  Returns:
    A pytree like the parameters with the diagonal estimate.

  Raises:
    ValueError: if ``opt_state`` has no (or several) ``nu``, or ``centered``
      is asked for and no ``mu`` sits next to ``nu``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from entropy_optax import flatness
    >>> opt = optax.adam(1e-3, b2=0.9)
    >>> state = opt.init(jnp.zeros(2))
    >>> _, state = opt.update(jnp.array([1.0, 3.0]), state)
    >>> print(*(f"{v:.2f}" for v in flatness.fisher_diagonal_from_adam(state)))
    0.10 0.90
    >>> fisher = flatness.fisher_diagonal_from_adam(state, b2=0.9)  # g^2
    >>> print(*(f"{v:.2f}" for v in fisher))
    1.00 9.00

  References:
    Chaudhari et al., 2017. Entropy-SGD, ICLR 2017, Sec. 5.1 (All-CNN-BN).
    Kingma & Ba, 2015. Adam: A Method for Stochastic Optimization. ICLR.
  """
  found = optax.tree.get_all_with_path(opt_state, "nu")
  if len(found) != 1:
    raise ValueError(
        f"Expected exactly one Adam second moment 'nu' in opt_state, found "
        f"{len(found)}. Pass the state of an optax Adam-family optimizer "
        "(adam, adamw, nadam, amsgrad, ...), or the sub-state of the one "
        "you want."
    )
  (nu_path, nu), = found
  parent = nu_path[:-1]

  def sibling(name: str):
    return optax.tree.get(
        opt_state, name, filtering=lambda path, _: tuple(path[:-1]) == parent
    )

  def corrected(moment, decay):
    if decay is None:
      return moment
    count = sibling("count")
    if count is None:
      raise ValueError(
          "Bias correction needs the step 'count' next to 'nu'; none found."
      )
    return optax.tree.bias_correction(moment, decay, count)

  second = corrected(nu, b2)
  if not centered:
    return second
  mu = sibling("mu")
  if mu is None:
    raise ValueError("centered=True needs the first moment 'mu' next to 'nu'.")
  first = corrected(mu, b1)
  return jax.tree.map(lambda s, m: s - m**2, second, first)


# --------------------------------------------------------------------------
# Summaries and plots.
# --------------------------------------------------------------------------


def _as_numpy_values(values) -> np.ndarray:
  if isinstance(values, SpectralDensity):
    raise TypeError(
        "Expected eigenvalues (an array or pytree), got a SpectralDensity."
    )
  return np.asarray(ravel_pytree(values)[0], dtype=np.float64)


def spectrum_summary(
    eigenvalues, *, thresholds: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
) -> dict[str, float]:
  r"""The numbers the paper quotes about a spectrum, as a dict of floats.

  For eigenvalues ``lambda_1..lambda_n`` (or a Fisher diagonal):
  ``count`` = n, ``max_eigenvalue`` = max lambda (largest positive),
  ``min_eigenvalue`` = min lambda (most negative; positive if none is),
  ``frac_negative`` = #{lambda < 0} / n and, per threshold t,
  ``frac_abs_below_{t:.0e}`` = #{|lambda| < t} / n (the paper: ~94% below
  1e-4 for small-LeNet, Fig. 1).

  Args:
    eigenvalues: an array, or any pytree of arrays (raveled), e.g. the output
      of `hessian_eigenvalues` or `fisher_diagonal`.
    thresholds: the absolute thresholds t.

  Returns:
    A dict with the keys above, values Python floats (``count`` an int).

  Examples:
    >>> import numpy as np
    >>> from entropy_optax import flatness
    >>> s = flatness.spectrum_summary(np.array([-0.5, 0.0, 5e-4, 2.0]))
    >>> s["frac_abs_below_1e-03"], s["min_eigenvalue"], s["count"]
    (0.5, -0.5, 4)

  References:
    Chaudhari et al., 2017. Entropy-SGD, ICLR 2017, Sec. 1 and 5.1.
  """
  values = _as_numpy_values(eigenvalues)
  if values.size == 0:
    raise ValueError("spectrum_summary needs at least one eigenvalue.")
  summary: dict[str, float] = {
      "count": int(values.size),
      "max_eigenvalue": float(values.max()),
      "min_eigenvalue": float(values.min()),
      "frac_negative": float(np.mean(values < 0)),
  }
  for t in thresholds:
    summary[f"frac_abs_below_{t:.0e}"] = float(np.mean(np.abs(values) < t))
  return summary


def plot_spectrum(
    spectra,
    ax=None,
    *,
    bins: int = 100,
    value_range: tuple[float, float] | None = None,
    log: bool = True,
    sigma: float | None = None,
    title: str | None = None,
):
  """Histogram of Hessian eigenvalues, like Figs. 1 and 3 of the paper.

  Draws one step histogram (eigenvalue counts per bin, log-scale counts by
  default) per spectrum, on shared bins so that spectra compare bin by bin.
  A `SpectralDensity` is drawn as a line: its smoothed density times ``n``
  times the bin width, i.e. the expected count per bin, in the same units.

  Args:
    spectra: eigenvalues (array, or pytree such as a Fisher diagonal), a
      `SpectralDensity`, or a mapping ``{label: either}`` to compare several,
      e.g. ``{"SGD": ev_sgd, "Entropy-SGD": ev_esgd}``. A mapping is always
      read as labelled spectra.
    ax: matplotlib Axes to draw on; a new figure's Axes by default.
    bins: number of bins.
    value_range: ``(low, high)`` eigenvalue range of the bins; default all
      values. Narrow it to zoom on the bulk near zero, as the paper's central
      panel does; values outside are not counted.
    log: log-scale counts (the paper's choice: the peak at zero dwarfs the
      tails).
    sigma: kernel width for `SpectralDensity` curves; default 1.5 bin widths.
    title: optional Axes title.

  Returns:
    The matplotlib Axes; ``ax.patches`` holds one histogram per eigenvalue
    spectrum and ``ax.lines`` one curve per `SpectralDensity`.

  Examples:
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from entropy_optax import flatness
    >>> rng = np.random.default_rng(0)
    >>> ax = flatness.plot_spectrum({"SGD": rng.normal(size=500),
    ...                              "Entropy-SGD": 0.1 * rng.normal(size=500)})
    >>> len(ax.patches)
    2

  References:
    Chaudhari et al., 2017. Entropy-SGD, ICLR 2017, Figs. 1 and 3.
  """
  try:
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "plot_spectrum needs matplotlib: `pip install matplotlib` (or "
        "`pip install entropy_optax[experiments]`)."
    ) from e

  if isinstance(spectra, Mapping):
    labelled = list(spectra.items())
  else:
    labelled = [(None, spectra)]
  if not labelled:
    raise ValueError("plot_spectrum got an empty mapping of spectra.")

  prepared = [
      (label, s if isinstance(s, SpectralDensity) else _as_numpy_values(s))
      for label, s in labelled
  ]
  if value_range is None:
    lows, highs = [], []
    for _, s in prepared:
      v = np.asarray(s.nodes) if isinstance(s, SpectralDensity) else s
      lows.append(v.min())
      highs.append(v.max())
    low, high = float(min(lows)), float(max(highs))
    if low == high:
      low, high = low - 0.5, high + 0.5
  else:
    low, high = map(float, value_range)
  edges = np.linspace(low, high, bins + 1)
  width = edges[1] - edges[0]

  if ax is None:
    _, ax = plt.subplots()
  for label, s in prepared:
    if isinstance(s, SpectralDensity):
      grid = np.linspace(low, high, 10 * bins)
      kernel = 1.5 * width if sigma is None else sigma
      counts = np.asarray(s.density(grid, kernel)) * s.num_params * width
      ax.plot(grid, counts, label=label)
    else:
      ax.hist(s, bins=edges, histtype="step", label=label)
  if log:
    ax.set_yscale("log")
  ax.set_xlabel("eigenvalue")
  ax.set_ylabel("count per bin")
  if title is not None:
    ax.set_title(title)
  if any(label is not None for label, _ in prepared):
    ax.legend()
  return ax
