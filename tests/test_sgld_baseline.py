"""The SGLD baseline: optax.noisy_sgd with the Langevin noise scale sqrt(2 lr_t T)."""

import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import mnist1d
from experiments.optimizers import sgld
from experiments.studies import sensitivity_training as st


@pytest.mark.parametrize("step", [0, 99])
def test_step_has_langevin_mean_and_noise_scale(step):
  eta, b, temperature, grad, size = 0.1, 0.55, 0.02, 0.5, 200_000
  tx = sgld.sgld(eta, b, temperature, key=3)
  params = jnp.zeros(size)
  state = tx.init(params)
  for _ in range(step):  # advance the counters (noise state's and schedule's)
    _, state = tx.update(jnp.zeros(size), state, params)
  updates, _ = tx.update(jnp.full(size, grad), state, params)
  lr = eta / (1 + step) ** b
  std_expected = np.sqrt(2 * lr * temperature)
  np.testing.assert_allclose(updates.mean(), -lr * grad, atol=5 * std_expected / np.sqrt(size))
  np.testing.assert_allclose(updates.std(), std_expected, rtol=5 * np.sqrt(2 / size))


def test_optax_noisy_sgd_default_decay_is_not_the_langevin_scale():
  """With its default gamma = 0.55, noisy_sgd's weight noise at t = 99 is ~3.5x too small."""
  eta, b, temperature = 0.1, 0.55, 0.02
  lr = eta / 100**b
  default = lr * np.sqrt(2 * temperature / eta / 100**0.55)  # lr sqrt(eta_n / (1 + t)^0.55)
  assert np.sqrt(2 * lr * temperature) / default > 3


def test_bad_arguments_name_them():
  with pytest.raises(ValueError, match="temperature"):
    sgld.sgld(0.1, 0.55, -1.0)


def test_runs_in_the_vmapped_grid():
  recipe = mnist1d.PRESETS["sgld"].config.replace(
    num_train=400,
    num_test=200,
    batch_size=50,
    num_seeds=2,
    outer_epochs=4,
    eval_every_effective_epochs=2,
  )
  curves = st.train_grid([recipe.replace(learning_rate=lr) for lr in (0.3, 1.0)])
  # Both step sizes learn: the test loss falls below chance level's ln(10) = 2.30.
  assert curves.val_loss.shape == (2, 2, 2) and curves.val_loss[..., -1].max() < 2.2
