r"""Automatic scoping: γ set at every update from what the update itself measured.

The paper tunes the scope by hand (Sec. 4.3): make the local-entropy gradient γ (x - μ)
comparable with the plain gradient ∇f(x), starting small. Every update already measures both
norms (:class:`~entropy_optax.LangevinStats`), so :func:`~entropy_optax.auto_scoping` turns the
heuristic into a controller of the ratio

  r = norm of γ (x - μ) / norm of ∇f(x)

towards a target ``target_ratio`` (a number or a schedule of the update count, "small early,
growing": the paper's scoping expressed as a ratio).

Why it does not chase its own tail. μ depends on γ: a larger γ pulls the chain, and so
μ, closer to x, so γ and norm of x - μ move in opposite directions. The rule never re-runs
the chain to solve for γ within an update (that would cost gradient evaluations); it takes
the chain that ran at gamma_t, and moves log γ towards the γ that would have hit the
target had norm of x - μ stayed put:

  log gamma_{t+1} = log gamma_t + k_t (log target_{t+1} - log r_t),  k_t = max(smoothing, 1/(t+1))

clipped to [gamma_min, gamma_max]. For a quadratic f = x'Ax/2 (A positive semi-definite) and an
exact chain, μ = (A + γ I)^-1 γ x, so γ (x - μ) = γ (A + γ I)^-1 ∇f and
r(γ) grows with γ with an elasticity e = d log r / d log γ in [0, 1] (each eigen-
direction contributes γ / (a + γ), of elasticity a / (a + γ)); the ratio can never
exceed 1 there, so targets must be below it. A short chain is in the same regime while
langevin_lr γ <= 1 (its ratio is then nearly proportional to γ, e close to 1), which is
why gamma_max defaults to 1 / langevin_lr. The map log gamma_t -> log gamma_{t+1} then has slope
1 - k_t e in [0, 1): the fixed point (r = target) is approached from one side, without overshoot
or oscillation; at e = 1 a single step lands on it. The first update (k_0 = 1) calibrates γ
from its one measurement, so ``gamma_init`` matters only for that update; later steps average
the noisy measurements (an exponential moving average in log γ, window about 1 / smoothing).
Where the curvature along the chain is negative the ratio can exceed 1 and fall as γ grows;
there the rule drives γ down, to gamma_min at worst: the bounds, not the rule, keep it sane.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from entropy_optax._config import ChainConfig
from entropy_optax._stats import LangevinStats
from entropy_optax._utils import is_concrete_number


class AutoScopingState(NamedTuple):
  """State of an :func:`~entropy_optax.auto_scoping` scope.

  Kept in the field :attr:`~entropy_optax.LocalEntropyState.langevin_scope` of the chain's state.

  Attributes:
    scope_gamma: the γ the next update will use (float32); the one the last update used is
      :attr:`LangevinStats.langevin_gamma <entropy_optax.LangevinStats.langevin_gamma>`.
  """

  scope_gamma: jax.Array


@dataclasses.dataclass(frozen=True)
class AutoScoping:
  """The settings of an automatic scope; pass it as ``gamma``.

  Made by :func:`~entropy_optax.auto_scoping`, which checks the values; a frozen dataclass.

  Args:
    target_ratio: the ratio ‖γ (x − μ)‖ / ‖∇f(x)‖ to hold, in (0, 1), or a schedule of it.
    gamma_init: γ of the first update.
    gamma_min: lower bound of γ.
    gamma_max: upper bound of γ; None: 1 / ``langevin_lr``.
    smoothing: the weight of the newest measurement, in (0, 1].

  Examples:
    >>> import entropy_optax
    >>> scope = entropy_optax.auto_scoping(0.1, gamma_init=0.01)
    >>> print(type(scope).__name__, scope.target_ratio, scope.gamma_init, scope.gamma_max)
    AutoScoping 0.1 0.01 None
  """

  target_ratio: optax.ScalarOrSchedule
  gamma_init: float
  gamma_min: float
  gamma_max: float | None
  smoothing: float


def ratio_scoping(ratio0: float, ratio1: float, max_ratio: float) -> optax.Schedule:
  """The paper's exponential scoping applied to the ratio: min(r0 (1 + r1)ᵗ, r_max).

  A schedule of the target :term:`ratio` for :func:`~entropy_optax.auto_scoping`.

  Args:
    ratio0: the ratio at the first update (t = 0), in (0, 1).
    ratio1: the growth per update, >= 0: the ratio is multiplied by 1 + r1 at every update.
    max_ratio: the cap of the ratio, in (0, 1).

  Returns:
    An ``optax.Schedule``: the update count t to the target ratio, a float32 scalar.

  Examples:
    >>> import entropy_optax
    >>> target = entropy_optax.ratio_scoping(0.02, 1e-3, 0.5)
    >>> print(round(float(target(0)), 4), round(float(target(1000)), 4))
    0.02 0.0543
  """
  for name, value, ok in (
    ("ratio0", ratio0, lambda v: 0 < v < 1),
    ("ratio1", ratio1, lambda v: v >= 0),
    ("max_ratio", max_ratio, lambda v: 0 < v < 1),
  ):
    if is_concrete_number(value) and not ok(value):
      raise ValueError(f"ratio_scoping: {name} out of range, got {value} (ratios lie in (0, 1)).")
  # math.log1p for a number: a jnp constant made here would leak into a later trace when the
  # optimizer is built inside one (a vmapped sweep of seeds) and updated inside another.
  rate = math.log1p(ratio1) if is_concrete_number(ratio1) else jnp.log1p(ratio1)
  return lambda count: jnp.minimum(
    ratio0 * jnp.exp(rate * jnp.asarray(count, jnp.float32)), max_ratio
  )


def auto_scoping(
  target_ratio: optax.ScalarOrSchedule | None = None,
  *,
  gamma_init: float = 0.03,
  gamma_min: float = 1e-4,
  gamma_max: float | None = None,
  smoothing: float = 0.1,
) -> AutoScoping:
  r"""A scope γ that sets itself so that ‖γ (x − μ)‖ is a target fraction of ‖∇f(x)‖.

  Pass it as ``gamma`` of :func:`~entropy_optax.local_entropy`,
  :func:`~entropy_optax.entropy_sgd` or :func:`~entropy_optax.entropy_adam`. After every
  update, the measured :term:`ratio` r = ‖γ (x − μ)‖ / ‖∇f(x)‖
  (:class:`~entropy_optax.LangevinStats`: ``entropy_grad_norm / grad_norm``, free) moves γ
  towards the target: log γ ← log γ + k (log target − log r), k = max(smoothing, 1 / (t + 1)),
  clipped to [γmin, γmax]. The first update runs at ``gamma_init`` and calibrates γ from its
  measurement; the γ each update used is ``langevin_stats.langevin_gamma``, the next one
  ``optax.tree.get(opt_state, "scope_gamma")``. No extra gradient evaluation; the state is one
  scalar; jit- and vmap-safe. :doc:`/auto_scope` explains why the rule converges without
  oscillating although μ depends on γ, and what it measured.

  The ratio lies in (0, 1) wherever f is locally convex (it is γ / (a + γ) along a direction of
  curvature a): the paper's "comparable magnitudes" is a ratio near 1, i.e. the chain tied to
  x, the end point of its scoping, not its start.

  Args:
    target_ratio: the ratio to hold, in (0, 1): a number or a schedule of the update count t
      (t = 0 at the first update). None: ``ratio_scoping(0.02, 1e-3, 0.5)``
      (:func:`~entropy_optax.ratio_scoping`), the ratio of the MNIST-1D recipes (γ = 0.03 ×
      1.001ᵗ, L = 5), which start near 0.02 and grow as their γ does.
    gamma_init: γ of the first update (> 0).
    gamma_min: lower bound of γ (> 0).
    gamma_max: upper bound of γ; None: 1 / ``langevin_lr``, beyond which the chain's coupling
      overshoots (η' γ > 1) and at 2 / η' diverges.
    smoothing: in (0, 1], the weight of the newest measurement once t + 1 > 1 / smoothing.

  Returns:
    An :class:`~entropy_optax.AutoScoping`, to pass as ``gamma``.

  Examples:
    On f = norm(x)^2 / 2 (curvature 1) with an exact chain, ratio 0.5 needs γ = 1:

    >>> import jax.numpy as jnp, optax, entropy_optax
    >>> scope = entropy_optax.auto_scoping(0.5, smoothing=1.0)
    >>> tx = entropy_optax.local_entropy(100, scope, langevin_lr=0.1, noise=0.0, alpha=1.0)
    >>> params = jnp.ones(3); state = tx.init(params)
    >>> for _ in range(12):
    ...   _, state = tx.update(params, state, params, grad_fn=lambda p, k: p)
    >>> print(round(float(optax.tree.get(state, "scope_gamma")), 3))
    1.0
  """
  if target_ratio is None:
    target_ratio = ratio_scoping(0.02, 1e-3, 0.5)
  checks = (
    ("target_ratio", target_ratio, lambda v: 0 < v < 1, "in (0, 1)"),
    ("gamma_init", gamma_init, lambda v: v > 0, "> 0"),
    ("gamma_min", gamma_min, lambda v: v > 0, "> 0"),
    ("smoothing", smoothing, lambda v: 0 < v <= 1, "in (0, 1]"),
  )
  for name, value, ok, what in checks:
    if is_concrete_number(value) and not ok(value):
      raise ValueError(f"auto_scoping: {name} must be {what}, got {value}.")
  if gamma_max is not None and is_concrete_number(gamma_max) and not gamma_max >= gamma_min:
    raise ValueError(
      f"auto_scoping: gamma_max must be >= gamma_min = {gamma_min}, got {gamma_max}."
    )
  return AutoScoping(target_ratio, gamma_init, gamma_min, gamma_max, smoothing)


def initial_state(gamma: Any) -> AutoScopingState | tuple[()]:
  """The scope's state before the first update: empty unless ``gamma`` is an AutoScoping."""
  if not isinstance(gamma, AutoScoping):
    return ()
  return AutoScopingState(scope_gamma=jnp.asarray(gamma.gamma_init, jnp.float32))


def gamma_at(config: ChainConfig, scope_state: Any, count: jax.Array) -> Any:
  """The γ of update number ``count``: the scope's own, or the config's number or schedule."""
  if isinstance(config.gamma, AutoScoping):
    return scope_state.scope_gamma
  return config.gamma_at(count)


def next_state(
  config: ChainConfig, scope_state: Any, count: jax.Array, stats: LangevinStats
) -> Any:
  """The scope's state after update ``count``, whose chain produced ``stats``."""
  scope = config.gamma
  if not isinstance(scope, AutoScoping):
    return scope_state
  t = jnp.asarray(count, jnp.float32)
  target = scope.target_ratio(count + 1) if callable(scope.target_ratio) else scope.target_ratio
  ratio = stats.entropy_grad_norm / stats.grad_norm
  # A zero gradient or a chain that did not move says nothing about gamma: keep it.
  measured = jnp.isfinite(ratio) & (ratio > 0)
  weight = jnp.maximum(jnp.asarray(scope.smoothing, jnp.float32), 1.0 / (t + 1.0))
  log_gamma = jnp.log(scope_state.scope_gamma)
  step = weight * (
    jnp.log(jnp.asarray(target, jnp.float32)) - jnp.log(jnp.where(measured, ratio, 1.0))
  )
  gamma_max = 1.0 / config.langevin_lr if scope.gamma_max is None else scope.gamma_max
  proposed = jnp.clip(jnp.exp(log_gamma + step), scope.gamma_min, gamma_max)
  new_gamma = jnp.where(measured, proposed, scope_state.scope_gamma)
  return AutoScopingState(scope_gamma=new_gamma.astype(jnp.float32))
