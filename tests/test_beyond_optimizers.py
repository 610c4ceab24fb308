"""The harness's SGLD and smoothing-SGD entries: SGLD's noise against its formula, smoothing's
cost (exactly L gradient evaluations per outer step, each on its own mini-batch), presets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import configs
from experiments.launch import components
from experiments.optimizers import registry as optimizers
from experiments.run.schema import ConfigError, RunConfig
from experiments.trainer import loop_state, steps, tasks


def test_sgld_entry_steps_by_the_decayed_rate_with_langevin_noise():
  eta, b, temperature, grad, size, t = 0.5, 0.55, 1e-3, 0.2, 100_000, 9
  config = RunConfig(
    optimizer="sgld", learning_rate=eta, sgld_decay_power=b, sgld_temperature=temperature
  )
  # --lr-decay* are not used: the schedule handed in is ignored.
  tx = optimizers.OPTIMIZERS["sgld"].make(config, lambda count: 123.0, jax.random.PRNGKey(0))
  params = jnp.zeros(size)
  state = tx.init(params)
  for _ in range(t):
    _, state = tx.update(jnp.zeros(size), state, params)
  updates, _ = tx.update(jnp.full(size, grad), state, params)
  lr = eta / (1 + t) ** b
  std = np.sqrt(2 * lr * temperature)
  np.testing.assert_allclose(np.mean(updates), -lr * grad, atol=5 * std / np.sqrt(size))
  np.testing.assert_allclose(np.std(updates), std, rtol=5 * np.sqrt(2 / size))


class _Linear:
  """A model y = x w (no Flax needed): the loop's ``apply``/``init`` contract."""

  def init(self, rngs, x, train):
    del rngs, train
    return {"params": {"w": jnp.ones((x.shape[-1], 3))}}

  def apply(self, variables, x, train, **kwargs):
    del train, kwargs
    return x @ variables["params"]["w"]


@pytest.mark.parametrize("optimizer", ["smoothing-sgd", "entropy-sgd"])
def test_one_outer_step_costs_exactly_l_gradient_evaluations(optimizer):
  num_langevin_steps = 4
  config = RunConfig(optimizer=optimizer, langevin_steps=num_langevin_steps, smoothing_sigma=0.1)
  batches: list[int] = []

  def counting_loss(logits, labels):
    # Mini-batch k holds labels k: the forward pass reports which mini-batch it evaluates.
    jax.debug.callback(lambda label: batches.append(int(label)), labels[0])
    return tasks.cross_entropy(logits, labels)

  task = tasks.Task(loss_fn=counting_loss)
  make_tx = optimizers.optimizer_factory(config, 100 // config.batch_size)
  xs = jnp.ones((num_langevin_steps, 5, 2))
  ys = jnp.broadcast_to(jnp.arange(num_langevin_steps)[:, None], (num_langevin_steps, 5))
  state = loop_state.init_state(_Linear(), make_tx, task, xs[0], jnp.uint32(0))
  step = jax.jit(lambda s: steps.train_step(s, xs, ys, task=task))
  state, _ = step(state)
  jax.effects_barrier()
  # The gradient at x on mini-batch 0, then one evaluation on each of the L - 1 others.
  assert sorted(batches) == list(range(num_langevin_steps))
  assert np.all(np.isfinite(jax.tree.leaves(state.params)[0]))


def test_smoothing_sgd_needs_two_langevin_steps():
  config = RunConfig(optimizer="smoothing-sgd", langevin_steps=1)
  with pytest.raises(ConfigError, match="--langevin-steps >= 2"):
    optimizers.OPTIMIZERS["smoothing-sgd"].make(config, 0.1, jax.random.PRNGKey(0))


def test_sgld_takes_one_gradient_per_update():
  with pytest.raises(
    ConfigError, match="--langevin-steps 2 needs an optimizer that makes one update"
  ):
    components.validate(RunConfig(optimizer="sgld", langevin_steps=2))
  with pytest.raises(ConfigError, match="--sgld-temperature must be >= 0"):
    components.validate(RunConfig(optimizer="sgld", sgld_temperature=-1.0))


def test_sgld_presets_carry_the_papers_app_c1_results():
  assert configs.paper_result("mnist", "lenet_bn", "sgld") == "0.63 ± 0.1 (300)"
  assert configs.paper_result("cifar10", "allcnn_bn", "sgld") == "9.89 ± 0.11 (500)"
  mnist = configs.mnist.PRESETS["sgld"]
  cifar = configs.cifar10.PRESETS["sgld"]
  assert (mnist.config.outer_epochs, cifar.config.outer_epochs) == (300, 500)
  assert mnist.config.sgld_temperature == pytest.approx(1 / 60_000)
  assert "App. C.1" in mnist.description and "App. C.1" in cifar.description


@pytest.mark.parametrize(
  ("optimizer", "langevin_steps", "outer_steps"), [("smoothing-sgd", 3, 4), ("sgld", 1, 12)]
)
def test_runs_through_the_harness_at_equal_effective_epochs(
  tmp_path, optimizer, langevin_steps, outer_steps
):
  from experiments.launch import jobs  # pylint: disable=import-outside-toplevel
  from experiments.run.run_options import RunOptions  # pylint: disable=import-outside-toplevel

  config = configs.mnist1d.PRESETS[optimizer].config.replace(
    langevin_steps=langevin_steps,
    outer_epochs=3 / langevin_steps,
    batch_size=50,
    num_train=200,
    num_test=100,
    num_seeds=1,
    checkpoint_every_evals=0,
  )
  run = jobs.run_experiment(
    config, RunOptions(workdir=str(tmp_path / "run"), progress=False), log=lambda _: None
  )
  # 3 effective epochs of 4 mini-batches each: 12 gradient evaluations, L per update.
  assert run.results["effective_epochs"] == 3 and run.results["outer_steps"] == outer_steps
  assert np.isfinite(run.results["test_error_mean"])
