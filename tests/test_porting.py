"""Flax MNIST training loops ported to Entropy-SGD by the README's recipe ("Porting an existing
Flax loop"), as a user meets them.

The loops are our own, written in the shape of flax's NNX ``examples/mnist`` (call-time dropout
``rngs``, ``tf.data`` batches), its NNX MNIST tutorial (``optax.adamw``, a generator of batches)
and its last Linen ``examples/mnist`` (two jitted functions, a permutation of indices; here with
BatchNorm, dropout and a subclass of flax's ``TrainState``), tiny, on ``tfds.testing.mock_data``.
Every line the port changes or adds carries ``# port``: ``grep -c "# port"`` counts them per
loop (the models are unchanged). Each port is checked to train (the loss falls), to compile once,
and to checkpoint and restore exactly with orbax; each error of a half-done port is tried.
"""

import collections
import functools
from typing import Any

from flax import nnx
import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import entropy_optax  # port
from entropy_optax.flax import nnx_grad_fn, nnx_update, stack_batches, take_batch  # port

L = 2  # Langevin steps, tiny: the tests check the plumbing, not the optimizer
BATCH = 8


@pytest.fixture(scope="module")
def mnist():
  """Mock MNIST (tfds.testing.mock_data: random images), pixels in [0, 1], learnable labels."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=32):
    # batch_size=10_000, not -1: mock data have no split sizes in their metadata.
    train = next(iter(tfds.as_numpy(tfds.load("mnist", split="train", batch_size=10_000))))
  image = train["image"].astype(np.float32) / 255
  # Random labels would only be memorised, slowly: label the mock images by whether their top
  # half is brighter than their bottom half, which a CNN learns in a few steps.
  label = (image[:, :14].mean((1, 2, 3)) > image[:, 14:].mean((1, 2, 3))).astype(np.int64)
  return {"image": image, "label": label}


def _tf_dataset(data, batch_size):
  """flax's examples/mnist input pipeline (no shuffle: the tests compare runs)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.data.Dataset.from_tensor_slices(data).batch(batch_size, drop_remainder=True)


# ---- NNX, in the shape of flax's examples/mnist: call-time rngs, tf.data --------------------

class CNN(nnx.Module):
  """A small CNN: conv, BatchNorm, call-time dropout, average pooling, two dense layers."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 4, kernel_size=(3, 3), rngs=rngs)
    self.batch_norm1 = nnx.BatchNorm(4, rngs=rngs)
    self.dropout1 = nnx.Dropout(rate=0.1)
    self.conv2 = nnx.Conv(4, 8, kernel_size=(3, 3), rngs=rngs)
    self.batch_norm2 = nnx.BatchNorm(8, rngs=rngs)
    self.avg_pool = functools.partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
    self.linear1 = nnx.Linear(392, 16, rngs=rngs)
    self.dropout2 = nnx.Dropout(rate=0.1)
    self.linear2 = nnx.Linear(16, 10, rngs=rngs)

  def __call__(self, x, rngs: nnx.Rngs | None = None):
    x = self.avg_pool(nnx.relu(self.batch_norm1(self.dropout1(self.conv1(x), rngs=rngs))))
    x = self.avg_pool(nnx.relu(self.batch_norm2(self.conv2(x))))
    x = x.reshape(x.shape[0], -1)  # flatten
    x = nnx.relu(self.dropout2(self.linear1(x), rngs=rngs))
    return self.linear2(x)


def loss_fn(model: CNN, batch, rngs=None):
  logits = model(batch["image"], rngs)
  loss = optax.softmax_cross_entropy_with_integer_labels(
      logits=logits, labels=batch["label"]).mean()
  return loss, logits


TRACES = collections.Counter()  # test instrumentation: how often each step is traced


@nnx.jit
def train_step(model: CNN, optimizer: nnx.Optimizer, metrics: nnx.MultiMetric, batches, rngs):  # port
  """Train for a single step (L stacked mini-batches)."""
  TRACES["nnx_example"] += 1
  batch = take_batch(batches, 0)  # port
  grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
  (loss, logits), grads = grad_fn(model, batch, rngs)
  metrics.update(loss=loss, logits=logits, labels=batch["label"])
  langevin_grad_fn = nnx_grad_fn(model, loss_fn, batches, rngs=rngs, has_aux=True)  # port
  nnx_update(optimizer, model, grads, grad_fn=langevin_grad_fn)  # port


def train_nnx_example(data, num_epochs, tx=None, state=None):
  """flax's train_and_evaluate, without the evaluation and logging; returns the epoch losses.

  ``state``: (model, optimizer, rngs) to continue from (a restored checkpoint), else fresh.
  """
  model = CNN(rngs=nnx.Rngs(0))
  tx = tx or entropy_optax.entropy_sgd(0.2, momentum=0.9, num_langevin_steps=L)  # port
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  metrics = nnx.MultiMetric(accuracy=nnx.metrics.Accuracy(), loss=nnx.metrics.Average("loss"))
  rngs = nnx.Rngs(0)
  if state is not None:
    model, optimizer, rngs = state
  train_ds = _tf_dataset(data, BATCH)
  losses = []
  for _ in range(num_epochs):
    model.train()
    for batches in stack_batches(train_ds, L):  # port
      train_step(model, optimizer, metrics, batches, rngs)
    losses.append(float(metrics.compute()["loss"]))
    metrics.reset()
  return losses, (model, optimizer, rngs)


def test_nnx_example_port_trains_compiles_once_and_restores_exactly(mnist, tmp_path):
  TRACES.clear()
  losses, (model, optimizer, rngs) = train_nnx_example(mnist, num_epochs=3)
  assert losses[-1] < 0.7 * losses[0], losses
  assert TRACES["nnx_example"] == 1  # one compilation for 3 epochs of 2 steps
  assert int(optimizer.step[...]) == 3 * 32 // (BATCH * L)
  stats = entropy_optax.flax.langevin_stats(optimizer)  # plain arrays, no .value warning
  assert isinstance(stats.grad_norm, jax.Array) and float(stats.mean_distance) > 0

  # Checkpoint (the README's five lines), then train one more epoch from the restored copy.
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "state", nnx.state((model, optimizer, rngs)))
  checkpointer.wait_until_finished()
  twin = (CNN(rngs=nnx.Rngs(1)), None, nnx.Rngs(1))
  twin = (twin[0], nnx.Optimizer(twin[0], optimizer.tx, wrt=nnx.Param), twin[2])
  nnx.update(twin, checkpointer.restore(tmp_path / "state", nnx.state(twin)))
  more, _ = train_nnx_example(mnist, 1, state=(model, optimizer, rngs))
  more_twin, _ = train_nnx_example(mnist, 1, state=twin)
  assert more == more_twin
  jax.tree.map(np.testing.assert_array_equal, nnx.state(model), nnx.state(twin[0]))


# ---- NNX, in the shape of flax's MNIST tutorial: optax.adamw, a generator of batches -----------

def make_batches(data, batch_size):
  """Yield batches of (image, label) numpy arrays, dropping any incomplete final batch."""
  for i in range(0, len(data["label"]) - batch_size + 1, batch_size):
    yield {"image": data["image"][i:i + batch_size], "label": data["label"][i:i + batch_size]}


@nnx.jit
def tutorial_train_step(model, optimizer, metrics, rngs, batches):  # port
  TRACES["nnx_tutorial"] += 1
  batch = take_batch(batches, 0)  # port
  grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
  (loss, logits), grads = grad_fn(model, batch, rngs)
  metrics.update(loss=loss, logits=logits, labels=batch["label"])
  optimizer.update(model, grads, grad_fn=nnx_grad_fn(model, loss_fn, batches, rngs=rngs, has_aux=True))  # port


def test_nnx_tutorial_port_with_adamw_trains_and_compiles_once(mnist):
  TRACES.clear()
  model = CNN(rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(
      model, optax.chain(entropy_optax.local_entropy(L), optax.adamw(0.01, 0.9)),  # port
      wrt=nnx.Param)
  metrics = nnx.MultiMetric(accuracy=nnx.metrics.Accuracy(), loss=nnx.metrics.Average("loss"))
  train_model = nnx.view(model, deterministic=False, use_running_average=False)
  rngs = nnx.Rngs(0)
  losses = []
  for _ in range(3):
    for batches in stack_batches(make_batches(mnist, BATCH), L):  # port
      tutorial_train_step(train_model, optimizer, metrics, rngs, batches)
    losses.append(float(metrics.compute()["loss"]))
    metrics.reset()
  assert losses[-1] < 0.7 * losses[0], losses
  assert TRACES["nnx_tutorial"] == 1
  stats = entropy_optax.flax.langevin_stats(optimizer.opt_state)
  assert float(stats.entropy_grad_norm) > 0 and float(stats.gamma) == pytest.approx(0.03)


# ---- Linen, in the shape of flax's last Linen examples/mnist, with BatchNorm and dropout ------

class LinenCNN(nn.Module):
  """The same small CNN in Linen."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(features=4, kernel_size=(3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.avg_pool(nn.relu(x), window_shape=(2, 2), strides=(2, 2))
    x = nn.Conv(features=8, kernel_size=(3, 3))(x)
    x = nn.avg_pool(nn.relu(x), window_shape=(2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))  # flatten
    x = nn.Dropout(0.1, deterministic=not train)(nn.relu(nn.Dense(features=16)(x)))
    return nn.Dense(features=10)(x)


class TrainState(entropy_optax.flax.TrainState):  # port (was train_state.TrainState)
  batch_stats: Any


@jax.jit
def apply_model(state, images, labels, dropout_key):
  """Computes gradients, loss and accuracy on mini-batch 0 and updates the state."""
  TRACES["linen"] += 1

  def loss_fn(params, batch, key):  # port
    images, labels = batch  # port
    logits, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, images, train=True,
        rngs={"dropout": key}, mutable=["batch_stats"])  # port
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    return loss, (logits, updates)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (logits, updates)), grads = grad_fn(state.params, (images[0], labels[0]), dropout_key)  # port
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels[0])  # port
  langevin_grad_fn = entropy_optax.flax.make_grad_fn(  # port
      loss_fn, (images, labels), key=dropout_key, has_aux=True)
  state = state.apply_gradients(  # port
      grads=grads, grad_fn=langevin_grad_fn, batch_stats=updates["batch_stats"])
  return state, loss, accuracy  # port


def train_epoch(state, train_ds, batch_size, rng):
  """Train for a single epoch."""
  steps_per_epoch = len(train_ds["image"]) // batch_size
  perms = jax.random.permutation(rng, len(train_ds["image"]))
  perms = perms[: steps_per_epoch * batch_size].reshape((steps_per_epoch, batch_size))
  epoch_loss = []
  for perm in stack_batches(perms, L):  # port
    rng, dropout_rng = jax.random.split(rng)
    state, loss, _ = apply_model(  # port
        state, train_ds["image"][perm, ...], train_ds["label"][perm, ...], dropout_rng)
    epoch_loss.append(loss)
  return state, float(np.mean(epoch_loss))


def create_train_state(rng, tx):
  variables = LinenCNN().init(rng, jnp.ones([1, 28, 28, 1]), train=False)
  return TrainState.create(apply_fn=LinenCNN().apply, params=variables["params"],
                           batch_stats=variables["batch_stats"], tx=tx)


def test_linen_example_port_trains_compiles_once_and_restores_exactly(mnist, tmp_path):
  TRACES.clear()
  data = {k: jnp.asarray(v) for k, v in mnist.items()}
  tx = entropy_optax.entropy_sgd(0.2, momentum=0.9, num_langevin_steps=L)  # port
  state = create_train_state(jax.random.key(0), tx)
  losses = []
  for epoch in range(3):
    state, loss = train_epoch(state, data, BATCH, jax.random.key(epoch))
    losses.append(loss)
  assert losses[-1] < 0.7 * losses[0], losses
  assert TRACES["linen"] == 1 and int(state.step) == 3 * 32 // (BATCH * L)
  assert float(entropy_optax.flax.langevin_stats(state.opt_state).mean_distance) > 0

  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "state", state)
  checkpointer.wait_until_finished()
  restored = checkpointer.restore(tmp_path / "state", create_train_state(jax.random.key(1), tx))
  a, loss_a = train_epoch(state, data, BATCH, jax.random.key(9))
  b, loss_b = train_epoch(restored, data, BATCH, jax.random.key(9))
  assert loss_a == loss_b
  jax.tree.map(np.testing.assert_array_equal, (a.params, a.batch_stats, a.opt_state),
               (b.params, b.batch_stats, b.opt_state))
