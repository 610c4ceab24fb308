"""flax's NNX MNIST tutorial, ``docs_nnx/mnist_tutorial.md`` at google/flax@83e3c21b, as a module:
its cells in order; the data from the IDX files instead of Hugging Face ``datasets`` (one
shuffled pass after another), the training cell a function; plots, TensorBoard and export left
out."""

from functools import partial

import numpy as np
import optax
from flax import nnx

from benchmarks.flax_ports.data import ordered_batches, shuffled_batches

train_steps = 1200
eval_every = 200
batch_size = 32


def make_batches(ds, batch_size, seed):
  """Yield batches of (image, label) numpy arrays, one shuffled pass after another."""
  rng = np.random.default_rng(seed)
  while True:
    yield from shuffled_batches(ds, batch_size, rng)


class CNN(nnx.Module):
  """A simple CNN model."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
    self.batch_norm1 = nnx.BatchNorm(32, rngs=rngs)
    self.dropout1 = nnx.Dropout(rate=0.025)
    self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
    self.batch_norm2 = nnx.BatchNorm(64, rngs=rngs)
    self.avg_pool = partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
    self.linear1 = nnx.Linear(3136, 256, rngs=rngs)
    self.dropout2 = nnx.Dropout(rate=0.025)
    self.linear2 = nnx.Linear(256, 10, rngs=rngs)

  def __call__(self, x, rngs: nnx.Rngs | None = None):
    x = self.avg_pool(nnx.relu(self.batch_norm1(self.dropout1(self.conv1(x), rngs=rngs))))
    x = self.avg_pool(nnx.relu(self.batch_norm2(self.conv2(x))))
    x = x.reshape(x.shape[0], -1)  # flatten
    x = nnx.relu(self.dropout2(self.linear1(x), rngs=rngs))
    x = self.linear2(x)
    return x


learning_rate = 0.005
momentum = 0.9


def loss_fn(model: CNN, batch, rngs: nnx.Rngs | None = None):
  logits = model(batch["image"], rngs)
  loss = optax.softmax_cross_entropy_with_integer_labels(
    logits=logits, labels=batch["label"]
  ).mean()
  return loss, logits


@nnx.jit
def train_step(model: CNN, optimizer: nnx.Optimizer, metrics: nnx.MultiMetric, rngs, batch):
  """Train for a single step."""
  grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
  (loss, logits), grads = grad_fn(model, batch, rngs)
  metrics.update(loss=loss, logits=logits, labels=batch["label"])  # In-place updates.
  optimizer.update(model, grads)  # In-place updates.


@nnx.jit
def eval_step(model: CNN, metrics: nnx.MultiMetric, batch):
  loss, logits = loss_fn(model, batch)
  metrics.update(loss=loss, logits=logits, labels=batch["label"])  # In-place updates.


def train_and_evaluate(train_ds, test_ds, seed=0, train_steps=train_steps, eval_every=eval_every):
  """The tutorial's sections 3-7 (model, optimizer, training cell); returns the metrics of each
  evaluation."""
  model = CNN(rngs=nnx.Rngs(seed))
  optimizer = nnx.Optimizer(
    model,
    optax.adamw(learning_rate, momentum),
    wrt=nnx.Param,
  )
  metrics = nnx.MultiMetric(
    accuracy=nnx.metrics.Accuracy(),
    loss=nnx.metrics.Average("loss"),
  )
  train_model = nnx.view(model, deterministic=False, use_running_average=False)
  eval_model = nnx.view(model, deterministic=True, use_running_average=True)
  history = []

  rngs = nnx.Rngs(seed)
  for step, batch in enumerate(make_batches(train_ds, batch_size, seed)):
    if step >= train_steps:
      break
    train_step(train_model, optimizer, metrics, rngs, batch)
    if step > 0 and (step % eval_every == 0 or step == train_steps - 1):  # Evaluation period.
      train_metrics = metrics.compute()
      metrics.reset()  # Reset the metrics for the test set.
      for test_batch in ordered_batches(test_ds, batch_size):
        eval_step(eval_model, metrics, test_batch)
      test_metrics = metrics.compute()
      metrics.reset()  # Reset the metrics for the next training epoch.
      history.append(
        {
          "step": step,
          "train_loss": float(train_metrics["loss"]),
          "test_loss": float(test_metrics["loss"]),
          "test_accuracy": float(test_metrics["accuracy"]),
        }
      )
  return history
