"""SGHMC, the chain's second sampler: underdamped Langevin with friction (Chen et al. 2014).

The Entropy-SGD chain samples P(x') ∝ exp(-U(x') / T) with U(x') = f(x') + γ/2 ``|x - x'|^2``.
SGLD (``sampler="sgld"``, the paper's) takes overdamped steps; SGHMC (``sampler="sghmc"``) keeps
a velocity v, zero at x' = x, and takes, in the "SGD with momentum" form of Chen et al.'s Eq. 15::

  v  ← (1 - friction) v - langevin_lr grad U(x') + sqrt(friction langevin_lr) noise N(0, I)
  x' ← x' + v

How the temperature maps to the noise: T = noise^2 / 2 for both samplers, so the same ``noise``
and ``langevin_lr`` target the same Gibbs measure. The injected variance is 2 friction
langevin_lr T (Chen et al.'s 2 alpha η with their alpha = friction, η = langevin_lr) rather
than SGLD's 2 langevin_lr T: friction dissipates the kinetic energy the noise injects.
``friction`` = 1 forgets the velocity at every step and is SGLD step for step; a smaller friction
keeps momentum (1 - friction), which crosses flat directions ~1/friction times faster for the
same gradient evaluations. The mini-batch noise correction of Chen et al. (their beta-hat) is
taken as 0, as in most uses; at the paper's cold temperatures the mini-batch noise dominates
the injected noise for both samplers alike.

References:
  Chen, Fox, Guestrin, "Stochastic Gradient Hamiltonian Monte Carlo", ICML 2014
  (https://arxiv.org/abs/1402.4102), Eq. 15.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp

from entropy_optax._utils import is_concrete_number

Sampler = Literal["sgld", "sghmc"]
SAMPLERS = ("sgld", "sghmc")
DEFAULT_FRICTION = 0.1


def check_arguments(sampler: Any, friction: Any, langevin_momentum: Any) -> None:
  """ValueErrors naming the argument and the fix; traced values pass unchecked."""
  if sampler not in SAMPLERS:
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}.")
  if sampler == "sgld":
    if friction is not None:
      raise ValueError(
        f"friction={friction!r} is an argument of sampler='sghmc'; the SGLD chain has no "
        "velocity. Pass sampler='sghmc' or drop friction."
      )
    return
  if is_concrete_number(friction) and not 0 < friction <= 1:
    raise ValueError(f"friction must be in (0, 1] (1 is SGLD), got {friction}.")
  # A traced langevin_momentum (inject_hyperparams makes every number one) cannot be checked;
  # the SGHMC chain does not read it.
  if is_concrete_number(langevin_momentum) and langevin_momentum != 0:
    raise ValueError(
      f"langevin_momentum={langevin_momentum!r} cannot be combined with sampler='sghmc', whose "
      "velocity is already a momentum (1 - friction); pass langevin_momentum=0."
    )


def resolved_friction(sampler: Sampler, friction: float | jax.Array | None):
  """The friction SGHMC uses (``DEFAULT_FRICTION`` when None); None for SGLD."""
  if sampler != "sghmc":
    return None
  return DEFAULT_FRICTION if friction is None else friction


def sghmc_step(
  x_prime: Any, velocity: Any, force: Any, noise_tree: Any | None, *, langevin_lr, friction, noise
) -> tuple[Any, Any]:
  """One SGHMC step: the new ``(x_prime, velocity)``.

  Args:
    x_prime: the chain's position (chain dtype).
    velocity: its velocity, a tree like ``x_prime`` (zeros at the first step).
    force: grad U(x') = ∇f(x') (+ weight decay) - γ (x - x').
    noise_tree: unit-variance noise like ``x_prime``, or None for a deterministic chain.
    langevin_lr: the step size η (Chen et al.'s η: the squared time step over the mass).
    friction: in (0, 1], the fraction of the velocity dissipated per step.
    noise: ε, the temperature being T = noise^2 / 2.

  Returns:
    ``(x_prime, velocity)`` after the step.

  Examples:
    >>> import jax.numpy as jnp
    >>> from entropy_optax._sghmc import sghmc_step
    >>> x, v = sghmc_step(jnp.ones(2), jnp.zeros(2), jnp.ones(2), None,
    ...                   langevin_lr=0.1, friction=0.5, noise=0.0)
    >>> print(x, v)
    [0.9 0.9] [-0.1 -0.1]
  """
  keep = 1 - friction
  velocity = jax.tree.map(lambda v, g: keep * v - langevin_lr * g, velocity, force)
  if noise_tree is not None:
    scale = jnp.sqrt(jnp.asarray(friction * langevin_lr, jnp.float32)) * noise
    velocity = jax.tree.map(lambda v, n: v + (scale * n).astype(v.dtype), velocity, noise_tree)
  x_prime = jax.tree.map(lambda xp, v: xp + v, x_prime, velocity)
  return x_prime, velocity
