"""The loss under random perturbations of growing radius, and the local entropy it estimates."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from entropy_optax._utils import canonical_key
from entropy_optax.flatness import _inputs
from entropy_optax.flatness._loss import LossTree


class PerturbationProfile(NamedTuple):
  """Losses at random points around a solution, by radius.

  Attributes:
    radii: the radii ``r`` (R,), as given.
    losses: ``f(x + r d_s)`` (R, S): the batch-averaged loss for each radius and each of the
      ``S`` random directions ``d_s``; one direction per sample, shared by every radius.
    relative: whether each radius is a fraction of each parameter array's norm (True) or a
      Euclidean length in the flat parameter space (False).
  """

  radii: jax.Array
  losses: jax.Array
  relative: bool


def _direction(params, key, relative: bool) -> jax.Array:
  """One random direction, flat: unit length, or per array the array's norm (``relative``)."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  noise = [
    jax.random.normal(k, jnp.shape(p), jnp.promote_types(jnp.result_type(p), jnp.float32))
    for k, p in zip(keys, leaves)
  ]
  if relative:
    # Per array, so that a layer whose output a BatchNorm normalises (scale-invariant) is moved
    # by the same fraction of itself as any other; an all-zero array is not moved.
    noise = [g * (jnp.linalg.norm(p) / jnp.linalg.norm(g)) for g, p in zip(noise, leaves)]
    return ravel_pytree(jax.tree.unflatten(treedef, noise))[0]
  flat = ravel_pytree(jax.tree.unflatten(treedef, noise))[0]
  return flat / jnp.linalg.norm(flat)


@functools.partial(jax.jit, static_argnames=("num_batches", "relative"))
def _profile(loss_fn, params, batches, num_batches, radii, keys, relative):
  x, unravel = _inputs.flat_params(params)

  def mean_loss(y):
    def accumulate(total, batch):
      return total + loss_fn(unravel(y), batch), None

    total, _ = jax.lax.scan(accumulate, jnp.zeros((), x.dtype), batches, length=num_batches)
    return total / num_batches

  def one_direction(key):
    d = _direction(params, key, relative).astype(x.dtype)
    return jax.lax.map(lambda r: mean_loss(x + r * d), radii)

  return jax.lax.map(one_direction, keys).T  # (R, S)


def perturbation_profile(
  loss_fn: _inputs.LossFn,
  params,
  batches,
  radii,
  *,
  num_samples: int,
  key: jax.Array | int,
  relative: bool = False,
) -> PerturbationProfile:
  r"""The loss at random points at growing distances from ``params``.

  For each of ``S`` random directions ``d_s`` and each radius ``r``,

  .. math::
    L_{r,s} = f(x + r\, d_s), \qquad d_s = g_s / \lVert g_s \rVert,
    \quad g_s \sim \mathcal N(0, I_n),

  so ``d_s`` is uniform on the unit sphere and ``x + r d_s`` lies at distance ``r``. With
  ``relative=True`` each parameter array ``x_l`` gets its own direction, scaled to
  ``r \lVert x_l \rVert`` (a layer-wise version of the filter normalisation of Li et al., 2018):
  the weights feeding a BatchNorm are scale-invariant, so an absolute radius would favour the
  solution with larger weights. A wide minimum keeps the loss low to a larger radius.

  The same ``key`` draws the same directions for parameters of the same shapes, so two
  solutions of one model are compared along the same directions. Cost: ``R * S`` loss
  evaluations over all the batches.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``, the mean loss of one batch.
    params: the solution (any pytree).
    batches: a list of batches, or a stacked pytree (leading axis = batch).
    radii: the radii ``r >= 0`` (a sequence or 1-d array).
    num_samples: random directions ``S`` (>= 1).
    key: PRNG key (or int seed) of the directions.
    relative: radii as fractions of each parameter array's norm (else Euclidean lengths).

  Returns:
    A `PerturbationProfile`; `local_entropy` turns it into the local entropy by radius.

  Examples:
    >>> import jax.numpy as jnp
    >>> from entropy_optax import flatness
    >>> loss = lambda p, _: 0.5 * 3.0 * jnp.sum(p ** 2)  # isotropic: f = 1.5 r^2 on any sphere
    >>> profile = flatness.perturbation_profile(loss, jnp.zeros(10), [None], [0.0, 1.0, 2.0],
    ...                                         num_samples=4, key=0)
    >>> print(profile.losses.mean(axis=1).round(4))
    [0.  1.5 6. ]

  References:
    Chaudhari et al., 2017. Entropy-SGD: Biasing Gradient Descent Into Wide Valleys. ICLR 2017.
    Li, Xu, Taylor, Studer & Goldstein, 2018. Visualizing the Loss Landscape of Neural Nets.
    NeurIPS 2018.
  """
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
  radii = np.asarray(radii, dtype=np.float64)
  if radii.ndim != 1 or radii.size == 0 or not np.all(np.isfinite(radii)) or np.any(radii < 0):
    raise ValueError(f"radii must be a non-empty 1-d sequence of finite r >= 0, got {radii}.")
  stacked, num_batches = _inputs.stack_batches(batches)
  x, _ = _inputs.flat_params(params)
  keys = jax.random.split(canonical_key(key), num_samples)
  losses = _profile(
    LossTree.of(loss_fn),
    params,
    stacked,
    num_batches,
    jnp.asarray(radii, x.dtype),
    keys,
    bool(relative),
  )
  return PerturbationProfile(jnp.asarray(radii, x.dtype), losses, bool(relative))


def local_entropy(profile: PerturbationProfile, *, inverse_temperature: float = 1.0) -> jax.Array:
  r"""The local entropy by radius, estimated from a `perturbation_profile`.

  .. math::
    F_r(x) = \log \frac{1}{S} \sum_{s=1}^{S} \exp\!\big(-\beta f(x + r\, d_s)\big).

  This is the paper's local entropy
  ``F(x, gamma) = log ∫ exp(-beta f(x') - gamma/2 |x - x'|^2) dx'`` up to the normalising
  constant of its Gaussian, ``(n/2) log(2 pi / gamma)``: in ``n`` dimensions a sample of
  ``N(x, I / gamma)`` lies at distance ``sqrt(n / gamma) (1 + O(n^{-1/2}))`` from ``x``, so the
  sphere of radius ``r = sqrt(n / gamma)`` carries the Gaussian's mass. Higher (closer to
  ``-beta f(x)``) is wider. A soft minimum of the sampled losses: between ``-beta max_s L``
  and ``-beta mean_s L`` (Jensen).

  Args:
    profile: the output of `perturbation_profile` (absolute radii for the reading above).
    inverse_temperature: ``beta``, the weight of the loss (1 in the paper's definition).

  Returns:
    ``F_r`` for each radius, shape (R,).

  Examples:
    >>> import jax.numpy as jnp
    >>> from entropy_optax import flatness
    >>> profile = flatness.PerturbationProfile(jnp.array([1.0]), jnp.array([[0.0, 2.0]]), False)
    >>> print(f"{float(flatness.local_entropy(profile)[0]):.4f}")  # log((1 + e^-2) / 2)
    -0.5662
  """
  losses = jnp.asarray(profile.losses)
  num_samples = losses.shape[-1]
  return jax.nn.logsumexp(-inverse_temperature * losses, axis=-1) - jnp.log(num_samples)
