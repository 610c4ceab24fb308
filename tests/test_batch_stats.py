"""The library's BatchNorm re-estimation (``entropy_optax.flax.reestimate_batch_stats`` for Linen,
``nnx_reestimate_batch_stats`` for NNX) against each layer's input moments computed by hand, and
the stacking check of ``take_batch(..., num_batches=L)``."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from entropy_optax.flax import nnx_reestimate_batch_stats, reestimate_batch_stats, take_batch

EPS = 1e-5


def by_hand(w1, scale1, bias1, w2, b2, x, batch_size):
  """The inputs of the two BatchNorms of Dense -> BN -> ReLU -> Dense -> BN over all of ``x``,
  fed in batches in training mode (BN 1 normalises each batch with its own moments), and
  their mean and biased variance, in float64."""
  w1, scale1, bias1, w2, b2 = (np.asarray(a, np.float64) for a in (w1, scale1, bias1, w2, b2))
  h1s, h2s = [], []
  for start in range(0, len(x), batch_size):
    h1 = np.asarray(x[start : start + batch_size], np.float64) @ w1
    z = (h1 - h1.mean(0)) / np.sqrt(h1.var(0) + EPS) * scale1 + bias1
    h1s.append(h1)
    h2s.append(np.maximum(z, 0) @ w2 + b2)
  h1, h2 = np.concatenate(h1s), np.concatenate(h2s)
  return (h1.mean(0), h1.var(0)), (h2.mean(0), h2.var(0))


def inputs(num=300, seed=0):
  return np.asarray(np.random.default_rng(seed).normal(size=(num, 3)) + 2.0, np.float32)


class LinenTwoBN(nn.Module):
  momentum: float = 0.9

  @nn.compact
  def __call__(self, x, train: bool):
    bn = lambda name: nn.BatchNorm(not train, momentum=self.momentum, epsilon=EPS, name=name)
    x = nn.relu(bn("bn1")(nn.Dense(5, use_bias=False, name="d1")(x)))
    return bn("bn2")(nn.Dense(4, name="d2")(x))


@pytest.mark.parametrize("momentum", [0.9, 0.99])
def test_linen_statistics_are_the_layer_inputs_moments_over_the_set(momentum):
  """300 examples in batches of 64 (the last 44): each layer's statistics become its inputs'
  mean and variance over the whole set, whatever they were and whatever BatchNorm's momentum,
  under jit, with the dtypes kept."""
  model, x = LinenTwoBN(momentum), inputs()
  variables = model.init(jax.random.key(0), x[:2], train=False)
  params = jax.tree_util.tree_map_with_path(  # scale/bias away from 1/0: nothing holds by chance
    lambda path, a: a + 0.3 if "bn" in jax.tree_util.keystr(path) else a, variables["params"]
  )
  stale = jax.tree.map(lambda a: a + 7.0, variables["batch_stats"])
  apply_fn = lambda v, xb, **kw: model.apply(v, xb, train=True, **kw)
  stats = jax.jit(lambda p, s, x: reestimate_batch_stats(apply_fn, p, s, x, batch_size=64))(
    params, stale, x
  )
  p = params
  want = by_hand(p["d1"]["kernel"], p["bn1"]["scale"], p["bn1"]["bias"], p["d2"]["kernel"],
                 p["d2"]["bias"], x, 64)  # fmt: skip
  for layer, (mean, var) in zip(("bn1", "bn2"), want):
    np.testing.assert_allclose(stats[layer]["mean"], mean, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(stats[layer]["var"], var, rtol=2e-5, atol=2e-6)
    assert stats[layer]["mean"].dtype == stale[layer]["mean"].dtype


class NNXTwoBN(nnx.Module):
  """Dense -> BN -> ReLU -> call-time dropout -> Dense -> BN, flax's examples' call style."""

  def __init__(self, rngs, momentum=0.99):
    self.d1 = nnx.Linear(3, 5, use_bias=False, rngs=rngs)
    self.bn1 = nnx.BatchNorm(5, momentum=momentum, epsilon=EPS, rngs=rngs)
    self.dropout = nnx.Dropout(0.5)
    self.d2 = nnx.Linear(5, 4, rngs=rngs)
    self.bn2 = nnx.BatchNorm(4, momentum=momentum, epsilon=EPS, rngs=rngs)

  def __call__(self, x, rngs):
    return self.bn2(self.d2(self.dropout(nnx.relu(self.bn1(self.d1(x))), rngs=rngs)))


def forward(model, x):
  return model(x, None)


def test_nnx_statistics_in_place_weights_mode_and_views_kept():
  """The model's statistics become the hand-computed moments (dropout off, BN in training mode
  inside); the weights, the model's evaluation mode and its views are kept, and the views (the
  tutorial's ``eval_model``) see the new statistics; a second call compiles nothing new."""
  model, x = NNXTwoBN(nnx.Rngs(0)), inputs(seed=1)
  model.bn1.scale[...] = model.bn1.scale[...] + 0.3
  model.bn1.bias[...] = model.bn1.bias[...] - 0.2
  model.eval()
  eval_model = nnx.view(model, deterministic=True, use_running_average=True)
  params = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  nnx_reestimate_batch_stats(model, x, forward=forward, batch_size=64)
  want = by_hand(model.d1.kernel[...], model.bn1.scale[...], model.bn1.bias[...],
                 model.d2.kernel[...], model.d2.bias[...], x, 64)  # fmt: skip
  for bn, (mean, var) in zip((eval_model.bn1, eval_model.bn2), want):
    np.testing.assert_allclose(bn.mean[...], mean, rtol=5e-5, atol=5e-6)
    np.testing.assert_allclose(bn.var[...], var, rtol=5e-5, atol=5e-6)
  jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(model, nnx.Param)), params)
  assert model.bn1.use_running_average and model.dropout.deterministic
  from entropy_optax import _batch_stats  # pylint: disable=g-import-not-at-top

  compiled = _batch_stats._nnx_moments._cache_size()
  nnx_reestimate_batch_stats(model, x, forward=forward, batch_size=64)
  for _ in range(2):  # an inline lambda is a new object at every call: compiled once
    nnx_reestimate_batch_stats(model, x, forward=lambda m, x: m(x, None), batch_size=64)
  assert _batch_stats._nnx_moments._cache_size() == compiled + 1


def test_nnx_model_without_batchnorm_and_bad_inputs():
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  before = np.array(model.kernel[...])
  nnx_reestimate_batch_stats(model, inputs())  # nothing to re-estimate: a no-op
  np.testing.assert_array_equal(model.kernel[...], before)
  bn = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="at least one example"):
    nnx_reestimate_batch_stats(bn, np.zeros((0, 3), np.float32))
  with pytest.raises(ValueError, match="common leading axis"):
    nnx_reestimate_batch_stats(bn, {"a": np.zeros((4, 3)), "b": np.zeros((5, 3))})
  with pytest.raises(ValueError, match="batch_size must be a positive int"):
    nnx_reestimate_batch_stats(bn, inputs(), batch_size=0)


def test_take_batch_checks_the_stacking_against_l():
  """An unstacked batch, or fewer than L stacked, is refused before any model sees it, with a
  message naming stack_batches and the leading axis of length L."""
  stacked = {"image": jnp.zeros((5, 8, 28, 28, 1)), "label": jnp.zeros((5, 8), jnp.int32)}
  assert take_batch(stacked, 0, num_batches=5)["image"].shape == (8, 28, 28, 1)
  unstacked = take_batch(stacked, 0)
  with pytest.raises(ValueError, match=r"shape \(8, 28, 28, 1\).*not L = 5.*stack_batches"):
    take_batch(unstacked, 0, num_batches=5)
  too_few = jax.tree.map(lambda a: a[:3], stacked)
  with pytest.raises(ValueError, match=r"leading axis of length 3, not L = 5.*\(5, batch_size"):
    take_batch(too_few, 0, num_batches=5)
  with pytest.raises(ValueError, match="no arrays"):
    take_batch({}, 0, num_batches=5)
  # Under jit the check runs at trace time, on the shapes.
  with pytest.raises(ValueError, match="stack_batches"):
    jax.jit(lambda b: take_batch(b, 0, num_batches=5))(unstacked)
