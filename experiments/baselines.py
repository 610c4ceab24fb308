"""The baselines beside Entropy-SGD beyond the paper's tables: ``build.OPTIMIZERS`` entries.

* ``sgld``: the paper's App. C.1 plain SGLD (``experiments.sgld_baseline``).
* ``smoothing_sgd``: SGD on the Gaussian-smoothed loss E f(x + sigma eps)
  (``entropy_optax.gaussian_smoothing``) at Entropy-SGD's cost, L gradient evaluations per update.

Each is ``make(config, lr, key)`` as ``build.OptimizerEntry`` takes it.
"""

from __future__ import annotations

from experiments.config import ConfigError, RunConfig


def _with_weight_decay(config: RunConfig, base):
  import optax  # pylint: disable=g-import-not-at-top

  if config.weight_decay:
    return optax.chain(optax.add_decayed_weights(config.weight_decay), base)
  return base


def sgld(config, lr, key):
  """The paper's App. C.1 SGLD baseline (``experiments.sgld_baseline``): step size
  learning_rate / (1 + t)^sgld_decay_power and noise sqrt(2 lr_t T) N(0, I), no momentum.

  The learning-rate drops (--lr-decay, --lr-decay-outer-epochs) are not used: the step size
  follows App. C.1's own decay, so that a job setting drops for every run can include it.
  """
  from experiments import sgld_baseline  # pylint: disable=g-import-not-at-top

  del lr
  return _with_weight_decay(
    config,
    sgld_baseline.sgld(
      config.learning_rate, config.sgld_decay_power, config.sgld_temperature, key=key
    ),
  )


def smoothing_sgd(config, lr, key):
  """SGD (momentum, Nesterov) on the gradient of the Gaussian-smoothed loss E f(x + sigma eps).

  Equal cost with Entropy-SGD(L): the loop evaluates the gradient at x on mini-batch 0 anyway
  (Langevin step 0, the train loss); ``gaussian_smoothing`` averages L - 1 gradients at
  x + sigma eps_k on mini-batches 1..L-1 and does not use the one at x (no sample of the
  smoothed gradient): L gradient evaluations per update, as Entropy-SGD(L).
  """
  import optax  # pylint: disable=g-import-not-at-top

  import entropy_optax  # pylint: disable=g-import-not-at-top

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
    smoothed, _with_weight_decay(config, optax.sgd(lr, config.momentum or None, config.nesterov))
  )
