"""flax's NNX ``examples/mnist/train.py`` at google/flax@18f8f311 (HEAD, the file as of 0ef9abb2),
ported to Entropy-SGD: the lines that differ from ``nnx_mnist.py`` carry ``# port``."""

from functools import partial
from types import SimpleNamespace

import numpy as np
import optax
from flax import nnx

import entropy_optax  # port
from benchmarks.flax_ports.data import ordered_batches, shuffled_batches
from entropy_optax.flax import nnx_grad_fn, nnx_reestimate_batch_stats, stack_batches, take_batch

L = 5  # port: Langevin steps (mini-batches) per update


class CNN(nnx.Module):
  """A simple CNN model."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
    self.batch_norm1 = nnx.BatchNorm(32, rngs=rngs)
    self.dropout1 = nnx.Dropout(rate=0.025)
    self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
    self.batch_norm2 = nnx.BatchNorm(64, rngs=rngs)
    self.avg_pool = partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
    self.linear1 = nnx.Linear(3136, 256, rngs=rngs)
    self.dropout2 = nnx.Dropout(rate=0.025)
    self.linear2 = nnx.Linear(256, 10, rngs=rngs)

  def __call__(self, x, rngs: nnx.Rngs):
    x = self.avg_pool(nnx.relu(self.batch_norm1(self.dropout1(self.conv1(x), rngs=rngs))))
    x = self.avg_pool(nnx.relu(self.batch_norm2(self.conv2(x))))
    x = x.reshape(x.shape[0], -1)  # flatten
    x = nnx.relu(self.dropout2(self.linear1(x), rngs=rngs))
    x = self.linear2(x)
    return x


def loss_fn(model: CNN, batch, rngs):
  logits = model(batch["image"], rngs)
  loss = optax.softmax_cross_entropy_with_integer_labels(
    logits=logits, labels=batch["label"]
  ).mean()
  return loss, logits


@nnx.jit
def train_step(model: CNN, optimizer: nnx.Optimizer, metrics: nnx.MultiMetric, batches, rngs):
  """Train for a single step."""
  batch = take_batch(batches, 0, num_batches=L)  # port
  grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
  (loss, logits), grads = grad_fn(model, batch, rngs)
  metrics.update(loss=loss, logits=logits, labels=batch["label"])  # In-place updates.
  langevin_grad = nnx_grad_fn(model, loss_fn, batches, rngs=rngs, has_aux=True)  # port
  optimizer.update(model, grads, grad_fn=langevin_grad)  # port


@nnx.jit
def eval_step(model: CNN, metrics: nnx.MultiMetric, batch):
  loss, logits = loss_fn(model, batch, None)
  metrics.update(loss=loss, logits=logits, labels=batch["label"])  # In-place updates.


def get_config():
  """Get the default hyperparameter configuration."""
  config = SimpleNamespace()
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.batch_size = 128
  config.num_epochs = 10
  config.seed = 0
  return config


def train_and_evaluate(config, train_ds, test_ds) -> list[dict]:
  """Execute model training and evaluation loop; returns the metrics of every epoch."""
  # Instantiate the model.
  model = CNN(rngs=nnx.Rngs(config.seed))

  learning_rate = config.learning_rate
  momentum = config.momentum

  entropy = entropy_optax.local_entropy(L, langevin_lr=learning_rate)  # port
  optimizer = nnx.Optimizer(model, optax.chain(entropy, optax.sgd(1.0, momentum)), wrt=nnx.Param)
  metrics = nnx.MultiMetric(
    accuracy=nnx.metrics.Accuracy(),
    loss=nnx.metrics.Average("loss"),
  )
  rngs = nnx.Rngs(config.seed)
  data_rng = np.random.default_rng(config.seed)
  history = []

  for epoch in range(1, config.num_epochs + 1):
    model.train()  # Switch to train mode

    for batches in stack_batches(shuffled_batches(train_ds, config.batch_size, data_rng), L):
      train_step(model, optimizer, metrics, batches, rngs)  # port
    #  Compute the training metrics.
    train_metrics = metrics.compute()
    metrics.reset()  # Reset the metrics for the test set.

    # Compute the metrics on the test set after each training epoch.
    nnx_reestimate_batch_stats(model, train_ds["image"][:4096], forward=lambda m, x: m(x, None))
    model.eval()  # Switch to eval mode
    for batch in ordered_batches(test_ds, config.batch_size):
      eval_step(model, metrics, batch)

    # Compute the eval metrics.
    eval_metrics = metrics.compute()
    metrics.reset()  # Reset the metrics for the next training epoch.
    history.append(
      {
        "epoch": epoch,
        "train_loss": float(train_metrics["loss"]),
        "test_loss": float(eval_metrics["loss"]),
        "test_accuracy": float(eval_metrics["accuracy"]),
      }
    )
  return history
