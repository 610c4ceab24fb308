"""The Langevin noise: unit-variance samples shaped like a parameter tree, cheap enough to fuse."""

from __future__ import annotations

import math
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

# The distribution of the chain's unit-variance noise draws (``noise_distribution``).
NoiseDistribution = Literal["irwin_hall", "gaussian"]
NOISE_DISTRIBUTIONS = ("irwin_hall", "gaussian")


def check_distribution(distribution: Any) -> None:
  """A ValueError naming the keyword (and its name before entropy_optax 0.2) and the choices."""
  if distribution not in NOISE_DISTRIBUTIONS:
    raise ValueError(
      f"noise_distribution (noise_sampler before entropy_optax 0.2) must be one of "
      f"{NOISE_DISTRIBUTIONS}, got {distribution!r}."
    )


def _fmix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser: a bijection of uint32 with full avalanche."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def irwin_hall_normal(key: jax.Array, shape: tuple[int, ...], dtype, offset: int) -> jax.Array:
  """Approximately standard-normal samples, element-wise in a counter, so XLA fuses them.

  Each sample is the sum of four independent uniform 4-bit integers (16 random bits), centred
  and scaled to unit variance: an Irwin-Hall(4) variable on 61 levels. Its mean and variance are
  exact, its excess kurtosis is -0.3 (0 for a Gaussian) and it is bounded by 3.25 standard
  deviations. SGLD needs only zero-mean, unit-variance, uncorrelated increments: the chain's
  stationary law in the small-step limit depends on the noise variance alone (the sum over steps
  is Gaussian by the central limit theorem).

  The 16 bits of element i come from two rounds of MurmurHash3's finaliser over the counter
  ``offset + i`` mixed with the (threefry-split, per Langevin step) key: ~10 integer operations
  a sample instead of threefry's ~100 per 64 bits, and element-wise, so the noise is fused into
  the Langevin update and never stored. Not cryptographic, which SGLD does not need. On the
  2-core CPU this took an MLP's Entropy-SGD step from 1.30x to 1.00x the cost of L SGD steps.

  Examples:
    >>> import jax
    >>> from entropy_optax._noise import irwin_hall_normal
    >>> z = irwin_hall_normal(jax.random.key_data(jax.random.key(0)), (100_000,), "float32", 0)
    >>> print(round(float(z.mean()), 1), round(float(z.std()), 2))
    0.0 1.0
  """
  key = key.astype(jnp.uint32).reshape(-1)
  # The counter hashed is (offset + i) * 0x9E3779B9 + key[0], written as (i + start) * 0x9E3779B9
  # with start = offset + key[0] * 0x9E3779B9^-1 (mod 2^32): the same numbers, but no
  # key-independent term that XLA would hoist out of the Langevin loop and store (one
  # parameter-sized uint32 buffer per leaf). The iota is 1-D for the same reason: reshaped, it
  # becomes a multiply-add of 2-D iotas, which is hoisted too.
  start = jnp.uint32(offset) + key[0] * jnp.uint32(0x144CBC89)
  index = jax.lax.iota(jnp.uint32, math.prod(shape)) + start
  words = _fmix32(_fmix32(index * jnp.uint32(0x9E3779B9)) ^ key[1])
  # Sum the four nibbles of the low 16 bits (SWAR): two masks and adds.
  pairs = (words & 0x0F0F) + ((words >> 4) & 0x0F0F)
  sums = (pairs & 0x00FF) + ((pairs >> 8) & 0x00FF)
  # Four uniforms on {0..15}: mean 4 * 7.5 = 30, variance 4 * (16^2 - 1) / 12 = 85. The scale is
  # a Python float (weakly typed), so the samples keep ``dtype`` under jax_enable_x64 too.
  return ((sums.astype(dtype) - 30.0) * (1.0 / math.sqrt(85.0))).reshape(shape)


def tree_noise(key: jax.Array, tree: Any, distribution: NoiseDistribution = "irwin_hall") -> Any:
  """Unit-variance noise shaped like ``tree`` (same dtypes), from one key.

  The leaves take disjoint slices of one stream (one random-number call per leaf and unrolled
  Langevin step would dominate compile time). A complex leaf gets independent unit-variance
  noise in its real and its imaginary part: SGLD on C^n is SGLD on R^2n.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from entropy_optax._noise import tree_noise
    >>> z = tree_noise(jax.random.key(0), jnp.zeros(100_000, jnp.complex64))
    >>> print(z.dtype, round(float(z.real.std()), 2), round(float(z.imag.std()), 2))
    complex64 1.0 1.0
  """
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)  # raw words for the counter hash
  leaves, treedef = jax.tree.flatten(tree)
  # Real and imaginary parts of a complex leaf are two real draws: shape (2, *leaf.shape).
  shapes = [(2, *leaf.shape) if jnp.iscomplexobj(leaf) else leaf.shape for leaf in leaves]
  real_dtypes = [jnp.finfo(leaf.dtype).dtype for leaf in leaves]
  sizes = [math.prod(shape) for shape in shapes]
  starts = np.cumsum([0] + sizes[:-1])
  if distribution == "irwin_hall":
    draws = [
      irwin_hall_normal(key, shape, dtype, int(start))
      for shape, dtype, start in zip(shapes, real_dtypes, starts)
    ]
  else:
    # Long draws come in rows of 128: XLA:CPU ran a 1-D threefry draw of 12k words, or of an
    # odd size, several times slower.
    total = sum(sizes)
    rows = (-(-total // 128), 128) if total >= 1024 else (total,)
    flat = jax.random.normal(key, rows, jnp.float32).reshape(-1)
    draws = [
      flat[start : start + size].reshape(shape).astype(dtype)
      for shape, dtype, start, size in zip(shapes, real_dtypes, starts, sizes)
    ]
  noise = [
    jax.lax.complex(draw[0], draw[1]) if jnp.iscomplexobj(leaf) else draw
    for leaf, draw in zip(leaves, draws)
  ]
  return jax.tree.unflatten(treedef, noise)
