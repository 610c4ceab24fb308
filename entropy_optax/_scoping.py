"""Scoping: schedules of the scope gamma over the outer update count t (Sec. 4.3 of the paper).

Each returns a plain ``optax.Schedule`` (t = 0 at the first update) that grows from gamma0, so
the Langevin chain explores widely early in training and ever more locally later ("reverse
annealing" of the scope). With the same gamma1, the first three agree to first order in t.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax

from entropy_optax._utils import is_concrete_number


def _check(gamma0: float, **nonnegative: float) -> None:
  """ValueErrors naming the argument; traced values (a vmapped sweep) pass unchecked."""
  if is_concrete_number(gamma0) and not gamma0 > 0:
    raise ValueError(f"gamma0 must be > 0, got {gamma0}.")
  for name, value in nonnegative.items():
    if is_concrete_number(value) and not value >= 0:
      raise ValueError(f"{name} must be >= 0, got {value}.")


def exponential_scoping(gamma0: float, gamma1: float) -> optax.Schedule:
  """The paper's schedule gamma(t) = gamma0 (1 + gamma1)^t.

  The paper's experiments use gamma0 = 1e-4 (MNIST) or 0.03 (CIFAR-10) and gamma1 = 1e-3
  ("gamma increases by a factor of 1.001 after each parameter update").

  Examples:
    >>> from entropy_optax import exponential_scoping
    >>> print(round(float(exponential_scoping(0.03, 1e-3)(1000)), 4))
    0.0815
  """
  _check(gamma0, gamma1=gamma1)
  # exp(t log1p(gamma1)) with log1p in double precision: float32 (1 + gamma1)^t would carry
  # the rounding of 1 + gamma1 to the power t (2e-4 relative error at t = 4500, gamma1 = 1e-3).
  rate = math.log1p(gamma1) if is_concrete_number(gamma1) else jnp.log1p(gamma1)
  return lambda count: gamma0 * jnp.exp(rate * jnp.asarray(count, jnp.float32))


def linear_scoping(gamma0: float, gamma1: float) -> optax.Schedule:
  """gamma(t) = gamma0 (1 + gamma1 t)."""
  _check(gamma0, gamma1=gamma1)
  return lambda count: gamma0 * (1.0 + gamma1 * jnp.asarray(count, jnp.float32))


def quadratic_scoping(gamma0: float, gamma1: float) -> optax.Schedule:
  """gamma(t) = gamma0 (1 + gamma1 t)^2."""
  _check(gamma0, gamma1=gamma1)
  return lambda count: gamma0 * jnp.square(1.0 + gamma1 * jnp.asarray(count, jnp.float32))


def bounded_exponential_scoping(gamma0: float, gamma_max: float, tau: float) -> optax.Schedule:
  """gamma(t) = gamma0 + (gamma_max - gamma0) (1 - exp(-tau t)), from gamma0 up to gamma_max.

  The paper prints gamma0 (1 - e^(-tau t)), which is 0 at t = 0, where the Gibbs measure is
  not normalisable (gamma must be > 0); this form starts at gamma0 instead and saturates at
  gamma_max, the paper's printed form being the limit gamma0 -> 0 with gamma_max in its place.
  """
  _check(gamma0, tau=tau)
  if is_concrete_number(gamma_max) and is_concrete_number(gamma0) and not gamma_max >= gamma0:
    raise ValueError(f"gamma_max must be >= gamma0 = {gamma0}, got {gamma_max}.")
  return lambda count: (
    gamma0 + (gamma_max - gamma0) * (1.0 - jnp.exp(-tau * jnp.asarray(count, jnp.float32)))
  )
