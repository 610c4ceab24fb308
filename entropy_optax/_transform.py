"""``local_entropy``: the Entropy-SGD gradient estimate as an Optax gradient transformation."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from entropy_optax import _langevin
from entropy_optax import _noise
from entropy_optax import _sghmc
from entropy_optax._utils import canonical_key
from entropy_optax._utils import to_chain

_GRAD_FN_HELP = (
    "local_entropy needs grad_fn, a function grad_fn(params, k) returning the loss gradient "
    "for Langevin step k, passed as a keyword: "
    "tx.update(grads, opt_state, params, grad_fn=lambda p, k: jax.grad(loss)(p, batches[k]))."
)


class LocalEntropyState(NamedTuple):
  """State of ``local_entropy``.

  Attributes:
    count: number of updates done so far (int32); gamma is evaluated at it.
    rng_key: the PRNG key of the Langevin noise, split at every update.
    mu: the Langevin mean <x'> of the last update, in the chain dtype (at least float32).
    langevin_stats: ``LangevinStats`` of the last update (diagnostics; zeros before the first).
  """

  count: jax.Array
  rng_key: jax.Array
  mu: optax.Updates
  langevin_stats: _langevin.LangevinStats


def local_entropy(
    num_langevin_steps: int = 20,
    gamma: float | optax.Schedule = 0.03,
    langevin_lr: float = 0.1,
    noise: float = 1e-4,
    alpha: float = 0.75,
    *,
    langevin_momentum: float = 0.0,
    nesterov: bool = True,
    weight_decay: float = 0.0,
    scale_by_gamma: bool = False,
    key: jax.Array | int = 0,
    noise_sampler: _noise.NoiseSampler = "irwin_hall",
    unroll: int | bool | None = None,
    sampler: _sghmc.Sampler = "sgld",
    friction: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Replaces the gradient by the local-entropy gradient x - <x'>, estimated by SGLD.

  The negative local entropy -F(x, gamma) = -log ∫ exp(-f(x') - gamma/2 |x - x'|^2) dx' is a
  smoothed loss whose minima lie in wide valleys of f; its gradient is gamma (x - <x'>), with
  <x'> the mean of the local Gibbs measure, estimated by L Langevin steps started at x (see
  ``langevin_mean`` for the exact step). The update returned is x - mu (the authors' code and
  the paper's practice drop the factor gamma, Sec. 4.3), or gamma (x - mu) with
  ``scale_by_gamma``. Follow it with any optimizer in an ``optax.chain``: SGD gives
  Entropy-SGD, Adam gives Entropy-Adam.

  ``update(updates, state, params, *, grad_fn, **extra_args)`` takes as ``updates`` the
  gradient grad f(x) the caller has just computed at x (on mini-batch 0), uses it for the first
  Langevin step (taken at x' = x), and calls ``grad_fn(x_prime, k)`` for k = 1..L-1: one update
  costs exactly the L gradient evaluations of the method, and the caller keeps the loss and
  model state (BatchNorm statistics) of its own evaluation at x for logging. It must therefore be
  the first member of a chain, fed raw gradients. Other keyword arguments are ignored (they are
  for other members of the chain).

  Non-finite values: ``optax.apply_if_finite`` checks the gradients it receives, so wrapped
  around the whole chain it skips a step whose gradient at x is non-finite. A chain that
  diverges inside (a non-finite gradient at a later Langevin step) returns non-finite updates and
  leaves this transformation's count, key and stats unchanged (mu is reset to x); put
  ``optax.apply_if_finite`` around the outer optimizer,
  ``optax.chain(local_entropy(...), optax.apply_if_finite(optax.sgd(...), 5))``, to skip both
  kinds of step with params unchanged.

  Args:
    num_langevin_steps: L >= 1, Langevin steps (gradient evaluations) per update.
    gamma: the scope gamma > 0, a float or a schedule of the update count t (t = 0 at the first
      update), e.g. ``exponential_scoping``.
    langevin_lr: eta' > 0, the SGLD step size.
    noise: epsilon >= 0, the thermal noise; the step adds sqrt(langevin_lr) noise N(0, I), the
      paper's text. The authors' code adds sqrt(2 langevin_lr) noise: pass noise * sqrt(2).
    alpha: in (0, 1], the weight of the newest sample in mu <- (1 - alpha) mu + alpha x'. The
      paper's text says 0.75; the authors' code (that ran the experiments) uses 0.25.
    langevin_momentum: momentum on the raw gradient inside the chain (the authors' code: 0.9,
      buffer zeroed at every update); the coupling and noise are added after it.
    nesterov: Nesterov form of ``langevin_momentum``.
    weight_decay: L2 added to the gradient inside the chain (wd x').
    scale_by_gamma: return gamma (x - mu), the exact gradient of -F, instead of x - mu.
    key: PRNG key or seed of the Langevin noise.
    noise_sampler: "irwin_hall" (cheap, exact mean and variance) or "gaussian".
    unroll: ``lax.scan`` unrolling of the chain; None: full on CPU, rolled elsewhere.
    sampler: "sgld" (the paper's chain) or "sghmc" (underdamped Langevin with ``friction``, same
      temperature noise^2 / 2 and cost; see ``langevin_mean``).
    friction: SGHMC's friction in (0, 1] (None: 0.1); only with ``sampler="sghmc"``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import entropy_optax
    >>> loss = lambda p: jnp.sum(p ** 2)
    >>> tx = optax.chain(entropy_optax.local_entropy(5, 0.1, 0.1, 1e-4, 0.75), optax.sgd(1.0))
    >>> params = jnp.ones(3)
    >>> state = tx.init(params)
    >>> grads = jax.grad(loss)(params)
    >>> updates, state = tx.update(grads, state, params, grad_fn=lambda p, k: jax.grad(loss)(p))
    >>> params = optax.apply_updates(params, updates)

  References:
    Chaudhari et al., "Entropy-SGD: Biasing Gradient Descent Into Wide Valleys", ICLR 2017
    (https://arxiv.org/abs/1611.01838).
  """
  # Checked once here; a schedule's values are not (they may be traced).
  _langevin.check_arguments(
      num_langevin_steps, 1.0 if callable(gamma) else gamma, langevin_lr, noise, alpha,
      noise_sampler, sampler=sampler, friction=friction, langevin_momentum=langevin_momentum)

  def init_fn(params):
    return LocalEntropyState(
        count=jnp.zeros([], jnp.int32),
        rng_key=canonical_key(key),
        mu=to_chain(params),
        langevin_stats=_langevin.empty_stats(),
    )

  def update_fn(updates, state, params=None, *, grad_fn: Callable | None = None, **extra_args):
    del extra_args  # Meant for the other members of a chain.
    if grad_fn is None:
      raise TypeError(_GRAD_FN_HELP)
    if params is None:
      raise TypeError("local_entropy needs params: tx.update(grads, opt_state, params, grad_fn=...).")
    gamma_t = gamma(state.count) if callable(gamma) else gamma
    next_key, chain_key = jax.random.split(state.rng_key)
    mu, stats = _langevin.run_chain(
        grad_fn, params, chain_key,
        gamma=gamma_t, num_steps=num_langevin_steps, langevin_lr=langevin_lr, noise=noise,
        alpha=alpha, langevin_momentum=langevin_momentum, nesterov=nesterov,
        weight_decay=weight_decay, grad_at_params=updates, noise_sampler=noise_sampler,
        unroll=unroll, sampler=sampler, friction=friction)
    factor = stats.gamma if scale_by_gamma else 1.0
    new_updates = jax.tree.map(
        lambda p, m: (factor * (p.astype(m.dtype) - m)).astype(p.dtype), params, mu)
    # A chain that diverged (a non-finite gradient at some step k) leaves count, key and stats as
    # they were, so that an optax.apply_if_finite after this transformation skips the whole step;
    # the non-finite updates themselves are passed on, never hidden. mu is reset to the chain's
    # start x rather than kept: keeping the previous mu would hold one more parameter-sized
    # buffer through the whole chain, and the next update never reads it.
    finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(m)) for m in jax.tree.leaves(mu)]))
    if_finite = lambda new, old: optax.tree.where(finite, new, old)
    new_state = LocalEntropyState(
        count=if_finite(optax.safe_increment(state.count), state.count),
        rng_key=if_finite(next_key, state.rng_key),
        mu=if_finite(mu, to_chain(params)),
        langevin_stats=if_finite(stats, state.langevin_stats),
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
