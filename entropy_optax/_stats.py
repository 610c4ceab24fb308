"""The diagnostics of one Langevin run (LangevinStats), summed leaf by leaf."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class LangevinStats(NamedTuple):
  """Diagnostics of one Langevin run, for the paper's heuristic of tuning γ (its section 4.2).

  All fields are float32 scalars. Norms and inner products are those of R^n (of R^2n for complex
  parameters: the real part of the Hermitian inner product). The field names do not repeat
  optax's hyper-parameter and state names (``gamma``, ``mu``, ``count``), so that
  ``optax.tree.get(opt_state, name)`` finds one value.

  Attributes:
    langevin_gamma: the scope γ used for this run (``gamma`` in entropy_optax 0.1.0).
    grad_norm: the norm of ∇f(x), the plain SGD gradient at x (the first Langevin step is
      taken at x' = x, so this costs no extra gradient evaluation).
    entropy_grad_norm: the norm of γ (x - μ), the local-entropy gradient; the paper tunes
      γ so that it is comparable with ``grad_norm``.
    cosine: cosine between ∇f(x) and the local-entropy direction x - μ.
    mean_distance: the Euclidean distance ``|x - x'|`` after each Langevin step, averaged over the
      L steps: how far the chain explores around x.
  """

  langevin_gamma: jax.Array
  grad_norm: jax.Array
  entropy_grad_norm: jax.Array
  cosine: jax.Array
  mean_distance: jax.Array


def empty_stats() -> LangevinStats:
  """Zero-valued stats, so that an optimizer state has its final structure before any update."""
  return LangevinStats(*(jnp.zeros([], jnp.float32) for _ in LangevinStats._fields))


def tree_real_dot(a: Any, b: Any) -> jax.Array:
  """Re <a, b>, the inner product of R^n (R^2n for complex leaves), as a float32 scalar.

  Leaf by leaf, each leaf summed where it lies: ``optax.tree.vdot`` ravels every leaf, a reshape
  that explicitly sharded arrays refuse, and returns a Python 0 for an empty tree.
  """
  total = jnp.zeros([], jnp.float32)
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    total = total + jnp.sum(jnp.real(jnp.conj(u) * v)).astype(jnp.float32)
  return total


def tree_norm(a: Any) -> jax.Array:
  """The Euclidean norm of ``a`` in R^n (R^2n for complex leaves), as a float32 scalar."""
  return jnp.sqrt(tree_real_dot(a, a))


def run_stats(gamma, grad_at_x, direction, distance_sum, num_steps) -> LangevinStats:
  """LangevinStats from ∇f(x), the direction x - μ and the summed ``|x - x'|``."""
  gamma = jnp.asarray(gamma, jnp.float32)
  direction_norm = tree_norm(direction)
  grad_norm = tree_norm(grad_at_x)
  tiny = jnp.finfo(jnp.float32).tiny
  return LangevinStats(
    langevin_gamma=gamma,
    grad_norm=grad_norm,
    entropy_grad_norm=gamma * direction_norm,
    cosine=tree_real_dot(grad_at_x, direction) / jnp.maximum(grad_norm * direction_norm, tiny),
    mean_distance=distance_sum / num_steps,
  )
