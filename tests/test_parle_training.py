"""Parle and data-parallel SGD in the training loop (``--replicas``): the replica axis, each
replica's data order and noise, the average evaluated with BatchNorm re-estimated, the registry
and the schema."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import entropy_optax
from experiments.launch import components
from experiments.optimizers import registry
from experiments.run import distributed
from experiments.run.schema import ConfigError, RunConfig
from experiments.trainer import batchnorm, loop, loop_state, steps, tasks
from tests import test_training as t

# Runs of the harness end to end: CI runs them, `pytest -m "not slow"` leaves them out.
pytestmark = pytest.mark.slow

REPLICAS = 3


def parle_tx(key):
  return entropy_optax.parle(
    0.5,
    rho=1.0,
    num_langevin_steps=t.L,
    gamma=0.03,
    axis_name=loop_state.REPLICA_AXIS,
    independent_noise=False,
    key=key,
  )


def dp_sgd_tx(key):
  del key
  return optax.chain(optax.sgd(0.1, 0.9), entropy_optax.replica_average(loop_state.REPLICA_AXIS))


class BNNet(nn.Module):
  """tests/test_training.py's TinyNet with a ``dropout`` field (BatchNorm re-estimation turns
  it off, as the authors' codes do)."""

  dropout: float = 0.2

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.8)(nn.Dense(16)(x)))
    return nn.Dense(2)(nn.Dropout(self.dropout, deterministic=not train)(x))


MODEL = BNNet()
TASK = tasks.Task(before_eval=batchnorm.BatchNormReestimation(MODEL, batch_size=128))


@pytest.fixture(scope="module")
def parle_run():
  cfg = t.config(
    num_steps=10, eval_every_steps=10, replicas=REPLICAS, num_seeds=2, checkpoint_every_steps=0
  )
  return cfg, loop.train(cfg, MODEL, parle_tx, t.tiny_data(), task=TASK)


def test_replicas_have_their_own_keys_and_data_and_the_average_is_evaluated(parle_run):
  cfg, result = parle_run
  state = result.state
  assert jax.tree.leaves(state.params)[0].shape[:2] == (2, REPLICAS)  # seeds, replicas
  # Same initial weights, own data order, dropout and noise keys: the replicas move apart.
  for key in (state.data_key, state.key, optax.tree.get(state.opt_state, "langevin_key")):
    assert len({tuple(np.asarray(k).ravel()) for k in key[0]}) == REPLICAS
  last = result.records[-1]
  assert last["replica_spread"] > 0 and last["elastic_rho"] == 1.0
  # What the loop evaluated: the replicas' average, BatchNorm re-estimated there.
  _, _, val_x, val_y = t.tiny_data()
  train_x = t.tiny_data()[0]

  def evaluate_mean(seed_state):
    center = TASK.before_eval(loop_state.replica_mean(seed_state), train_x, None)
    return steps.evaluate(center, val_x, val_y, jnp.ones(len(val_x)), len(val_x))

  want = jax.jit(jax.vmap(evaluate_mean))(state)
  got = [r["val_error"] for r in result.records if r["step"] == 10]
  np.testing.assert_allclose(got, want["val_error"], atol=1e-6)
  spread = jnp.std(jax.tree.leaves(state.params)[0], axis=1)
  assert float(jnp.max(spread)) > 0


def test_data_parallel_sgd_replicas_stay_identical():
  cfg = t.config(
    num_steps=10, langevin_steps=1, replicas=REPLICAS, checkpoint_every_steps=0, eval_every_steps=0
  )
  result = loop.train(cfg, MODEL, dp_sgd_tx, t.tiny_data())
  for leaf in jax.tree.leaves(result.state.params):
    assert all(np.array_equal(leaf[0], leaf[r]) for r in range(1, REPLICAS))
  assert result.records[-1]["replica_spread"] > 0  # before each averaging they differed


def test_replicas_need_one_device():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), (distributed.DATA_AXIS,))
  with pytest.raises(ValueError, match="vmapped on one device"):
    loop.train(t.config(replicas=2), MODEL, parle_tx, t.tiny_data(), mesh=mesh)


RECIPE = RunConfig(
  dataset="mnist1d", model="mlp1d", optimizer="parle", langevin_steps=3, replicas=4, rho=2.0
)


def test_registry_parle_and_the_schema():
  tx = registry.optimizer_factory(RECIPE, 4000 // RECIPE.batch_size)(jax.random.PRNGKey(0))
  params = jnp.zeros((4, 2))
  state = jax.vmap(tx.init, axis_name=loop_state.REPLICA_AXIS)(params)
  assert optax.tree.get(state, "elastic_count").shape == (4,)
  # Components: the replicas' average is always evaluated with BatchNorm re-estimated.
  assert components.make_task(RECIPE, MODEL).before_eval is not None
  with pytest.raises(ConfigError, match="--replicas 4 needs an optimizer that couples"):
    components.validate(RECIPE.replace(optimizer="adam", langevin_steps=1))
  with pytest.raises(ConfigError, match="--rho must be >= 0"):
    components.validate(RECIPE.replace(rho=-1.0))
  components.validate(RECIPE.replace(rho=float("inf")))


def test_registry_parle_with_one_replica_is_entropy_sgd():
  """--replicas 1: no coupling (axis_name None); the same updates as --optimizer entropy-sgd."""
  one = RECIPE.replace(replicas=1, gamma0=0.1)
  make = lambda c: registry.optimizer_factory(c, 4000 // c.batch_size)(jax.random.PRNGKey(1))
  grad_fn = lambda p, k: 2.0 * (p - k)
  results = []
  for tx in (make(one), make(one.replace(optimizer="entropy-sgd"))):
    params = jnp.ones(3)
    state = tx.init(params)
    update = jax.jit(functools.partial(tx.update, grad_fn=grad_fn))
    for _ in range(3):
      updates, state = update(grad_fn(params, 0), state, params)
      params = optax.apply_updates(params, updates)
    results.append(params)
  np.testing.assert_array_equal(*results)
