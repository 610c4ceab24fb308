"""Tests of the feedforward models (experiments/models/feedforward.py, mnist1d_nets.py and
base.py): parameter counts, BatchNorm, dropout, dtypes.

Behaviour is tested on narrow versions of the models (same code, fewer
channels) so that the tests run in seconds on a CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.models import feedforward as models
from experiments.models import mnist1d_nets

_INPUTS = {
  "allcnn_bn": (32, 32, 3),
  "allcnn_bn_authors": (32, 32, 3),
  "mnistfc": (28, 28, 1),
  "lenet_bn": (28, 28, 1),
  "mlp1d": (40,),
  "cnn1d": (40,),
}


def _conv(k, cin, cout, bias=False):
  return k * k * cin * cout + (cout if bias else 0)


def _bn(*widths):
  return 2 * sum(widths)  # scale and bias per channel.


# Counted by hand from the architectures; layers followed by BatchNorm have no bias.
_EXPECTED_COUNTS = {
  "allcnn_bn": (
    _conv(3, 3, 96)
    + 2 * _conv(3, 96, 96)
    + _conv(3, 96, 192)
    + 3 * _conv(3, 192, 192)
    + _conv(1, 192, 192)
    + _conv(1, 192, 10)
    + _bn(96, 96, 96, 192, 192, 192, 192, 192, 10)
  ),
  # The authors' codes' layout: the 8th conv is 3x3 (the paper's ~1.67M).
  "allcnn_bn_authors": (
    _conv(3, 3, 96)
    + 2 * _conv(3, 96, 96)
    + _conv(3, 96, 192)
    + 4 * _conv(3, 192, 192)
    + _conv(1, 192, 10)
    + _bn(96, 96, 96, 192, 192, 192, 192, 192, 10)
  ),
  "mnistfc": 784 * 1024 + 1024 * 1024 + (1024 * 10 + 10) + _bn(1024, 1024),
  "lenet_bn": (
    _conv(5, 1, 20) + _conv(5, 20, 50) + 50 * 2 * 2 * 500 + (500 * 10 + 10) + _bn(20, 50, 500)
  ),
  # The published MNIST-1D benchmark models (with biases, no BatchNorm).
  "mlp1d": (40 * 100 + 100) + (100 * 100 + 100) + (100 * 10 + 10),
  "cnn1d": (5 * 25 + 25) + 2 * (3 * 25 * 25 + 25) + (5 * 25 * 10 + 10),
}


def _abstract_init(model, shape):
  """Variables' shapes and dtypes without running (or compiling) the model."""
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, *shape)), train=False))


def _random_variables(model, shape, seed=0):
  """Variables of ``model`` drawn with numpy, in the layout ``model.init`` gives.

  Instead of ``model.init``: compiling the random initialisers takes seconds on
  CPU, and the tests need variables of the right structure, not flax's init.
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    if "kernel" in name:  # scaled by 1/sqrt(fan_in) to keep activations O(1).
      return rng.normal(size=leaf.shape).astype(leaf.dtype) / np.sqrt(np.prod(leaf.shape[:-1]))
    if "var" in name:
      return 1.0 + rng.uniform(size=leaf.shape).astype(leaf.dtype)
    if "scale" in name:
      return 1.0 + 0.2 * rng.normal(size=leaf.shape).astype(leaf.dtype)
    return 0.2 * rng.normal(size=leaf.shape).astype(leaf.dtype)  # bias, mean.

  return jax.tree_util.tree_map_with_path(draw, _abstract_init(model, shape))


def _num_params(variables):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_parameter_count_and_output_shape(name):
  model = models.create_model(name)
  variables = _abstract_init(model, _INPUTS[name])
  assert _num_params(variables) == _EXPECTED_COUNTS[name]
  out = jax.eval_shape(
    lambda v: model.apply(v, jnp.zeros((2, *_INPUTS[name])), train=False), variables
  )
  assert out.shape == (2, 10) and out.dtype == jnp.float32


def test_allcnn_counts():
  """~1.37M as All-CNN-C; the authors' variant (8th conv 3x3) is the paper's ~1.6M."""
  assert _EXPECTED_COUNTS["allcnn_bn"] == 1_370_996
  authors = _abstract_init(models.AllCNNBN(authors_code=True), (32, 32, 3))
  assert _num_params(authors) == _EXPECTED_COUNTS["allcnn_bn"] + _conv(3, 192, 192) - _conv(
    1, 192, 192
  )
  assert _num_params(authors) == 1_665_908 == _EXPECTED_COUNTS["allcnn_bn_authors"]


def test_unknown_model_lists_valid_names():
  names = "allcnn_bn, allcnn_bn_authors, cnn1d, lenet_bn, mlp1d, mnistfc"
  with pytest.raises(ValueError, match=names):
    models.create_model("resnet")
  assert models.create_model("allcnn_bn", dropout=0.3).dropout == 0.3


def _small_fc(**kw):
  return models.MnistFC(hidden=8, num_layers=1, **kw)


def test_batchnorm_train_updates_running_stats_eval_uses_them():
  model = _small_fc(input_dropout=0.0, dropout=0.0)
  x = np.random.default_rng(1).normal(size=(16, 28, 28, 1)).astype(np.float32) * 2 + 0.5
  abstract_stats = _abstract_init(model, x.shape[1:])["batch_stats"]["BatchNorm_0"]
  assert set(abstract_stats) == {"mean", "var"}
  variables = _random_variables(model, x.shape[1:])
  params, old = variables["params"], variables["batch_stats"]["BatchNorm_0"]

  _, updated = model.apply(variables, x, train=True, mutable=["batch_stats"])
  h = x.reshape(16, -1).astype(np.float64) @ params["Dense_0"]["kernel"]
  new = updated["batch_stats"]["BatchNorm_0"]
  momentum = model.bn_momentum
  np.testing.assert_allclose(
    new["mean"], momentum * old["mean"] + (1 - momentum) * h.mean(0), rtol=1e-4, atol=1e-5
  )
  np.testing.assert_allclose(
    new["var"], momentum * old["var"] + (1 - momentum) * h.var(0), rtol=1e-4
  )

  # Eval: normalised with the running averages, by hand.
  variables = {"params": params, "batch_stats": updated["batch_stats"]}
  bn = params["BatchNorm_0"]
  hidden = (h - new["mean"]) / np.sqrt(new["var"] + 1e-5) * bn["scale"] + bn["bias"]
  expected = np.maximum(hidden, 0) @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]
  logits = model.apply(variables, x, train=False)
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
  # Eval does not depend on the rest of the batch; train does.
  np.testing.assert_allclose(
    model.apply(variables, x[:3], train=False), logits[:3], rtol=1e-5, atol=1e-6
  )
  train_logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  train_few, _ = model.apply(variables, x[:3], train=True, mutable=["batch_stats"])
  assert not np.allclose(train_few, train_logits[:3], atol=1e-3)


def test_batchnorm_axis_name_averages_across_devices():
  """With axis_name, stats of a batch split over a mapped axis equal the whole batch's."""
  x = np.random.default_rng(2).normal(size=(8, 28, 28, 1)).astype(np.float32) + 1.0
  variables = _random_variables(_small_fc(), x.shape[1:])
  whole = _small_fc(input_dropout=0.0, dropout=0.0)
  split = _small_fc(input_dropout=0.0, dropout=0.0, axis_name="data")
  logits, stats = whole.apply(variables, x, train=True, mutable=["batch_stats"])
  logits_split, stats_split = jax.vmap(
    lambda xs: split.apply(variables, xs, train=True, mutable=["batch_stats"]), axis_name="data"
  )(x.reshape(2, 4, 28, 28, 1))
  np.testing.assert_allclose(logits_split.reshape(8, 10), logits, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(stats_split)):
    np.testing.assert_allclose(b[0], a, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(b[1], a, rtol=1e-4, atol=1e-6)


def test_dropout_random_in_train_off_in_eval():
  model = models.MnistFC(hidden=8)  # two hidden layers, dropout 0.2 and 0.5.
  no_dropout = model.clone(input_dropout=0.0, dropout=0.0)
  x = np.random.default_rng(3).normal(size=(4, 28, 28, 1)).astype(np.float32)

  @jax.jit  # One compilation instead of op-by-op dispatch.
  def run(variables, x):
    def train(m, seed):
      out, _ = m.apply(
        variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(seed)}
      )
      return out

    return (
      train(model, 1),
      train(model, 1),
      train(model, 2),
      train(no_dropout, 1),
      train(no_dropout, 2),
      model.apply(variables, x, train=False),
      no_dropout.apply(variables, x, train=False),
    )

  a1, a1_again, a2, b1, b2, eval_a, eval_b = run(_random_variables(model, x.shape[1:]), x)
  np.testing.assert_array_equal(a1, a1_again)
  assert not np.allclose(a1, a2)
  # Without dropout, train mode is deterministic given the batch.
  np.testing.assert_array_equal(b1, b2)
  # Eval needs no rng and equals the dropout-free network.
  np.testing.assert_allclose(eval_a, eval_b, rtol=1e-6)


def test_dropout_rate_on_mnistfc_input():
  """Inverted dropout: a fraction `rate` of inputs is zeroed, the rest scaled by 1/(1-rate)."""
  rate = 0.25
  model = models.MnistFC(hidden=8, num_layers=1, input_dropout=rate, dropout=0.0)
  x = jnp.ones((64, 28, 28, 1))
  variables = _random_variables(model, x.shape[1:])
  _, state = model.apply(
    variables,
    x,
    train=True,
    mutable=["batch_stats", "intermediates"],
    rngs={"dropout": jax.random.key(5)},
    capture_intermediates=lambda m, _: isinstance(m, models.nn.Dropout),
  )
  dropped = np.asarray(state["intermediates"]["Dropout_0"]["__call__"][0])
  np.testing.assert_allclose(np.unique(dropped), [0.0, 1 / (1 - rate)], rtol=1e-6)
  assert abs((dropped == 0).mean() - rate) < 0.01


@pytest.mark.parametrize(
  "name, model, shape",
  [
    # Dropout off: its random bits take seconds to compile on CPU, and
    # dropout is tested above.
    ("allcnn_bn", models.AllCNNBN(width1=4, width2=6, input_dropout=0.0, dropout=0.0), (16, 16, 3)),
    ("cnn1d", mnist1d_nets.CNN1D(channels=6, use_bn=True), (40,)),
  ],
)
def test_bfloat16_compute_float32_params(name, model, shape):
  del name
  x = np.random.default_rng(4).normal(size=(4, *shape)).astype(np.float32)
  bf16 = model.clone(dtype=jnp.bfloat16)
  for leaf in jax.tree.leaves(_abstract_init(bf16, shape)):
    assert leaf.dtype == jnp.float32  # params and batch_stats stay float32.

  @jax.jit
  def run(variables, x):
    logits, stats = bf16.apply(variables, x, train=True, mutable=["batch_stats"])
    return (
      logits,
      stats,
      bf16.apply(variables, x, train=False),
      model.apply(variables, x, train=False),
    )

  logits, stats, eval_bf16, eval_f32 = run(_random_variables(model, shape), x)
  assert logits.dtype == jnp.bfloat16
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(stats))
  assert eval_bf16.dtype == jnp.bfloat16
  np.testing.assert_allclose(eval_bf16.astype(jnp.float32), eval_f32, rtol=0.05, atol=0.05)


def test_mlp1d_is_the_benchmark_mlp():
  """h1 = relu(W1 x + b1); h2 = h1 + relu(W2 h1 + b2); logits = W3 h2 + b3."""
  model = mnist1d_nets.MLP1D()
  x = np.random.default_rng(6).normal(size=(5, 40)).astype(np.float32)
  variables = _random_variables(model, x.shape[1:])
  p = jax.tree.map(np.asarray, variables["params"])
  h1 = np.maximum(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0)
  h2 = h1 + np.maximum(h1 @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"], 0)
  expected = h2 @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]
  np.testing.assert_allclose(model.apply(variables, x, train=True), expected, rtol=1e-5, atol=1e-5)
