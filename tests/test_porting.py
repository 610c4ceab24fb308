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
  """Mock MNIST (tfds.testing.mock_data: random images and labels), pixels in [0, 1]."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=32):
    # batch_size=10_000, not -1: mock data have no split sizes in their metadata.
    train = next(iter(tfds.as_numpy(tfds.load("mnist", split="train", batch_size=10_000))))
  return {"image": train["image"].astype(np.float32) / 255, "label": train["label"]}


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
  losses, (model, optimizer, rngs) = train_nnx_example(mnist, num_epochs=6)
  assert losses[-1] < 0.85 * losses[0], losses
  assert TRACES["nnx_example"] == 1  # one compilation for 6 epochs of 2 steps
  assert int(optimizer.step[...]) == 6 * 32 // (BATCH * L)
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
