"""Flax MNIST training loops ported to Entropy-SGD by the recipe of docs/porting.md ("Porting an
existing Flax loop"), as a user meets them.

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
import pathlib
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from flax.training import train_state

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
    logits=logits, labels=batch["label"]
  ).mean()
  return loss, logits


TRACES = collections.Counter()  # test instrumentation: how often each step is traced


@nnx.jit
def train_step(
  model: CNN, optimizer: nnx.Optimizer, metrics: nnx.MultiMetric, batches, rngs
):  # port
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

  # Checkpoint (the five lines of docs/porting.md), then one more epoch from the restored copy.
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
    yield {"image": data["image"][i : i + batch_size], "label": data["label"][i : i + batch_size]}


@nnx.jit
def tutorial_train_step(model, optimizer, metrics, rngs, batches):  # port
  TRACES["nnx_tutorial"] += 1
  batch = take_batch(batches, 0)  # port
  grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
  (loss, logits), grads = grad_fn(model, batch, rngs)
  metrics.update(loss=loss, logits=logits, labels=batch["label"])
  optimizer.update(
    model, grads, grad_fn=nnx_grad_fn(model, loss_fn, batches, rngs=rngs, has_aux=True)
  )  # port


def test_nnx_tutorial_port_with_adamw_trains_and_compiles_once(mnist):
  TRACES.clear()
  model = CNN(rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(
    model,
    optax.chain(entropy_optax.local_entropy(L), optax.adamw(0.01, 0.9)),  # port
    wrt=nnx.Param,
  )
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
  assert float(stats.entropy_grad_norm) > 0 and float(stats.langevin_gamma) == pytest.approx(0.03)


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
      {"params": params, "batch_stats": state.batch_stats},
      images,
      train=True,
      rngs={"dropout": key},
      mutable=["batch_stats"],
    )  # port
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    return loss, (logits, updates)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (logits, updates)), grads = grad_fn(
    state.params, (images[0], labels[0]), dropout_key
  )  # port
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels[0])  # port
  langevin_grad_fn = entropy_optax.flax.make_grad_fn(  # port
    loss_fn, (images, labels), key=dropout_key, has_aux=True
  )
  state = state.apply_gradients(  # port
    grads=grads, grad_fn=langevin_grad_fn, batch_stats=updates["batch_stats"]
  )
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
      state, train_ds["image"][perm, ...], train_ds["label"][perm, ...], dropout_rng
    )
    epoch_loss.append(loss)
  return state, float(np.mean(epoch_loss))


def create_train_state(rng, tx):
  variables = LinenCNN().init(rng, jnp.ones([1, 28, 28, 1]), train=False)
  return TrainState.create(
    apply_fn=LinenCNN().apply,
    params=variables["params"],
    batch_stats=variables["batch_stats"],
    tx=tx,
  )


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
  jax.tree.map(
    np.testing.assert_array_equal,
    (a.params, a.batch_stats, a.opt_state),
    (b.params, b.batch_stats, b.opt_state),
  )


# ---- Linen, flax's examples/mnist as it is: apply_model kept, so its evaluation still works ----


class FlaxCNN(nn.Module):
  """flax's examples/mnist CNN (no BatchNorm, no dropout), narrower."""

  @nn.compact
  def __call__(self, x):
    x = nn.avg_pool(nn.relu(nn.Conv(4, (3, 3))(x)), window_shape=(2, 2), strides=(2, 2))
    x = nn.avg_pool(nn.relu(nn.Conv(8, (3, 3))(x)), window_shape=(2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))  # flatten
    return nn.Dense(10)(nn.relu(nn.Dense(16)(x)))


@jax.jit
def flax_apply_model(state, images, labels):
  """Computes gradients, loss and accuracy for a single batch (flax's, unchanged)."""
  TRACES["flax_apply_model"] += 1

  def loss_fn(params):
    logits = state.apply_fn({"params": params}, images)
    one_hot = jax.nn.one_hot(labels, 10)
    loss = jnp.mean(optax.softmax_cross_entropy(logits=logits, labels=one_hot))
    return loss, logits

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, logits), grads = grad_fn(state.params)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  return grads, loss, accuracy


@jax.jit
def flax_train_step(state, images, labels):  # port: was update_model(state, grads)
  TRACES["flax_train_step"] += 1
  grads, loss, accuracy = flax_apply_model(state, images[0], labels[0])  # port
  grad_fn = lambda params, k: flax_apply_model(  # noqa: E731  # port
    state.replace(params=params), images[k], labels[k]
  )[0]
  return state.apply_gradients(grads=grads, grad_fn=grad_fn), loss, accuracy  # port


def flax_train_epoch(state, train_ds, batch_size, rng):
  """Train for a single epoch (flax's, with L index batches per step)."""
  steps_per_epoch = len(train_ds["image"]) // batch_size
  perms = jax.random.permutation(rng, len(train_ds["image"]))
  perms = perms[: steps_per_epoch * batch_size].reshape((steps_per_epoch, batch_size))
  epoch_loss, epoch_accuracy = [], []
  for perm in stack_batches(perms, L):  # port
    batch_images = train_ds["image"][perm, ...]
    batch_labels = train_ds["label"][perm, ...]
    state, loss, accuracy = flax_train_step(state, batch_images, batch_labels)  # port
    epoch_loss.append(loss)
    epoch_accuracy.append(accuracy)
  return state, float(np.mean(epoch_loss)), float(np.mean(epoch_accuracy))


def test_linen_port_that_keeps_apply_model_evaluates_unstacked_test_data(mnist):
  """The Linen port of docs/porting.md (step 4): flax's ``apply_model`` is kept (it serves the
  gradient at x, each Langevin step's gradient and flax's evaluation), ``update_model`` becomes
  a step over L stacked mini-batches. Evaluating with the merged function of the README's first
  recipe feeds it unstacked data instead, which flax's model rejects."""
  TRACES.clear()
  data = {k: jnp.asarray(v) for k, v in mnist.items()}
  test_ds = {k: v[:16] for k, v in data.items()}  # unstacked, as flax evaluates
  module = FlaxCNN()
  state = entropy_optax.flax.TrainState.create(  # port: was train_state.TrainState
    apply_fn=module.apply,
    params=module.init(jax.random.key(0), jnp.ones([1, 28, 28, 1]))["params"],
    tx=entropy_optax.entropy_sgd(1.0, momentum=0.9, nesterov=False, num_langevin_steps=L),
  )
  losses, test_accuracies = [], []
  for epoch in range(3):
    state, loss, _ = flax_train_epoch(state, data, BATCH, jax.random.key(epoch))
    _, test_loss, test_accuracy = flax_apply_model(state, test_ds["image"], test_ds["label"])
    losses.append(loss)
    test_accuracies.append(float(test_accuracy))
  assert losses[-1] < 0.8 * losses[0], losses
  assert np.isfinite(float(test_loss)) and 0 <= test_accuracies[-1] <= 1
  assert TRACES["flax_train_step"] == 1 and int(state.step) == 3 * 32 // (BATCH * L)
  # flax_apply_model: traced once for a training batch (at x and in the Langevin steps, inside
  # the step) and once for the test set.
  assert TRACES["flax_apply_model"] == 2, TRACES
  # The pitfall: a step that expects L stacked batches, given flax's unstacked test data.
  with pytest.raises(Exception, match="ScopeParamShapeError|expected to generate shape"):
    apply_model(
      create_train_state(jax.random.key(0), entropy_optax.entropy_sgd(0.1, num_langevin_steps=L)),
      test_ds["image"],
      test_ds["label"],
      jax.random.key(0),
    )


# ---- A step-counted loop (flax's NNX MNIST tutorial: train_steps, eval_every) -------------------


def repeated_batches(data, batch_size, num_batches):
  """The tutorial's ``train_ds.repeat().batch(batch_size).take(train_steps)``."""
  n = len(data["label"]) // batch_size
  for i in range(num_batches):
    j = i % n
    yield {k: v[j * batch_size : (j + 1) * batch_size] for k, v in data.items()}


def step_counted_loop(data, train_steps, eval_every, num_batches):
  """The tutorial's loop over ``num_batches`` batches (its ``.take(train_steps)``); returns
  the steps it evaluated at and the optimizer's step count."""
  model = CNN(rngs=nnx.Rngs(0))
  tx = optax.chain(entropy_optax.local_entropy(L), optax.adamw(0.01, 0.9))  # port
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  metrics = nnx.MultiMetric(accuracy=nnx.metrics.Accuracy(), loss=nnx.metrics.Average("loss"))
  rngs, evaluated = nnx.Rngs(0), []
  stream = stack_batches(repeated_batches(data, BATCH, num_batches), L)  # port
  for step, batches in enumerate(stream):
    tutorial_train_step(model, optimizer, metrics, rngs, batches)
    if step > 0 and (step % eval_every == 0 or step == train_steps - 1):
      evaluated.append(step)  # the tutorial computes and logs the metrics here
  return evaluated, int(optimizer.step[...])


def test_step_counted_loop_keeps_its_budget_and_its_final_evaluation(mnist):
  """The tutorial's budget is ``train_steps`` batches (``.take(train_steps)``): L stacked per
  step, the stream ends after train_steps // L steps, before ``step == train_steps - 1``, and
  the final evaluation never runs. Counting steps of L batches keeps both."""
  train_steps, eval_every = 12, 4  # the tutorial: 1200 and 200
  evaluated, updates = step_counted_loop(mnist, train_steps, eval_every, train_steps)
  assert updates == train_steps // L and evaluated == [4]  # no final evaluation (step 11)
  evaluated, updates = step_counted_loop(
    mnist, train_steps // L, eval_every // L, train_steps
  )  # port: the budget and the evaluation period in steps of L batches
  assert updates == train_steps // L and evaluated == [2, 4, 5]  # the final one: step 5


# ---- The errors of a half-done port, and the shared loop with a plain optimizer --------------


class Tiny(nnx.Module):
  """Linear + call-time dropout: the smallest model with flax's call-time rngs style."""

  def __init__(self, rngs):
    self.linear = nnx.Linear(3, 2, rngs=rngs)
    self.dropout = nnx.Dropout(0.5)

  def __call__(self, x, rngs=None):
    return self.dropout(self.linear(x), rngs=rngs)


def _tiny_loss(model, batch, rngs=None):
  return jnp.mean((model(batch[0], rngs) - batch[1]) ** 2)


def _tiny_batches(num_batches, batch_size=4):
  xs = jax.random.normal(jax.random.key(0), (num_batches, batch_size, 3))
  return xs, xs[..., :2] * 2.0


def test_call_time_rngs_closed_over_says_pass_rngs():
  model, rngs = Tiny(nnx.Rngs(0)), nnx.Rngs(1)
  optimizer = nnx.Optimizer(
    model, entropy_optax.entropy_sgd(0.1, num_langevin_steps=3), wrt=nnx.Param
  )
  batches = _tiny_batches(3)

  @nnx.jit
  def step(model, optimizer, batches, rngs):
    grads = nnx.grad(_tiny_loss)(model, take_batch(batches, 0), rngs)
    closure = lambda m, b: _tiny_loss(m, b, rngs)  # rngs mutated from inside the chain
    optimizer.update(model, grads, grad_fn=nnx_grad_fn(model, closure, batches))

  with pytest.raises(ValueError, match=r"nnx_grad_fn\(model, loss_fn, batches, rngs=rngs\)"):
    step(model, optimizer, batches, rngs)


def test_call_time_rngs_fresh_masks_per_step_and_rngs_untouched():
  model, rngs = Tiny(nnx.Rngs(0)), nnx.Rngs(1)
  count = int(rngs.default.count[...])
  params = nnx.as_pure(nnx.state(model, nnx.Param))
  grad_fn = nnx_grad_fn(model, _tiny_loss, _tiny_batches(3, 64), rngs=rngs)
  grads = [np.asarray(grad_fn(params, jnp.int32(k))["linear"]["bias"]) for k in (1, 2)]
  # Dropout zeroes whole output units per example: the two steps' masks differ, so do the grads.
  assert not np.allclose(grads[0], grads[1])
  np.testing.assert_array_equal(grads[1], grad_fn(params, jnp.int32(2))["linear"]["bias"])
  assert int(rngs.default.count[...]) == count  # never mutated by the Langevin steps


def test_loss_with_aux_without_has_aux_says_so():
  loss_with_logits = lambda model, batch: (_tiny_loss(model, batch), model(batch[0]))
  model = Tiny(nnx.Rngs(0))
  model.set_attributes(deterministic=True)
  params = nnx.as_pure(nnx.state(model, nnx.Param))
  with pytest.raises(TypeError, match="pass has_aux=True"):
    nnx_grad_fn(model, loss_with_logits, _tiny_batches(2))(params, 1)
  with pytest.raises(TypeError, match="pass has_aux=True"):
    entropy_optax.flax.make_grad_fn(lambda p, b: (jnp.sum(p), p), jnp.ones((2, 3)))(jnp.ones(3), 1)
  with pytest.raises(TypeError, match="drop has_aux"):
    entropy_optax.flax.make_grad_fn(lambda p, b: jnp.sum(p), jnp.ones((2, 3)), has_aux=True)(
      jnp.ones(3), 1
    )


def test_flax_train_state_subclass_error_names_ours():
  params = {"w": jnp.ones(3)}
  state = train_state.TrainState.create(
    apply_fn=None, params=params, tx=entropy_optax.entropy_sgd(0.1, num_langevin_steps=2)
  )
  with pytest.raises(TypeError, match=r"entropy_optax\.flax\.TrainState \(subclass it"):
    state.apply_gradients(grads=params)


def test_stacking_errors_say_stack_l_minibatches():
  unstacked = _tiny_batches(1)[0][0], _tiny_batches(1)[1][0]  # one batch of 4, not stacked
  grad_fn = entropy_optax.flax.make_grad_fn(lambda p, b: jnp.sum(p), unstacked)
  assert grad_fn.num_batches == 4  # its batch size: what L it is checked against
  with pytest.raises(ValueError, match="stack L mini-batches on axis 0"):
    entropy_optax.flax.check_num_batches(grad_fn.num_batches, 5)
  with pytest.raises(ValueError, match="stack L mini-batches on axis 0"):
    entropy_optax.flax.check_num_batches(3, 5)  # 3 stacked batches, L = 5
  entropy_optax.flax.check_num_batches(None, 5)  # shared_batch: any L
  with pytest.raises(ValueError, match="stack L mini-batches on axis 0"):
    nnx_grad_fn(Tiny(nnx.Rngs(0)), _tiny_loss, (jnp.ones((3, 4, 3)), jnp.ones((2, 4, 2))))
  with pytest.raises(ValueError, match="same shape"):
    list(stack_batches([np.ones((4, 3)), np.ones((4, 3)), np.ones((2, 3))], 3))
  with pytest.raises(TypeError, match="array of batch indices"):
    stack_batches({"image": np.ones((8, 3))}, 2)


def test_stack_batches_from_each_source(mnist):
  batches = list(make_batches(mnist, BATCH))  # 4 batches of 8
  expected = [jax.tree.map(lambda *b: np.stack(b), *batches[i : i + L]) for i in (0, L)]
  sources = {
    "generator": make_batches(mnist, BATCH),
    "tf.data": _tf_dataset(mnist, BATCH),
    "jax arrays": [jax.tree.map(jnp.asarray, b) for b in batches],
  }
  for name, source in sources.items():
    stacked = list(stack_batches(source, L))
    assert len(stacked) == 2, name
    for got, want in zip(stacked, expected):
      jax.tree.map(np.testing.assert_array_equal, got, want)
  indices = stack_batches(np.arange(40).reshape(5, 8), L)  # 5 index batches: the 5th is dropped
  assert indices.shape == (2, L, 8)
  np.testing.assert_array_equal(mnist["image"][indices[1]][0], mnist["image"][16:24])


def test_one_loop_plain_optimizer_takes_one_update_per_minibatch():
  """With optax.sgd the ported step equals per-mini-batch SGD (flax's original loop)."""
  xs, ys = _tiny_batches(3)
  model = Tiny(nnx.Rngs(0))
  model.set_attributes(deterministic=True)
  twin = nnx.clone(model)
  optimizer = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
  twin_optimizer = nnx.Optimizer(twin, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
  grads = nnx.grad(_tiny_loss)(model, (xs[0], ys[0]))
  nnx_update(optimizer, model, grads, grad_fn=nnx_grad_fn(model, _tiny_loss, (xs, ys)))
  for k in range(3):
    twin_optimizer.update(twin, nnx.grad(_tiny_loss)(twin, (xs[k], ys[k])))
  assert int(optimizer.step[...]) == 3
  jax.tree.map(
    functools.partial(np.testing.assert_allclose, rtol=1e-6),
    nnx.state(model, nnx.Param),
    nnx.state(twin, nnx.Param),
  )

  # Linen: TrainState.apply_gradients, under jit.
  loss = lambda params, batch: jnp.mean((batch[0] @ params["w"] - batch[1]) ** 2)
  state = entropy_optax.flax.TrainState.create(
    apply_fn=None, params={"w": jnp.zeros((3, 2))}, tx=optax.sgd(0.1, momentum=0.9)
  )
  reference = state
  step = jax.jit(
    lambda s: s.apply_gradients(
      grads=jax.grad(loss)(s.params, (xs[0], ys[0])),
      grad_fn=entropy_optax.flax.make_grad_fn(loss, (xs, ys)),
    )
  )
  state = step(state)
  for k in range(3):
    reference = reference.apply_gradients(grads=jax.grad(loss)(reference.params, (xs[k], ys[k])))
  assert int(state.step) == 3
  np.testing.assert_allclose(state.params["w"], reference.params["w"], rtol=1e-6)


def test_docs_porting_page_runs():
  """The blocks of docs/porting.md ("Porting an existing Flax loop") run in order, on less data
  and one epoch: the NNX port trains and evaluates after re-estimating its BatchNorm statistics
  (checked against the moments of the conv outputs computed here), the Linen port trains with
  flax's apply_model and evaluates unstacked test data, the Linen BatchNorm re-estimation gives
  its layer's input moments, and the momentum and budget checks of the page hold."""
  page = pathlib.Path(__file__).resolve().parent.parent / "docs" / "porting.md"
  blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
  assert len(blocks) == 7
  code = "\n".join(blocks)
  shorter = code.replace("make_data(1600, 0)", "make_data(320, 0)").replace("range(2)", "range(1)")
  assert shorter.count("make_data(320, 0)") == 1 and shorter.count("range(1)") == 2
  namespace = {}
  exec(compile(shorter, str(page), "exec"), namespace)
  L, model, optimizer = namespace["L"], namespace["model"], namespace["optimizer"]
  assert L == 5 and int(optimizer.step[...]) == 320 // 16 // L  # restored from the checkpoint
  # NNX: the running statistics are the moments of the conv outputs (dropout off) over the
  # training images, not what 4 updates left in them.
  images = namespace["train_ds"]["image"]
  conv = np.asarray(model.conv(images), np.float64)
  np.testing.assert_allclose(model.bn.mean[...], conv.mean((0, 1, 2)), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(model.bn.var[...], conv.var((0, 1, 2)), rtol=1e-4, atol=1e-5)
  assert 0.0 <= float(namespace["metrics"].compute()["accuracy"]) <= 1.0
  # Linen: 320 examples in 20 index batches of 16, stacked by 5: 4 updates, then flax's
  # evaluation on the unstacked test set.
  assert int(namespace["state"].step) == 4 and np.isfinite(float(namespace["test_loss"]))
  bn_state = namespace["bn_state"]
  kernel, bias = bn_state.params["Conv_0"]["kernel"], bn_state.params["Conv_0"]["bias"]
  conv = nn.Conv(4, (3, 3)).apply({"params": {"kernel": kernel, "bias": bias}}, images)
  conv = np.asarray(conv, np.float64)
  stats = bn_state.batch_stats["BatchNorm_0"]
  np.testing.assert_allclose(stats["mean"], conv.mean((0, 1, 2)), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats["var"], conv.var((0, 1, 2)), rtol=1e-4, atol=1e-5)


def test_docs_step_with_unstacked_batches_names_stack_batches():
  """The page's NNX step given flax's unstacked batches fails in take_batch, naming
  stack_batches and L, before the model sees them (not with the model's shape error)."""
  page = pathlib.Path(__file__).resolve().parent.parent / "docs" / "porting.md"
  first = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)[0]
  namespace = {}
  exec(compile(first.split("train_ds, test_ds =")[0], str(page), "exec"), namespace)
  model = namespace["CNN"](nnx.Rngs(0))
  optimizer = nnx.Optimizer(
    model, optax.chain(entropy_optax.local_entropy(5), optax.sgd(1.0)), wrt=nnx.Param
  )
  metrics = nnx.MultiMetric(accuracy=nnx.metrics.Accuracy())
  data = namespace["make_data"](64, 0)
  unstacked = next(namespace["batches_of"](data))  # a batch of 16, not 5 stacked batches
  with pytest.raises(ValueError, match=r"not L = 5 mini-batches stacked on axis 0.*stack_batches"):
    namespace["train_step"](model, optimizer, metrics, unstacked, nnx.Rngs(1))
  three = next(stack_batches(namespace["batches_of"](data), 3))  # 3 stacked, L = 5
  with pytest.raises(ValueError, match=r"leading axis of length 3, not L = 5"):
    namespace["train_step"](model, optimizer, metrics, three, nnx.Rngs(1))


def test_update_checks_stacked_batches_against_num_langevin_steps():
  """3 stacked mini-batches with L = 5 used to train silently; now tx.update says what to do."""
  params = jnp.ones(3)
  batches = jnp.ones((3, 4, 3))  # 3 stacked mini-batches of 4 examples
  loss = lambda p, b: jnp.sum((b @ p) ** 2)
  tx = entropy_optax.entropy_sgd(0.1, num_langevin_steps=5)
  grad_fn = entropy_optax.flax.make_grad_fn(loss, batches)
  with pytest.raises(ValueError, match="3 stacked mini-batches but num_langevin_steps = 5"):
    tx.update(params, tx.init(params), params, grad_fn=grad_fn)
  tx = entropy_optax.entropy_sgd(0.1, num_langevin_steps=3, noise=0.0)
  updates, _ = tx.update(params, tx.init(params), params, grad_fn=grad_fn)
  assert np.all(np.isfinite(updates))
