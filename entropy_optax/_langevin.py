"""The Langevin (SGLD) estimate of the local-entropy mean <x'>: a pure, jittable function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from entropy_optax import _deprecation, _noise, _sghmc, _unroll
from entropy_optax._checks import check_gradient_tree
from entropy_optax._config import ChainConfig
from entropy_optax._stats import LangevinStats, run_stats, tree_norm
from entropy_optax._utils import is_concrete_number, is_static_zero, to_chain


@_deprecation.renamed_keywords("nesterov", "noise_sampler")
def langevin_mean(
  grad_fn: Callable[[Any, jax.Array], Any],
  params: Any,
  key: jax.Array,
  *,
  gamma: float | jax.Array,
  num_steps: int,
  langevin_lr: float | jax.Array,
  noise: float | jax.Array,
  alpha: float | jax.Array,
  langevin_momentum: float = 0.0,
  langevin_nesterov: bool = True,
  weight_decay: float | jax.Array = 0.0,
  weight_decay_at: str = "before_momentum",
  grad_at_params: Any | None = None,
  noise_distribution: _noise.NoiseDistribution = "irwin_hall",
  unroll: int | bool | None = None,
  sampler: _sghmc.Sampler = "sgld",
  friction: float | jax.Array | None = None,
) -> tuple[Any, LangevinStats]:
  r"""Estimates the mean <x'> of the local Gibbs measure around ``params`` by SGLD.

  The Gibbs measure is P(x') ∝ exp(-(f(x') + γ/2 ``|x - x'|^2``) / T), whose mean gives the
  gradient of the negative local entropy, -grad F(x) = γ (x - <x'>) (Chaudhari et al. 2017,
  Eq. 7). Starting from x' = μ = x, Langevin step k = 0..L-1 does::

    g   = ∇f(x'; k) + weight_decay x'
    g   = Nesterov/heavy-ball momentum on g   (only if langevin_momentum > 0; buffer starts at 0)
    x' ← x' - langevin_lr (g - γ (x - x')) + sqrt(langevin_lr) noise N(0, I)
    μ ← (1 - alpha) μ + alpha x'

  (``weight_decay_at="after_momentum"`` adds weight_decay x' after the momentum instead, with
  the coupling, as the authors' Lua code does.) With this noise convention the chain samples the
  Gibbs measure at temperature T = noise^2 / 2 (in the limit of small ``langevin_lr``).

  Args:
    grad_fn: ``grad_fn(x_prime, k)`` returns ∇f at ``x_prime`` (a tree like ``params``) for
      Langevin step ``k`` (an int32 scalar), e.g. on the k-th mini-batch.
    params: the current weights x (any pytree of float arrays).
    key: a PRNG key for the Langevin noise.
    gamma: the scope γ > 0 (may be traced: vmap over it).
    num_steps: L, the number of Langevin steps (a Python int).
    langevin_lr: the SGLD step size η'.
    noise: the thermal noise ε (0 for a deterministic chain).
    alpha: the weight of the newest sample in the running average μ.
    langevin_momentum: momentum on the raw gradient inside the chain, as both of the authors'
      codes (0.9 there); the coupling and the noise are added after the momentum.
    langevin_nesterov: Nesterov form of that momentum (heavy-ball if False: the buffer is the
      step; the authors' codes instead alias it and accumulate the coupling and noise in it).
      Called ``nesterov`` in 0.1.0 (still accepted, with a DeprecationWarning).
    weight_decay: L2 coefficient weight_decay x' added inside the chain.
    weight_decay_at: "before_momentum" (added to the raw gradient: this library, the authors'
      PyTorch port) or "after_momentum" (added with the coupling: the authors' Lua code).
    grad_at_params: ∇f(x), if the caller already has it: then step 0 (taken at x' = x)
      uses it and ``grad_fn`` is called only for k = 1..L-1, saving one gradient evaluation.
    noise_distribution: the distribution of the unit-variance noise draws: "irwin_hall"
      (default: a cheap exact-variance approximation of a Gaussian, see
      ``_noise.irwin_hall_normal``) or "gaussian" (``jax.random.normal``). Called
      ``noise_sampler`` in 0.1.0 (still accepted, with a DeprecationWarning).
    unroll: ``lax.scan`` unrolling; None picks :func:`~entropy_optax.default_unroll`.
    sampler: the Markov chain: "sgld" (the steps above, the paper's) or "sghmc": underdamped
      Langevin with a velocity, x' ← x' + v, v ← (1 - friction) v - langevin_lr (g - γ
      (x - x')) + sqrt(friction langevin_lr) noise N(0, I), at the same temperature
      T = noise^2 / 2 and the same L gradient evaluations (see ``_sghmc``). Not combined with
      ``langevin_momentum``.
    friction: SGHMC's friction in (0, 1], the fraction of the velocity lost per step (1 is
      SGLD); None: 0.1. Only with ``sampler="sghmc"``.

  Returns:
    ``(mu, stats)``: μ in the chain dtype (at least float32, see ``chain_dtype``) and a
    :class:`~entropy_optax.LangevinStats`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from entropy_optax import langevin_mean
    >>> grad_fn = lambda x, k: x  # f(x) = |x|^2 / 2
    >>> mu, stats = langevin_mean(grad_fn, jnp.ones(3), jax.random.key(0), gamma=1.0,
    ...     num_steps=200, langevin_lr=0.1, noise=0.0, alpha=1.0)
    >>> print(mu.round(3))  # gamma x / (1 + gamma) = 0.5
    [0.5 0.5 0.5]

  References:
    Chaudhari et al., "Entropy-SGD: Biasing Gradient Descent Into Wide Valleys", ICLR 2017
    (https://arxiv.org/abs/1611.01838), Alg. 1.
  """
  config = ChainConfig.from_arguments(locals() | {"num_langevin_steps": num_steps})
  return run_chain(grad_fn, params, key, config, gamma=gamma, grad_at_params=grad_at_params)


def run_chain(
  grad_fn: Callable[[Any, jax.Array], Any],
  params: Any,
  key: jax.Array,
  config: ChainConfig,
  *,
  gamma: Any,
  grad_at_params: Any | None = None,
) -> tuple[Any, LangevinStats]:
  """langevin_mean on a checked ``config``, with ``gamma`` the scope of this run."""
  num_steps = config.num_langevin_steps
  x = to_chain(params)

  def gradient(x_prime, k):
    grads = grad_fn(jax.tree.map(lambda c, p: c.astype(p.dtype), x_prime, params), k)
    check_gradient_tree(grads, params)
    return to_chain(grads)

  coefficients = _Coefficients.of(config, gamma)
  langevin_step = _step_function(config, coefficients, x, gradient)
  unroll = config.unroll
  if unroll is None:
    unroll = _unroll.default_unroll(num_steps, lambda: grad_fn(params, jnp.int32(1)))
  step_keys = jax.random.split(key, num_steps)
  velocity = jax.tree.map(jnp.zeros_like, x) if coefficients.has_velocity else None
  carry = (x, x, velocity, jnp.zeros([], jnp.float32))
  if grad_at_params is None:
    grad_at_x = gradient(x, jnp.int32(0))
  else:
    check_gradient_tree(grad_at_params, params)
    grad_at_x = to_chain(grad_at_params)
  # Step 0 is peeled off the scan: its gradient (at x' = x) is known, and doubles as grad f(x).
  carry, _ = langevin_step(carry, (jnp.int32(0), step_keys[0], grad_at_x))
  if num_steps > 1:
    steps = (jnp.arange(1, num_steps, dtype=jnp.int32), step_keys[1:], None)
    carry, _ = jax.lax.scan(langevin_step, carry, steps, unroll=unroll)
  _, mu, _, distance_sum = carry
  direction = jax.tree.map(lambda a, b: a - b, x, mu)  # x - mu
  return mu, run_stats(coefficients.gamma, grad_at_x, direction, distance_sum, num_steps)


def _chain_scalar(value: Any) -> Any:
  """A hyper-parameter as the chain multiplies it: a Python number stays one (weakly typed);
  an array (inject_hyperparams makes float64 ones under jax_enable_x64) becomes float32, so it
  never promotes a float32 chain to float64.
  """
  return value if is_concrete_number(value) else jnp.asarray(value, jnp.float32)


class _Coefficients(NamedTuple):
  """The numbers one run of the chain multiplies by, cast by ``_chain_scalar``."""

  gamma: Any
  langevin_lr: Any
  noise: Any
  alpha: Any
  langevin_momentum: Any
  weight_decay: Any
  friction: Any  # None for SGLD
  has_velocity: bool  # a momentum buffer (SGLD with momentum) or SGHMC's velocity
  has_noise: bool

  @classmethod
  def of(cls, config: ChainConfig, gamma: Any) -> _Coefficients:
    friction = _sghmc.resolved_friction(config.sampler, config.friction)
    values = (gamma, config.langevin_lr, config.noise, config.alpha)
    values += (config.langevin_momentum, config.weight_decay)
    return cls(
      *map(_chain_scalar, values),
      friction=None if friction is None else _chain_scalar(friction),
      # SGHMC's velocity rides in the momentum buffer's slot of the carry (the two never combine).
      has_velocity=friction is not None or not is_static_zero(config.langevin_momentum),
      has_noise=not is_static_zero(config.noise),
    )


def _step_function(config: ChainConfig, c: _Coefficients, x: Any, gradient: Callable) -> Callable:
  """The scan body: one Langevin step on the carry (x', μ, velocity, summed distance)."""
  sqrt_lr = jnp.sqrt(jnp.asarray(c.langevin_lr, jnp.float32))
  add_weight_decay = lambda g, x_prime: jax.tree.map(
    lambda g, xp: g + c.weight_decay * xp, g, x_prime
  )

  def sgld_move(x_prime, g, buffer, step_key):
    if c.has_velocity:
      buffer = jax.tree.map(lambda b, g: c.langevin_momentum * b + g, buffer, g)
      if config.langevin_nesterov:
        g = jax.tree.map(lambda g, b: g + c.langevin_momentum * b, g, buffer)
      else:
        g = buffer
    if config.weight_decay_at == "after_momentum":
      g = add_weight_decay(g, x_prime)
    coupled = jax.tree.map(lambda g, a, b: g - c.gamma * (a - b), g, x, x_prime)
    x_prime = jax.tree.map(lambda xp, d: xp - c.langevin_lr * d, x_prime, coupled)
    if c.has_noise:
      draws = _noise.tree_noise(step_key, x_prime, config.noise_distribution)
      x_prime = jax.tree.map(lambda xp, n: xp + sqrt_lr * c.noise * n, x_prime, draws)
    return x_prime, buffer

  def sghmc_move(x_prime, g, velocity, step_key):
    force = jax.tree.map(lambda g, a, b: g - c.gamma * (a - b), g, x, x_prime)
    draws = _noise.tree_noise(step_key, x_prime, config.noise_distribution) if c.has_noise else None
    return _sghmc.sghmc_step(
      x_prime, velocity, force, draws, langevin_lr=c.langevin_lr, friction=c.friction, noise=c.noise
    )

  move = sgld_move if c.friction is None else sghmc_move

  def langevin_step(carry, inputs):
    x_prime, mu, velocity, distance_sum = carry
    k, step_key, grads = inputs
    if grads is None:
      grads = gradient(x_prime, k)
    if config.weight_decay_at == "before_momentum":
      grads = add_weight_decay(grads, x_prime)
    x_prime, velocity = move(x_prime, grads, velocity, step_key)
    mu = jax.tree.map(lambda m, xp: (1 - c.alpha) * m + c.alpha * xp, mu, x_prime)
    distance_sum = distance_sum + tree_norm(jax.tree.map(lambda a, b: a - b, x, x_prime))
    return (x_prime, mu, velocity, distance_sum), None

  return langevin_step
