"""Scoping: schedules of the scope γ over the update count t (Sec. 4.3 of the paper).

Each returns a plain ``optax.Schedule`` (t = 0 at the first update) that grows from γ0, so the
Langevin chain explores widely early in training and ever more locally later ("reverse
annealing" of the scope). With the same γ1, the first three agree to first order in t.
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
  """The paper's scoping schedule, γ(t) = γ0 (1 + γ1)ᵗ.

  The paper's experiments use γ0 = 1e-4 (MNIST) or 0.03 (CIFAR-10) and γ1 = 1e-3 ("γ increases
  by a factor of 1.001 after each parameter update"). Pass it as ``gamma`` of
  :func:`~entropy_optax.local_entropy`, :func:`~entropy_optax.entropy_sgd`, ...

  Args:
    gamma0: γ at the first update (t = 0), > 0.
    gamma1: the growth per update, >= 0: γ is multiplied by 1 + γ1 at every update.

  Returns:
    An ``optax.Schedule``: the update count t to γ(t), a float32 scalar.

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
  """Linear scoping, γ(t) = γ0 (1 + γ1 t).

  Args:
    gamma0: γ at the first update (t = 0), > 0.
    gamma1: the growth per update relative to γ0, >= 0.

  Returns:
    An ``optax.Schedule``: the update count t to γ(t), a float32 scalar.

  Examples:
    >>> from entropy_optax import linear_scoping
    >>> print(round(float(linear_scoping(0.03, 1e-3)(1000)), 4))
    0.06
  """
  _check(gamma0, gamma1=gamma1)
  return lambda count: gamma0 * (1.0 + gamma1 * jnp.asarray(count, jnp.float32))


def quadratic_scoping(gamma0: float, gamma1: float) -> optax.Schedule:
  """Quadratic scoping, γ(t) = γ0 (1 + γ1 t)².

  Args:
    gamma0: γ at the first update (t = 0), > 0.
    gamma1: the growth per update of √(γ/γ0), >= 0.

  Returns:
    An ``optax.Schedule``: the update count t to γ(t), a float32 scalar.

  Examples:
    >>> from entropy_optax import quadratic_scoping
    >>> print(round(float(quadratic_scoping(0.03, 1e-3)(1000)), 4))
    0.12
  """
  _check(gamma0, gamma1=gamma1)
  return lambda count: gamma0 * jnp.square(1.0 + gamma1 * jnp.asarray(count, jnp.float32))


def bounded_exponential_scoping(gamma0: float, gamma_max: float, tau: float) -> optax.Schedule:
  """Bounded exponential scoping, γ(t) = γ0 + (γmax − γ0)(1 − e^(−τt)), from γ0 to γmax.

  The paper prints γ0 (1 − e^(−τt)), which is 0 at t = 0, where the Gibbs measure is not
  normalisable (γ must be > 0); this form starts at γ0 instead and saturates at γmax, the
  paper's printed form being the limit γ0 → 0 with γmax in its place.

  Args:
    gamma0: γ at the first update (t = 0), > 0.
    gamma_max: the limit of γ as t grows, >= ``gamma0``.
    tau: the rate τ >= 0 per update; γ covers 1 − 1/e of the way to ``gamma_max`` in 1/τ
      updates.

  Returns:
    An ``optax.Schedule``: the update count t to γ(t), a float32 scalar.

  Examples:
    >>> from entropy_optax import bounded_exponential_scoping
    >>> schedule = bounded_exponential_scoping(0.03, 1.0, 1e-3)
    >>> print(round(float(schedule(0)), 4), round(float(schedule(1000)), 4))
    0.03 0.6432
  """
  _check(gamma0, tau=tau)
  if is_concrete_number(gamma_max) and is_concrete_number(gamma0) and not gamma_max >= gamma0:
    raise ValueError(f"gamma_max must be >= gamma0 = {gamma0}, got {gamma_max}.")
  return lambda count: (
    gamma0 + (gamma_max - gamma0) * (1.0 - jnp.exp(-tau * jnp.asarray(count, jnp.float32)))
  )
