"""The paper's plain-SGLD baseline (App. C.1): x <- x - lr_t grad f + sqrt(2 lr_t T) N(0, I).

The learning rate decays as lr_t = eta / (1 + t)^b (Welling & Teh 2011, as the paper's App. C.1);
the noise keeps the Langevin scale sqrt(2 lr_t T) at every step, so that the iterates sample
exp(-f / T) as lr_t -> 0 (for f the mean training loss over N examples, T = 1/N is the Bayesian
posterior of Welling & Teh; the paper's App. A writes the step as eta_t/2 grad + sqrt(eta_t) eps).

``optax.noisy_sgd`` is the right transformation *only* with its noise decay reversed: it adds
N(0, eta_n / (1 + t)^gamma_n) to the gradient before scaling by lr_t, so the weights get noise
lr_t sqrt(eta_n) (1 + t)^(-gamma_n/2). The Langevin scale sqrt(2 lr_t T) needs
eta_n = 2 T / eta and gamma_n = -b (the gradient-noise variance grows as lr_t shrinks). With its
default gamma_n = 0.55 > 0 the noise on the weights falls like lr_t (1+t)^-0.275, faster than
sqrt(lr_t): the temperature goes to 0, annealed noise rather than Langevin sampling. ``sgld``
below is ``noisy_sgd`` with that mapping (its count starts at 1 = 1 + t, as the schedule's t).

Examples:
  >>> from experiments.optimizers.sgld import sgld, PAPER_RECIPE
  >>> tx = sgld(**PAPER_RECIPE(num_train=4000), key=0)
"""

from __future__ import annotations

import jax
import optax


def sgld_learning_rate(learning_rate: float, decay_power: float) -> optax.Schedule:
  """lr_t = learning_rate / (1 + t)^decay_power, t = 0 at the first step."""
  return lambda count: learning_rate / (1.0 + count) ** decay_power


def sgld(
  learning_rate: float, decay_power: float, temperature: float, key: jax.Array | int = 0
) -> optax.GradientTransformation:
  """SGLD at temperature T with lr eta / (1 + t)^b, as ``optax.noisy_sgd``.

  Args:
    learning_rate: eta, the initial step size.
    decay_power: b >= 0 (Welling & Teh: 0.55; 0 keeps the step size fixed).
    temperature: T >= 0; the weights get sqrt(2 lr_t T) N(0, I) per step.
    key: PRNG key (typed, or raw uint32[2] as ``jax.random.PRNGKey`` makes) or seed of the noise.

  Returns:
    An optax transformation (plain SGD, no momentum, plus the noise).
  """
  # Python numbers are checked; traced ones (a vmapped grid) pass.
  checks = [
    ("learning_rate", learning_rate, 0.0),
    ("decay_power", decay_power, None),
    ("temperature", temperature, None),
  ]
  for name, value, low in checks:
    if isinstance(value, (int, float)) and not (value > low if low is not None else value >= 0):
      raise ValueError(f"{name} must be {'> 0' if low is not None else '>= 0'}, got {value}.")
  if not isinstance(key, int) and jax.numpy.shape(key) == (2,):
    key = jax.random.wrap_key_data(key)  # a raw key: optax takes typed keys or seeds only
  return optax.noisy_sgd(
    sgld_learning_rate(learning_rate, decay_power),
    eta=2.0 * temperature / learning_rate,
    gamma=-decay_power,
    key=key,
  )


def PAPER_RECIPE(num_train: int, learning_rate: float = 0.1) -> dict:  # pylint: disable=C0103
  """The preset: the paper's App. C.1 form; its eta and b came from a search it does not give.

  b = 0.55 (Welling & Teh's choice) and T = 1 / num_train (the posterior of the mean loss);
  eta = 0.1, the SGD baselines' initial learning rate.
  """
  return {"learning_rate": learning_rate, "decay_power": 0.55, "temperature": 1.0 / num_train}
