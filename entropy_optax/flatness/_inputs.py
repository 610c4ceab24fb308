"""Input handling shared by the flatness functions: batches, parameters and keys."""

from __future__ import annotations

import collections.abc
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

LossFn = Callable[[Any, Any], jax.Array]


def stack_batches(batches) -> tuple[Any, int]:
  """Returns ``(stacked_batches, num_batches)`` from a list or stacked pytree.

  A ``list``, an iterator or an iterable that is no pytree (a data loader) is read to the end
  and its batches stacked on the device; anything else (a ``tuple`` or ``dict`` included) is a
  stacked pytree whose leaves all carry the leading axis that indexes the batches.
  """

  def is_data_loader():  # An iterable that is no pytree: a tf.data.Dataset...
    leaves = jax.tree.leaves(batches)
    return (
      len(leaves) == 1
      and leaves[0] is batches
      and isinstance(batches, collections.abc.Iterable)
      and not isinstance(batches, (np.ndarray, jax.Array, str, bytes))
    )

  # Iterators first: JAX warns when flattening them.
  if isinstance(batches, (list, collections.abc.Iterator)) or is_data_loader():
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


def flat_params(params) -> tuple[jax.Array, Callable[[jax.Array], Any]]:
  """Flattens ``params``; computes in at least float32 (``eigvalsh`` has no bfloat16 kernel)."""
  flat, unravel = ravel_pytree(params)
  if flat.size == 0:
    raise ValueError("`params` has no parameters.")
  dtype = jnp.promote_types(flat.dtype, jnp.float32)
  return flat.astype(dtype), unravel


def num_params(params) -> int:
  """The number of scalars in ``params`` (the dimension of the Hessian)."""
  # Sizes only, no JAX operation: see `finished`.
  return sum(int(np.size(leaf)) for leaf in jax.tree.leaves(params))


def finished(outputs):
  """``outputs`` once computed. A flatness program on XLA:CPU may call back to the host, which
  runs JAX programs of its own; a JAX operation dispatched by the caller meanwhile can deadlock
  with them on the CPU's few execution threads (seen: an SLQ run that never ended on 2 cores).
  So each function waits for its program before it does anything else."""
  return jax.block_until_ready(outputs)


def num_lanczos_iters(num_iters: int, params) -> int:
  """``num_iters`` checked (>= 1) and clipped to the dimension: Lanczos stops at ``n`` steps."""
  if num_iters < 1:
    raise ValueError(f"num_iters must be >= 1, got {num_iters}.")
  return min(int(num_iters), num_params(params))
