"""The optimizers of a ``RunConfig``: one registry, ``OPTIMIZERS``, and the learning rate.

Adding an optimizer is one entry, ``OPTIMIZERS[name] = OptimizerEntry(make, takes_grad_fn)``:
``make(config, lr, key)`` returns the optax transformation, where ``lr`` is the learning-rate
schedule (counting outer steps) and ``key`` the seed's PRNG key (the loop builds one optimizer
per seed with its own key; with ``--replicas`` > 1, one per replica, under the named vmap axis
``experiments.trainer.loop_state.REPLICA_AXIS``); ``takes_grad_fn`` says whether it takes
``langevin_steps`` > 1 and a ``grad_fn`` (one update per L mini-batches: local entropy,
Gaussian smoothing); ``takes_replicas`` whether it couples ``--replicas`` > 1.

Beside SGD, Adam, Entropy-SGD/Adam and the authors' Lua Entropy-SGD, the baselines beyond the
paper's tables:

* ``sgld``: the paper's App. C.1 plain SGLD (``experiments.optimizers.sgld``).
* ``smoothing-sgd``: SGD on the Gaussian-smoothed loss E f(x + sigma eps)
  (``entropy_optax.gaussian_smoothing``) at Entropy-SGD's cost, L gradient evaluations per update.

And the authors' parallel successor, ``parle`` (``entropy_optax.parle``): ``--replicas``
Entropy-SGD replicas coupled elastically to their average. ``sgd`` with ``--replicas`` n is
data-parallel SGD on n workers (the replicas averaged after every step).

jax and optax are imported inside the functions: ``--help`` stays fast.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import optax

import entropy_optax
from experiments.optimizers import sgld
from experiments.run.schema import ConfigError, RunConfig
from experiments.trainer import loop_state


def _plain(config: RunConfig, base):

  if config.weight_decay:
    return optax.chain(optax.add_decayed_weights(config.weight_decay), base)
  return base


def _gamma(config: RunConfig):

  if config.scoping == "none":
    return config.gamma0
  if config.scoping == "auto":
    target = entropy_optax.ratio_scoping(
      config.target_ratio, config.gamma1, config.max_target_ratio
    )
    return entropy_optax.auto_scoping(target, gamma_init=config.gamma0)
  scope = getattr(entropy_optax, f"{config.scoping}_scoping")
  return scope(config.gamma0, config.gamma1)


def _langevin(config: RunConfig, key) -> dict[str, Any]:
  return dict(
    num_langevin_steps=config.langevin_steps,
    gamma=_gamma(config),
    langevin_lr=config.langevin_lr,
    noise=config.noise,
    alpha=config.alpha,
    langevin_momentum=config.langevin_momentum,
    weight_decay=config.weight_decay,
    scale_by_gamma=config.scale_by_gamma,
    key=key,
  )


def _replica_axis(config: RunConfig):
  """The loop's named axis of the replicas (None for one replica: no coupling)."""
  return loop_state.REPLICA_AXIS if config.replicas > 1 else None


def _sgd(config, lr, key):
  """SGD; with --replicas n, data-parallel SGD on n workers: each replica's step on its own
  mini-batch, then all replicas set to the average (``entropy_optax.replica_average``), the
  step of SGD with an n times larger batch."""

  del key
  sgd = _plain(config, optax.sgd(lr, config.momentum or None, config.nesterov))
  if config.replicas == 1:
    return sgd
  return optax.chain(sgd, entropy_optax.replica_average(_replica_axis(config)))


def _adam(config, lr, key):

  del key
  return _plain(config, optax.adam(lr, config.b1, config.b2))


def _entropy_sgd(config, lr, key):

  # --nesterov sets both loops' momentum form here, as entropy_sgd's nesterov did in 0.1.0.
  return entropy_optax.entropy_sgd(
    lr,
    momentum=config.momentum,
    nesterov=config.nesterov,
    langevin_nesterov=config.nesterov,
    **_langevin(config, key),
  )


def _entropy_sgd_lua(config, lr, key):
  """The authors' Lua code, which ran the paper: ``authors_entropy_sgd(code="lua")``.

  Its outer step is lr (x - mu) with no momentum and no weight decay; --langevin-momentum is the
  Nesterov momentum of the Langevin loop (0.9), --weight-decay the code's --L2 (inside the loop,
  after the momentum), --noise the code's epsilon (adds sqrt(2 langevin_lr) noise), --gamma0 and
  --gamma1 its --gamma and --scoping (t counted from 1); alpha is the code's 0.25 and --momentum
  is unused.
  """

  if config.scoping not in ("exponential", "none") or config.scale_by_gamma:
    raise ConfigError(
      "--optimizer entropy-sgd-lua takes --scoping exponential or none and no "
      "--scale-by-gamma: the Lua code scopes gamma (1 + gamma1)^t and steps "
      "by x - mu."
    )
  if not config.nesterov or not config.langevin_momentum:
    raise ConfigError(
      "--optimizer entropy-sgd-lua needs --nesterov and --langevin-momentum > 0, "
      "as the Lua code runs (see entropy_optax.authors_entropy_sgd)."
    )
  return entropy_optax.authors_entropy_sgd(
    lr,
    code="lua",
    num_langevin_steps=config.langevin_steps,
    gamma=config.gamma0,
    scoping=config.gamma1 if config.scoping == "exponential" else 0.0,
    noise=config.noise,
    langevin_lr=config.langevin_lr,
    momentum=config.langevin_momentum,
    nesterov=True,
    weight_decay=config.weight_decay,
    key=key,
  )


def _entropy_adam(config, lr, key):

  return entropy_optax.entropy_adam(lr, b1=config.b1, b2=config.b2, **_langevin(config, key))


def _sgld(config, lr, key):
  """The paper's App. C.1 SGLD baseline (``experiments.optimizers.sgld``): step size
  learning_rate / (1 + t)^sgld_decay_power and noise sqrt(2 lr_t T) N(0, I), no momentum.

  The learning-rate drops (--lr-decay, --lr-decay-outer-epochs) are not used: the step size
  follows App. C.1's own decay, so that a job setting drops for every run can include it.
  """

  del lr
  return _plain(
    config,
    sgld.sgld(config.learning_rate, config.sgld_decay_power, config.sgld_temperature, key=key),
  )


def _smoothing_sgd(config, lr, key):
  """SGD (momentum, Nesterov) on the gradient of the Gaussian-smoothed loss E f(x + sigma eps).

  Equal cost with Entropy-SGD(L): the loop evaluates the gradient at x on mini-batch 0 anyway
  (Langevin step 0, the train loss); ``gaussian_smoothing`` averages L - 1 gradients at
  x + sigma eps_k on mini-batches 1..L-1 and does not use the one at x (no sample of the
  smoothed gradient): L gradient evaluations per update, as Entropy-SGD(L).
  """

  if config.langevin_steps < 2:
    raise ConfigError(
      f"--optimizer smoothing-sgd needs --langevin-steps >= 2 (L - 1 perturbed gradients "
      f"per update), got {config.langevin_steps}."
    )
  smoothing = entropy_optax.gaussian_smoothing(
    config.langevin_steps - 1, config.smoothing_sigma, key=key
  )

  def update(updates, state, params=None, *, grad_fn, **extra_args):
    del extra_args
    # Sample k on mini-batch k + 1: mini-batch 0 already served the gradient at x.
    shifted = lambda p, k: grad_fn(p, k + 1)
    return smoothing.update(updates, state, params, grad_fn=shifted)

  smoothed = optax.GradientTransformationExtraArgs(smoothing.init, update)
  return optax.chain(
    smoothed, _plain(config, optax.sgd(lr, config.momentum or None, config.nesterov))
  )


def _parle(config, lr, key):
  """Parle (``entropy_optax.parle``): --replicas replicas of Entropy-SGD (the entropy-sgd
  options), each with its own noise key and data order (the loop folds the replica index into
  the seed's keys), coupled to their average by --rho, scoped like gamma (--scoping, --gamma1;
  the authors' code scopes both by one rate) and capped by --gamma-max and --rho-max.
  """
  if config.scale_by_gamma:
    raise ConfigError("--optimizer parle steps by x - mu: drop --scale-by-gamma.")
  langevin = _langevin(config, key)
  del langevin["scale_by_gamma"]
  rho = config.rho
  if config.scoping != "none" and 0 < rho < float("inf"):
    rho = getattr(entropy_optax, f"{config.scoping}_scoping")(rho, config.gamma1)
  return entropy_optax.parle(
    lr,
    rho=rho,
    momentum=config.momentum,
    nesterov=config.nesterov,
    langevin_nesterov=config.nesterov,  # --nesterov sets both loops, as for entropy-sgd
    gamma_max=config.gamma_max or None,
    rho_max=config.rho_max or None,
    center=config.center,
    axis_name=_replica_axis(config),
    independent_noise=False,  # the loop's keys already differ per replica
    **langevin,
  )


@dataclasses.dataclass(frozen=True)
class OptimizerEntry:
  make: Callable[[RunConfig, Any, Any], Any]
  takes_grad_fn: bool
  takes_replicas: bool = False


OPTIMIZERS: dict[str, OptimizerEntry] = {
  "sgd": OptimizerEntry(_sgd, False, takes_replicas=True),
  "adam": OptimizerEntry(_adam, False),
  "entropy-sgd": OptimizerEntry(_entropy_sgd, True),
  "entropy-adam": OptimizerEntry(_entropy_adam, True),
  "entropy-sgd-lua": OptimizerEntry(_entropy_sgd_lua, True),
  "sgld": OptimizerEntry(_sgld, False),
  "smoothing-sgd": OptimizerEntry(_smoothing_sgd, True),
  "parle": OptimizerEntry(_parle, True, takes_replicas=True),
}


def learning_rate(config: RunConfig, steps_per_epoch: int):
  """The learning rate: a constant, or piecewise constant in outer steps (sgld: its own decay,
  ``experiments.optimizers.sgld.sgld_learning_rate``); ``steps_per_epoch`` is the run's
  ``Schedule.steps_per_epoch`` (``experiments.run.schema.schedule``)."""

  if config.optimizer == "sgld":
    return sgld.sgld_learning_rate(config.learning_rate, config.sgld_decay_power)
  if not config.lr_decay_outer_epochs:
    return config.learning_rate
  boundaries: dict[int, float] = {}
  for epoch in config.lr_decay_outer_epochs:
    step = max(1, round(epoch * steps_per_epoch))
    boundaries[step] = boundaries.get(step, 1.0) * config.lr_decay
  return optax.piecewise_constant_schedule(config.learning_rate, boundaries)


def optimizer_factory(config: RunConfig, steps_per_epoch: int) -> Callable[[Any], Any]:
  """``make(key)``: the optax optimizer of ``config`` with the Langevin noise key ``key``, on a
  run of ``steps_per_epoch`` outer steps an epoch (its ``Schedule.steps_per_epoch``).

  The factory is cached per (config, steps_per_epoch) so that equal runs share compilations.
  """
  return _factory(config, steps_per_epoch)


@dataclasses.dataclass(frozen=True)
class _Factory:
  config: RunConfig
  steps_per_epoch: int

  def __call__(self, key):
    lr = learning_rate(self.config, self.steps_per_epoch)
    return OPTIMIZERS[self.config.optimizer].make(self.config, lr, key)


def _factory(config: RunConfig, steps_per_epoch: int) -> _Factory:
  return _Factory(config, steps_per_epoch)
