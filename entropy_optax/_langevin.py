"""The Langevin (SGLD) estimate of the local-entropy mean <x'>: a pure, jittable function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from entropy_optax import _noise, _sghmc, _unroll
from entropy_optax._checks import check_arguments, check_gradient_tree
from entropy_optax._stats import LangevinStats, run_stats, tree_norm
from entropy_optax._utils import is_concrete_number, is_static_zero, to_chain


def _chain_scalar(value: Any) -> Any:
  """A hyper-parameter as the chain multiplies it: a Python number stays one (weakly typed);
  an array (inject_hyperparams makes float64 ones under jax_enable_x64) becomes float32, so it
  never promotes a float32 chain to float64.
  """
  return value if is_concrete_number(value) else jnp.asarray(value, jnp.float32)


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
  nesterov: bool = True,
  weight_decay: float | jax.Array = 0.0,
  weight_decay_at: str = "before_momentum",
  grad_at_params: Any | None = None,
  noise_sampler: _noise.NoiseSampler = "irwin_hall",
  unroll: int | bool | None = None,
  sampler: _sghmc.Sampler = "sgld",
  friction: float | jax.Array | None = None,
) -> tuple[Any, LangevinStats]:
  r"""Estimates the mean <x'> of the local Gibbs measure around ``params`` by SGLD.

  The Gibbs measure is P(x') ∝ exp(-(f(x') + gamma/2 |x - x'|^2) / T), whose mean gives the
  gradient of the negative local entropy, -grad F(x) = gamma (x - <x'>) (Chaudhari et al. 2017,
  Eq. 7). Starting from x' = mu = x, Langevin step k = 0..L-1 does::

    g   = grad f(x'; k) + weight_decay x'
    g   = Nesterov/heavy-ball momentum on g   (only if langevin_momentum > 0; buffer starts at 0)
    x' <- x' - langevin_lr (g - gamma (x - x')) + sqrt(langevin_lr) noise N(0, I)

  (``weight_decay_at="after_momentum"`` adds weight_decay x' after the momentum instead, with
  the coupling, as the authors' Lua code does.)
    mu <- (1 - alpha) mu + alpha x'

  With this noise convention the chain samples the Gibbs measure at temperature
  T = noise^2 / 2 (in the limit of small ``langevin_lr``).

  Args:
    grad_fn: ``grad_fn(x_prime, k)`` returns grad f at ``x_prime`` (a tree like ``params``) for
      Langevin step ``k`` (an int32 scalar), e.g. on the k-th mini-batch.
    params: the current weights x (any pytree of float arrays).
    key: a PRNG key for the Langevin noise.
    gamma: the scope gamma > 0 (may be traced: vmap over it).
    num_steps: L, the number of Langevin steps (a Python int).
    langevin_lr: the SGLD step size eta'.
    noise: the thermal noise epsilon (0 for a deterministic chain).
    alpha: the weight of the newest sample in the running average mu.
    langevin_momentum: momentum on the raw gradient inside the chain, as both of the authors'
      codes (0.9 there); the coupling and the noise are added after the momentum.
    nesterov: Nesterov form of that momentum (heavy-ball if False: the buffer is the step;
      the authors' codes instead alias it and accumulate the coupling and noise in it).
    weight_decay: L2 coefficient weight_decay x' added inside the chain.
    weight_decay_at: "before_momentum" (added to the raw gradient: this library, the authors'
      PyTorch port) or "after_momentum" (added with the coupling: the authors' Lua code).
    grad_at_params: grad f(x), if the caller already has it: then step 0 (taken at x' = x)
      uses it and ``grad_fn`` is called only for k = 1..L-1, saving one gradient evaluation.
    noise_sampler: "irwin_hall" (default: a cheap exact-variance approximation of a Gaussian,
      see ``_noise.irwin_hall_normal``) or "gaussian" (``jax.random.normal``).
    unroll: ``lax.scan`` unrolling; None picks ``_unroll.default_unroll``.
    sampler: "sgld" (the steps above, the paper's) or "sghmc": underdamped Langevin with a
      velocity, x' <- x' + v, v <- (1 - friction) v - langevin_lr (g - gamma (x - x')) +
      sqrt(friction langevin_lr) noise N(0, I), at the same temperature T = noise^2 / 2 and the
      same L gradient evaluations (see ``_sghmc``). Not combined with ``langevin_momentum``.
    friction: SGHMC's friction in (0, 1], the fraction of the velocity lost per step (1 is
      SGLD); None: 0.1. Only with ``sampler="sghmc"``.

  Returns:
    ``(mu, stats)``: mu in the chain dtype (at least float32, see ``chain_dtype``) and a
    ``LangevinStats``.

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
  check_arguments(
    num_steps,
    gamma,
    langevin_lr,
    noise,
    alpha,
    noise_sampler,
    sampler=sampler,
    friction=friction,
    langevin_momentum=langevin_momentum,
    weight_decay_at=weight_decay_at,
  )
  return run_chain(
    grad_fn,
    params,
    key,
    gamma=gamma,
    num_steps=num_steps,
    langevin_lr=langevin_lr,
    noise=noise,
    alpha=alpha,
    langevin_momentum=langevin_momentum,
    nesterov=nesterov,
    weight_decay=weight_decay,
    weight_decay_at=weight_decay_at,
    grad_at_params=grad_at_params,
    noise_sampler=noise_sampler,
    unroll=unroll,
    sampler=sampler,
    friction=friction,
  )


def run_chain(
  grad_fn,
  params,
  key,
  *,
  gamma,
  num_steps,
  langevin_lr,
  noise,
  alpha,
  langevin_momentum,
  nesterov,
  weight_decay,
  grad_at_params,
  noise_sampler,
  unroll,
  weight_decay_at="before_momentum",
  sampler="sgld",
  friction=None,
):
  """``langevin_mean`` on arguments already checked by ``check_arguments``."""
  friction = _sghmc.resolved_friction(sampler, friction)
  # SGHMC's velocity rides in the momentum buffer's slot of the carry (the two never combine).
  use_momentum = friction is not None or not is_static_zero(langevin_momentum)
  use_noise = not is_static_zero(noise)

  x = to_chain(params)
  gamma, langevin_lr, noise, alpha, langevin_momentum, weight_decay = map(
    _chain_scalar, (gamma, langevin_lr, noise, alpha, langevin_momentum, weight_decay)
  )
  if friction is not None:
    friction = _chain_scalar(friction)
  sqrt_lr = jnp.sqrt(jnp.asarray(langevin_lr, jnp.float32))

  def gradient(x_prime, k):
    grads = grad_fn(jax.tree.map(lambda c, p: c.astype(p.dtype), x_prime, params), k)
    check_gradient_tree(grads, params)
    return to_chain(grads)

  def langevin_step(carry, inputs):
    x_prime, mu, momentum_buffer, distance_sum = carry
    k, step_key, grads = inputs
    if grads is None:
      grads = gradient(x_prime, k)
    add_weight_decay = lambda g: jax.tree.map(lambda g, xp: g + weight_decay * xp, g, x_prime)
    g = add_weight_decay(grads) if weight_decay_at == "before_momentum" else grads
    if friction is not None:
      force = jax.tree.map(lambda g, a, b: g - gamma * (a - b), g, x, x_prime)
      noise_tree = _noise.tree_noise(step_key, x_prime, noise_sampler) if use_noise else None
      x_prime, momentum_buffer = _sghmc.sghmc_step(
        x_prime,
        momentum_buffer,
        force,
        noise_tree,
        langevin_lr=langevin_lr,
        friction=friction,
        noise=noise,
      )
    else:
      if use_momentum:
        momentum_buffer = jax.tree.map(lambda b, g: langevin_momentum * b + g, momentum_buffer, g)
        if nesterov:
          g = jax.tree.map(lambda g, b: g + langevin_momentum * b, g, momentum_buffer)
        else:
          g = momentum_buffer
      if weight_decay_at == "after_momentum":
        g = add_weight_decay(g)
      gap = jax.tree.map(lambda a, b: a - b, x, x_prime)  # x - x'
      x_prime = jax.tree.map(lambda xp, g, d: xp - langevin_lr * (g - gamma * d), x_prime, g, gap)
      if use_noise:
        scale = sqrt_lr * noise
        x_prime = jax.tree.map(
          lambda xp, n: xp + scale * n, x_prime, _noise.tree_noise(step_key, x_prime, noise_sampler)
        )
    mu = jax.tree.map(lambda m, xp: (1 - alpha) * m + alpha * xp, mu, x_prime)
    distance_sum = distance_sum + tree_norm(jax.tree.map(lambda a, b: a - b, x, x_prime))
    return (x_prime, mu, momentum_buffer, distance_sum), None

  if unroll is None:
    unroll = _unroll.default_unroll(num_steps, lambda: grad_fn(params, jnp.int32(1)))
  step_keys = jax.random.split(key, num_steps)
  momentum_buffer = jax.tree.map(jnp.zeros_like, x) if use_momentum else None
  carry = (x, x, momentum_buffer, jnp.zeros([], jnp.float32))
  if grad_at_params is None:
    grad_at_x = gradient(x, jnp.int32(0))
  else:
    check_gradient_tree(grad_at_params, params)
    grad_at_x = to_chain(grad_at_params)
  # Step 0 is peeled off the scan: its gradient (at x' = x) is known, and doubles as grad f(x).
  carry, _ = langevin_step(carry, (jnp.int32(0), step_keys[0], grad_at_x))
  if num_steps > 1:
    carry, _ = jax.lax.scan(
      langevin_step,
      carry,
      (jnp.arange(1, num_steps, dtype=jnp.int32), step_keys[1:], None),
      unroll=unroll,
    )
  _, mu, _, distance_sum = carry

  direction = jax.tree.map(lambda a, b: a - b, x, mu)  # x - mu
  return mu, run_stats(gamma, grad_at_x, direction, distance_sum, num_steps)
