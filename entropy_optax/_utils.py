"""Small helpers the core modules share: numbers that may be traced, PRNG keys, the chain dtype."""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp


def is_concrete_number(value: Any) -> bool:
  """A Python or NumPy real (not a bool, not a jax array, which may be traced)."""
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_static_zero(value: Any) -> bool:
  """True for a concrete 0; False for anything else, traced values (inject_hyperparams) included."""
  return is_concrete_number(value) and value == 0


def canonical_key(key: jax.Array | int) -> jax.Array:
  """A raw uint32 key from a seed, a typed key or a raw key.

  Raw keys vmap, serialise (orbax) and compare like any array. A seed may also arrive as a 0-d
  integer array: ``optax.inject_hyperparams`` turns every numeric argument, ``key=0`` included,
  into one.

  Examples:
    >>> import jax
    >>> from entropy_optax._utils import canonical_key
    >>> print(canonical_key(0).dtype, canonical_key(jax.random.key(0)).shape)
    uint32 (2,)
  """
  if jnp.ndim(key) == 0 and jnp.issubdtype(jnp.result_type(key), jnp.integer):
    return jax.random.PRNGKey(key)
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(key)
  return key


def chain_dtype(dtype: Any) -> jnp.dtype:
  """The dtype the chain x', μ and the noise are kept in: at least float32.

  The Langevin noise is about 1e-5 of typical weights and the coupling γ (x - x') is of the
  same order, both below bfloat16's resolution (2^-8): a bf16 chain would silently drop them.
  """
  return jnp.promote_types(dtype, jnp.float32)


def to_chain(tree: Any) -> Any:
  """``tree`` with every leaf in its ``chain_dtype``."""
  return jax.tree.map(lambda p: jnp.asarray(p, chain_dtype(p.dtype)), tree)
