"""Tests of entropy_optax.flax: Linen TrainState, make_grad_fn, nnx_grad_fn, docs/flax.md."""

import pathlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state as flax_train_state

import entropy_optax
from entropy_optax import flax as eflax

L = 3
# One module-level optimizer: the jitted Linen step is compiled once for it (tx is static).
TX = entropy_optax.entropy_sgd(0.5, num_langevin_steps=L, gamma=0.03, langevin_lr=0.1)
FLAX_PAGE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "flax.md"


def _task(key, num_batches, batch=32, size=6):
  """A learnable image task: label = whether the top half is brighter than the bottom half."""
  x = jax.random.normal(key, (num_batches, batch, size, size, 1))
  y = x[:, :, : size // 2].mean((2, 3, 4)) > x[:, :, size // 2 :].mean((2, 3, 4))
  return x, y.astype(jnp.int32)


class LinenCNN(nn.Module):
  """Conv -> BatchNorm -> ReLU -> Dropout -> Dense: the paper's ingredients, tiny."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(8, (3, 3))(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.5)(x))
    x = nn.Dropout(0.25, deterministic=not train)(x.reshape(x.shape[0], -1))
    return nn.Dense(2)(x)


def _linen_loss(state, params, batch, key):
  logits, updates = state.apply_fn(
    {"params": params, "batch_stats": state.batch_stats},
    batch[0],
    train=True,
    rngs={"dropout": key},
    mutable=["batch_stats"],
  )
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean(), updates


@jax.jit
def _linen_step(state, xs, ys):
  loss_fn = lambda p, b, k: _linen_loss(state, p, b, k)
  key = state.step_key()
  (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    state.params, (xs[0], ys[0]), key
  )
  grad_fn = eflax.make_grad_fn(loss_fn, (xs, ys), key=key, has_aux=True)
  state = state.apply_gradients(grads=grads, grad_fn=grad_fn, batch_stats=updates["batch_stats"])
  return state, loss, updates["batch_stats"]


def _linen_state(tx, x):
  variables = LinenCNN().init(jax.random.key(0), x[0], train=False)
  return eflax.TrainState.create(
    apply_fn=LinenCNN().apply,
    params=variables["params"],
    batch_stats=variables["batch_stats"],
    tx=tx,
    key=1,
  )


def _error(logits, y):
  return float(jnp.mean(jnp.argmax(logits, -1) != y))


def test_linen_bn_dropout_cnn_trains_and_evaluates_with_running_stats():
  x, y = _task(jax.random.key(0), 8 * L)
  xs, ys = x.reshape(8, L, *x.shape[1:]), y.reshape(8, L, -1)
  state = _linen_state(TX, x)
  losses = []
  for _epoch in range(3):
    for i in range(xs.shape[0]):
      state, loss, _ = _linen_step(state, xs[i], ys[i])
      losses.append(float(loss))
  assert int(state.step) == 24
  assert np.mean(losses[-8:]) < 0.6 * np.mean(losses[:4]), losses
  # Evaluation uses the running statistics: they changed from their init, the output depends
  # on them, and they give a low error on fresh data.
  x_test, y_test = _task(jax.random.key(1), 1, batch=256)
  logits = LinenCNN().apply(state.variables, x_test[0], train=False)
  init_stats = LinenCNN().init(jax.random.key(0), x[0], train=False)["batch_stats"]
  assert not np.allclose(
    state.batch_stats["BatchNorm_0"]["mean"], init_stats["BatchNorm_0"]["mean"]
  )
  stale = LinenCNN().apply(
    {"params": state.params, "batch_stats": init_stats}, x_test[0], train=False
  )
  assert not np.allclose(logits, stale)
  assert _error(logits, y_test[0]) < 0.25


def test_linen_batch_stats_are_those_of_the_step_at_x():
  """After a step, batch_stats = the caller's forward pass at x on batch 0, whatever L is."""
  x, y = _task(jax.random.key(2), 4)
  results = {}
  for num_steps in (1, L):
    tx = TX if num_steps == L else entropy_optax.entropy_sgd(0.5, num_langevin_steps=1, gamma=0.03)
    state = _linen_state(tx, x)
    _, expected = _linen_loss(state, state.params, (x[0], y[0]), state.step_key())
    new_state, _, _ = _linen_step(state, x[:num_steps], y[:num_steps])
    # Equal up to jit-versus-eager rounding.
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
      new_state.batch_stats,
      expected["batch_stats"],
    )
    results[num_steps] = new_state
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
    results[1].batch_stats,
    results[L].batch_stats,
  )
  # The parameters did move differently: the Langevin steps ran.
  assert not np.allclose(
    results[1].params["Dense_0"]["kernel"], results[L].params["Dense_0"]["kernel"]
  )


def test_linen_plain_optax_matches_flax_train_state():
  x = jax.random.normal(jax.random.key(3), (4, 3))
  model = nn.Dense(2)
  params = model.init(jax.random.key(0), x)["params"]
  tx = optax.sgd(0.1, momentum=0.9)
  ours = eflax.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  theirs = flax_train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  loss = lambda p: jnp.sum(model.apply({"params": p}, x) ** 2)
  for _ in range(2):
    ours = ours.apply_gradients(grads=jax.grad(loss)(ours.params), grad_fn=lambda p, k: 1 / 0)
    theirs = theirs.apply_gradients(grads=jax.grad(loss)(theirs.params))
  jax.tree.map(np.testing.assert_array_equal, ours.params, theirs.params)
  assert ours.batch_stats is None and ours.variables == {"params": ours.params}


def test_linen_missing_grad_fn_and_bad_fields_fail_loudly():
  params = {"w": jnp.ones(3)}
  state = eflax.TrainState.create(
    apply_fn=None, params=params, tx=entropy_optax.entropy_sgd(0.1, num_langevin_steps=2)
  )
  with pytest.raises(TypeError, match="grad_fn"):
    state.apply_gradients(grads=params)
  with pytest.raises(TypeError, match="batch_stat"):
    state.apply_gradients(grads=params, grad_fn=lambda p, k: p, batch_stat={})  # typo'd field
  with pytest.raises(ValueError, match="key"):
    state.step_key()


def test_linen_train_state_key_is_raw_and_step_dependent():
  state = eflax.TrainState.create(
    apply_fn=None, params={"w": jnp.ones(2)}, tx=optax.sgd(0.1), key=jax.random.key(5)
  )
  assert state.key.dtype == jnp.uint32
  k0 = state.step_key()
  state = state.apply_gradients(grads={"w": jnp.ones(2)})
  assert not np.array_equal(k0, state.step_key())


def _dropout_masks(grad_fn, params, steps):
  return [np.asarray(grad_fn(params, jnp.int32(k))) != 0 for k in steps]


def test_make_grad_fn_dropout_masks_differ_across_langevin_steps():
  """A loss whose gradient is the dropout mask: every Langevin step has its own mask."""

  def loss_fn(w, batch, key):
    return jnp.sum(nn.Dropout(0.5, deterministic=False).apply({}, w * batch, rngs={"dropout": key}))

  w, batches, key = jnp.ones(64), jnp.ones((5, 64)), jax.random.key(7)
  grad_fn = jax.jit(eflax.make_grad_fn(loss_fn, batches, key=key))
  step0 = np.asarray(jax.grad(loss_fn)(w, batches[0], key)) != 0
  masks = [step0] + _dropout_masks(grad_fn, w, range(1, 5))
  for i in range(5):
    for j in range(i):
      assert not np.array_equal(masks[i], masks[j]), (i, j)
  np.testing.assert_array_equal(masks[2], _dropout_masks(grad_fn, w, [2])[0])  # deterministic


def test_make_grad_fn_batches_shared_batch_and_out_of_range():
  loss_fn = lambda w, b: jnp.sum(w * b)
  batches = jnp.arange(6.0).reshape(3, 2)
  grad_fn = eflax.make_grad_fn(loss_fn, batches)
  np.testing.assert_array_equal(jax.jit(grad_fn)(jnp.zeros(2), jnp.int32(2)), batches[2])
  assert np.isnan(grad_fn(jnp.zeros(2), jnp.int32(3))).all()  # too few batches: loud NaN
  shared = eflax.make_grad_fn(loss_fn, batches[1], shared_batch=True)
  np.testing.assert_array_equal(shared(jnp.zeros(2), jnp.int32(2)), batches[1])


class NNXCNN(nnx.Module):
  def __init__(self, rngs, size=6):
    self.conv = nnx.Conv(1, 8, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(8, momentum=0.5, rngs=rngs)
    self.dropout = nnx.Dropout(0.25, rngs=rngs)
    self.dense = nnx.Linear(8 * size * size, 2, rngs=rngs)

  def __call__(self, x):
    x = self.dropout(nnx.relu(self.bn(self.conv(x))))
    return self.dense(x.reshape(x.shape[0], -1))


def _nnx_loss(model, batch):
  return optax.softmax_cross_entropy_with_integer_labels(model(batch[0]), batch[1]).mean()


@nnx.jit
def _nnx_step(model, optimizer, xs, ys):
  grad_fn = eflax.nnx_grad_fn(model, _nnx_loss, (xs, ys))
  loss, grads = nnx.value_and_grad(_nnx_loss)(model, (xs[0], ys[0]))
  optimizer.update(model, grads, grad_fn=grad_fn)
  return loss


def test_nnx_bn_dropout_cnn_trains_and_keeps_model_state_correct():
  x, y = _task(jax.random.key(0), 8 * L)
  xs, ys = x.reshape(8, L, *x.shape[1:]), y.reshape(8, L, -1)
  model = NNXCNN(nnx.Rngs(0))
  optimizer = nnx.Optimizer(
    model, entropy_optax.entropy_sgd(0.5, num_langevin_steps=L, gamma=0.03), wrt=nnx.Param
  )
  model.train()
  # One step by hand first: BatchStat = the forward pass at x on batch 0; RNG count + 1.
  reference = nnx.clone(model)
  _nnx_loss(reference, (xs[0, 0], ys[0, 0]))
  count = int(model.dropout.rngs.count[...])
  losses = [float(_nnx_step(model, optimizer, xs[0], ys[0]))]
  np.testing.assert_allclose(model.bn.mean[...], reference.bn.mean[...], rtol=1e-6)  # jit vs eager
  np.testing.assert_allclose(model.bn.var[...], reference.bn.var[...], rtol=1e-6)
  assert int(model.dropout.rngs.count[...]) == count + 1
  assert int(optimizer.step[...]) == 1
  for epoch in range(3):
    for i in range(int(epoch == 0), xs.shape[0]):
      losses.append(float(_nnx_step(model, optimizer, xs[i], ys[i])))
  assert np.mean(losses[-8:]) < 0.6 * np.mean(losses[:4]), losses
  stats = optax.tree.get(nnx.as_pure(optimizer.opt_state), "langevin_stats")
  assert float(stats.mean_distance) > 0
  model.eval()
  x_test, y_test = _task(jax.random.key(1), 1, batch=256)
  assert _error(model(x_test[0]), y_test[0]) < 0.25
  stale = nnx.clone(model)
  stale.bn.mean[...] = jnp.zeros_like(stale.bn.mean[...])
  stale.bn.var[...] = jnp.ones_like(stale.bn.var[...])
  assert not np.allclose(model(x_test[0]), stale(x_test[0]))  # eval uses the running stats


class MaskProbe(nnx.Module):
  """loss = sum(dropout(w)): its gradient is the dropout mask."""

  def __init__(self, rngs):
    self.w = nnx.Param(jnp.ones(64))
    self.dropout = nnx.Dropout(0.5, rngs=rngs)

  def __call__(self, batch):
    return jnp.sum(self.dropout(self.w[...] * batch))


def test_nnx_dropout_masks_differ_across_langevin_steps():
  model = MaskProbe(nnx.Rngs(dropout=3))
  batches = jnp.ones((5, 64))
  params = nnx.as_pure(nnx.state(model, nnx.Param))
  grad_fn = eflax.nnx_grad_fn(model, lambda m, b: m(b), batches)
  masks = [np.asarray(nnx.grad(lambda m: m(batches[0]))(model)["w"][...]) != 0]
  masks += [np.asarray(grad_fn(params, jnp.int32(k))["w"]) != 0 for k in range(1, 5)]
  for i in range(5):
    for j in range(i):
      assert not np.array_equal(masks[i], masks[j]), (i, j)
  np.testing.assert_array_equal(masks[3], np.asarray(grad_fn(params, jnp.int32(3))["w"]) != 0)
  assert int(model.dropout.rngs.count[...]) == 1  # only the step-0 forward pass counted


def test_nnx_plain_optax_through_the_same_path():
  model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
  twin = nnx.clone(model)
  loss_fn = lambda m, b: jnp.mean((m(b[0]) - b[1]) ** 2)
  xs, ys = jnp.ones((1, 4, 2)), jnp.zeros((1, 4, 1))
  opt = nnx.Optimizer(model, optax.adam(0.1), wrt=nnx.Param)
  opt_twin = nnx.Optimizer(twin, optax.adam(0.1), wrt=nnx.Param)
  opt.update(
    model,
    nnx.grad(loss_fn)(model, (xs[0], ys[0])),
    grad_fn=eflax.nnx_grad_fn(model, loss_fn, (xs, ys)),
  )
  opt_twin.update(twin, nnx.grad(loss_fn)(twin, (xs[0], ys[0])))
  np.testing.assert_array_equal(model.kernel[...], twin.kernel[...])


@pytest.mark.parametrize("index", [0, 1])
def test_docs_flax_page_examples_run(index):
  """The code blocks of docs/flax.md (Linen, NNX) run as they are and reduce the loss."""
  blocks = re.findall(r"```python\n(.*?)```", FLAX_PAGE.read_text(), re.S)
  assert len(blocks) == 2
  namespace = {}
  code = blocks[index].replace("range(20)", "range(10)").replace("L, model = 5,", "L, model = 3,")
  assert code.count("range(10)") == 1 and code.count("L, model = 3,") == 1  # shorter, same code
  exec(compile(code, str(FLAX_PAGE), "exec"), namespace)
  assert float(namespace["loss"]) < 0.6
  assert np.isfinite(np.asarray(namespace["logits"])).all()
