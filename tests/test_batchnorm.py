"""BatchNorm re-estimation (experiments/trainer/batchnorm.py) against statistics computed by
hand."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.trainer import batchnorm, loop_state, tasks

EPS = 1e-5


class TwoBN(nn.Module):
  """Dense -> BN -> ReLU -> dropout -> Dense -> BN -> Dense, with a dropout field like the
  experiments' models (turned off by ``without_dropout``)."""

  dropout: float = 0.5
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x, *, train: bool):
    bn = lambda name: nn.BatchNorm(
      use_running_average=not train, momentum=self.bn_momentum, epsilon=EPS, name=name
    )
    x = nn.relu(bn("bn1")(nn.Dense(5, use_bias=False, name="d1")(x)))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = bn("bn2")(nn.Dense(4, name="d2")(x))
    return nn.Dense(2, name="out")(x)


def by_hand(params, x, batch_size):
  """The inputs of bn1 and bn2 over all of x, fed in batches in training mode without dropout,
  and their mean and biased variance (float64)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  h1s, h2s = [], []
  for start in range(0, len(x), batch_size):
    xb = np.asarray(x[start : start + batch_size], np.float64)
    h1 = xb @ p["d1"]["kernel"]
    z = (h1 - h1.mean(0)) / np.sqrt(h1.var(0) + EPS) * p["bn1"]["scale"] + p["bn1"]["bias"]
    h2 = np.maximum(z, 0) @ p["d2"]["kernel"] + p["d2"]["bias"]
    h1s.append(h1)
    h2s.append(h2)
  h1, h2 = np.concatenate(h1s), np.concatenate(h2s)
  return {"bn1": (h1.mean(0), h1.var(0)), "bn2": (h2.mean(0), h2.var(0))}


@pytest.mark.parametrize("bn_momentum", [0.9, 0.99])
def test_running_stats_become_the_sets_activation_moments(bn_momentum):
  """After re-estimation the running mean/var of each layer are its inputs' mean/var over the
  whole set (300 examples in batches of 64, the last one 44), whatever they were before and
  whatever BatchNorm's momentum; the codes' running average over the batches would instead
  keep momentum^batches of the old statistics and weight the last batches most."""
  model = TwoBN(bn_momentum=bn_momentum)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(300, 3)) + 2.0, jnp.float32)
  variables = model.init(jax.random.key(0), x[:2], train=False)
  params = variables["params"]
  # Scale/bias away from 1/0 and stale running statistics, so that nothing holds by accident.
  params = jax.tree_util.tree_map_with_path(
    lambda path, a: a + 0.3 if "bn" in jax.tree_util.keystr(path) else a, params
  )
  stale = jax.tree.map(lambda a: a + 7.0, variables["batch_stats"])
  stats = jax.jit(
    lambda p, s, x: batchnorm.reestimate_batch_stats(
      batchnorm.without_dropout(model).apply, p, s, x, batch_size=64
    )
  )(params, stale, x)
  want = by_hand(params, np.asarray(x), 64)
  for layer, (mean, var) in want.items():
    np.testing.assert_allclose(stats[layer]["mean"], mean, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(stats[layer]["var"], var, rtol=2e-5, atol=2e-6)
  # In evaluation mode bn1 now normalises its input over the set to mean 0, variance 1.
  h1 = np.asarray(x @ params["d1"]["kernel"])
  z = (h1 - stats["bn1"]["mean"]) / np.sqrt(stats["bn1"]["var"] + EPS)
  np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
  np.testing.assert_allclose(z.var(0), 1, rtol=1e-3)


def test_the_loop_hook_sets_the_state_statistics_and_keeps_the_rest():
  model = TwoBN()
  x = jnp.asarray(np.random.default_rng(1).normal(size=(130, 3)), jnp.float32)
  state = loop_state.init_state(
    model, lambda key: optax.sgd(0.1), tasks.Task(), x[:1], jnp.uint32(0)
  )
  state = state.replace(batch_stats=jax.tree.map(lambda a: a - 3.0, state.batch_stats))
  hook = batchnorm.BatchNormReestimation(model, batch_size=32)
  new = jax.jit(hook)(state, x, jnp.zeros(130, jnp.int32))
  want = by_hand(state.params, np.asarray(x), 32)
  np.testing.assert_allclose(new.batch_stats["bn2"]["var"], want["bn2"][1], rtol=2e-5)
  np.testing.assert_allclose(new.batch_stats["bn1"]["mean"], want["bn1"][0], rtol=2e-5, atol=2e-6)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), new.params, state.params))
  assert int(new.step) == int(state.step)


class NoBN(nn.Module):
  @nn.compact
  def __call__(self, x, *, train: bool):
    del train
    return nn.Dense(2)(x)


def test_without_dropout_and_models_without_batchnorm():
  assert batchnorm.without_dropout(TwoBN(dropout=0.5)).dropout == 0.0
  assert batchnorm.without_dropout(NoBN()) == NoBN()
  state = loop_state.init_state(
    NoBN(), lambda key: optax.sgd(0.1), tasks.Task(), jnp.ones((1, 3)), jnp.uint32(0)
  )
  assert batchnorm.BatchNormReestimation(NoBN())(state, jnp.ones((4, 3)), None) is state
