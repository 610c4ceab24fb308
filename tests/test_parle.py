"""Parle (entropy_optax.parle, elastic_coupling, replica_average) against independent computations.

The replicas are a leading axis of every array, run by ``jax.vmap(..., axis_name="replica")``;
``tests/parle_shard_map_check.py`` runs the same steps under ``jax.shard_map`` on 4 simulated
devices (a fresh process: the device count is fixed at JAX start-up).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import entropy_optax as eo
from tests.fresh_process import run_check

AXIS = "replica"
DIM, BATCH = 3, 8


def make_data(num_replicas: int, num_steps: int, num_batches: int, seed: int = 0, same=False):
  """Linear-regression mini-batches (replicas, steps, L, batch, ...), each replica its own."""
  rng = np.random.default_rng(seed)
  shape = (1 if same else num_replicas, num_steps, num_batches, BATCH)
  x = rng.normal(size=(*shape, DIM)).astype(np.float32)
  w_true = rng.normal(size=(shape[0], 1, 1, 1, DIM)).astype(np.float32)  # a target per replica
  y = np.sum(x * w_true, -1) + 0.1 * rng.normal(size=shape).astype(np.float32)
  if same:
    x, y = (np.repeat(a, num_replicas, 0) for a in (x, y))
  return jnp.asarray(x), jnp.asarray(y)


def loss(params, x, y):
  return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def init_params(num_replicas: int):
  one = {"w": jnp.full((DIM,), 0.1, jnp.float32), "b": jnp.zeros([], jnp.float32)}
  return jax.tree.map(lambda a: jnp.broadcast_to(a, (num_replicas, *a.shape)), one)


def one_step(tx, params, state, xs, ys):
  """One update of one replica on its L mini-batches ``xs[k], ys[k]``."""
  grad_fn = lambda p, k: jax.grad(loss)(p, xs[k], ys[k])
  updates, state = tx.update(grad_fn(params, 0), state, params, grad_fn=grad_fn)
  return optax.apply_updates(params, updates), state


def run_steps(tx, data, num_replicas: int):
  """All steps of ``data`` (a ``lax.scan``), the replicas on a vmapped named axis; jittable."""
  xs, ys = data
  params = init_params(num_replicas)
  state = jax.vmap(tx.init, axis_name=AXIS)(params)
  step = jax.vmap(lambda p, s, x, y: one_step(tx, p, s, x, y), axis_name=AXIS)

  def body(carry, batch):
    return step(*carry, *batch), None

  # Steps on the scan's leading axis: (replicas, steps, ...) -> (steps, replicas, ...).
  batches = (jnp.swapaxes(xs, 0, 1), jnp.swapaxes(ys, 0, 1))
  return jax.lax.scan(body, (params, state), batches)[0]


def run_vmap(tx, data, num_replicas: int):
  """``run_steps`` jitted: (params, state) after all steps."""
  return jax.jit(lambda d: run_steps(tx, d, num_replicas))(data)


def spread(params) -> float:
  """Root mean square distance of the replicas to their average (independent of the stats)."""
  flat = np.concatenate([np.asarray(a).reshape(a.shape[0], -1) for a in jax.tree.leaves(params)], 1)
  return float(np.sqrt(np.mean(np.sum((flat - flat.mean(0)) ** 2, 1))))


ENTROPY = dict(
  num_langevin_steps=4,
  gamma=eo.exponential_scoping(0.3, 0.05),
  langevin_lr=0.05,
  noise=1e-2,
  weight_decay=1e-3,
)


def run_single(tx, data):
  """All steps of one replica's ``data`` (steps, L, batch, ...) without a replica axis."""
  params = jax.tree.map(lambda a: a[0], init_params(1))

  def body(carry, batch):
    return one_step(tx, *carry, *batch), None

  return jax.lax.scan(body, (params, tx.init(params)), data)[0]


def test_one_replica_rho_zero_is_entropy_sgd_exactly():
  """n = 1 (a named axis of size 1) and rho = 0: bit for bit ``entropy_sgd``."""
  data = make_data(1, 6, 4)
  tx = eo.parle(0.1, rho=0.0, key=3, independent_noise=False, **ENTROPY)
  params, state = run_vmap(tx, data, 1)
  ref_tx = eo.entropy_sgd(0.1, key=3, **ENTROPY)
  ref, ref_state = jax.jit(lambda d: run_single(ref_tx, d))((data[0][0], data[1][0]))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[0], b), params, ref)
  stats = optax.tree.get(state, "langevin_stats")
  np.testing.assert_array_equal(stats.cosine[0], optax.tree.get(ref_state, "langevin_stats").cosine)
  assert float(optax.tree.get(state, "elastic_stats").replica_spread[0]) == 0.0


def test_axis_name_none_is_entropy_sgd_exactly():
  data = make_data(1, 5, 4, seed=1)
  one = (data[0][0], data[1][0])
  parle = eo.parle(0.1, rho=2.0, axis_name=None, **ENTROPY)
  got, _ = jax.jit(lambda d: run_single(parle, d))(one)
  want, _ = jax.jit(lambda d: run_single(eo.entropy_sgd(0.1, **ENTROPY), d))(one)
  jax.tree.map(np.testing.assert_array_equal, got, want)


def test_rho_zero_replicas_are_independent_entropy_sgd_runs():
  """rho = 0, four replicas: each is entropy_sgd with the key fold_in(key, replica index)."""
  data = make_data(4, 4, 4, seed=2)
  params, _ = run_vmap(eo.parle(0.1, rho=0.0, key=7, **ENTROPY), data, 4)
  keys = jax.vmap(lambda a: jax.random.fold_in(jax.random.PRNGKey(7), a))(jnp.arange(4))
  run = lambda key, d: run_single(eo.entropy_sgd(0.1, key=key, **ENTROPY), d)
  ref, _ = jax.jit(jax.vmap(run))(keys, data)
  close = lambda v, r: np.testing.assert_allclose(v, r, rtol=1e-6, atol=1e-7)
  jax.tree.map(close, params, ref)


def easgd_numpy(data, lr, rho, num_replicas):
  """Synchronous Elastic-Averaging SGD, center = the replicas' current average, in NumPy."""
  xs, ys = (np.asarray(a, np.float64) for a in data)
  w = np.full((num_replicas, DIM), 0.1)
  b = np.zeros(num_replicas)
  for t in range(xs.shape[1]):
    w_bar, b_bar = w.mean(0), b.mean()
    new_w, new_b = w.copy(), b.copy()
    for a in range(num_replicas):
      x, y = xs[a, t, 0], ys[a, t, 0]
      residual = x @ w[a] + b[a] - y
      grad_w, grad_b = 2 * x.T @ residual / len(y), 2 * residual.mean()
      new_w[a] = w[a] - lr * (grad_w + rho * (w[a] - w_bar))
      new_b[a] = b[a] - lr * (grad_b + rho * (b[a] - b_bar))
    w, b = new_w, new_b
  return w, b


@pytest.mark.parametrize("gamma", [1e-4, 10.0])
def test_one_langevin_step_is_synchronous_easgd(gamma):
  """L = 1: the chain's only step is at x' = x, so gamma has no effect (the reduction's
  gamma = 0); with alpha = 1, langevin_lr = 1, noise 0 and no momentum, EASGD."""
  data = make_data(3, 8, 1, seed=3)
  tx = eo.parle(
    0.1,
    rho=1.5,
    num_langevin_steps=1,
    gamma=gamma,
    langevin_lr=1.0,
    alpha=1.0,
    noise=0.0,
    momentum=0.0,
  )
  params, _ = run_vmap(tx, data, 3)
  w, b = easgd_numpy(data, 0.1, 1.5, 3)
  np.testing.assert_allclose(params["w"], w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(params["b"], b, rtol=1e-5, atol=1e-6)


def test_replicas_with_the_same_key_and_data_stay_identical():
  data = make_data(4, 5, 4, seed=4, same=True)
  same, _ = run_vmap(eo.parle(0.1, rho=1.0, independent_noise=False, **ENTROPY), data, 4)
  for leaf in jax.tree.leaves(same):
    assert all(np.array_equal(leaf[0], leaf[a]) for a in range(1, 4))
  # The noise alone separates them when each replica folds its index into the key.
  apart, _ = run_vmap(eo.parle(0.1, rho=1.0, **ENTROPY), data, 4)
  assert spread(apart) > 0


def test_spread_shrinks_as_rho_grows_and_the_hard_coupling_keeps_replicas_identical():
  """No momentum, lr * rho in [0, 0.8] (< 1: each step contracts the distance to x-bar)."""
  data = make_data(4, 12, 4, seed=5)
  lr, rhos = 0.1, jnp.array([0.0, 0.5, 2.0, 8.0])
  # One compilation: the values of rho on an outer (unnamed) vmap axis.
  run = lambda rho: run_steps(eo.parle(lr, rho=rho, momentum=0.0, **ENTROPY), data, 4)
  params, state = jax.jit(jax.vmap(run))(rhos)
  spreads = [spread(jax.tree.map(lambda a: a[i], params)) for i in range(len(rhos))]
  np.testing.assert_array_equal(optax.tree.get(state, "elastic_rho")[:, 0], rhos)
  assert all(a > b for a, b in zip(spreads, spreads[1:])), spreads
  assert spreads[-1] < 0.2 * spreads[0], spreads
  hard, state = run_vmap(eo.parle(lr, rho=math.inf, **ENTROPY), data, 4)
  for leaf in jax.tree.leaves(hard):
    assert all(np.array_equal(leaf[0], leaf[a]) for a in range(1, 4))
  stats = optax.tree.get(state, "elastic_stats")
  assert float(stats.elastic_rho[0]) == math.inf and float(stats.replica_spread[0]) > 0


def test_stats_are_the_distances_to_the_average():
  rng = np.random.default_rng(6)
  x = {"w": jnp.asarray(rng.normal(size=(4, 5)), jnp.float32), "b": jnp.asarray(rng.normal(size=4))}
  tx = eo.elastic_coupling(0.5)

  def update(p):
    updates, state = tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)
    return updates, state.elastic_stats

  updates, stats = jax.vmap(update, axis_name=AXIS)(x)
  flat = np.concatenate([np.asarray(x["w"]), np.asarray(x["b"])[:, None]], 1)
  offset = flat - flat.mean(0)
  distance = np.linalg.norm(offset, axis=1)
  np.testing.assert_allclose(stats.distance_to_center, distance, rtol=1e-5)
  np.testing.assert_allclose(stats.replica_spread, np.sqrt(np.mean(distance**2)), rtol=1e-5)
  np.testing.assert_allclose(updates["w"], 0.5 * offset[:, :5], rtol=1e-5, atol=1e-6)


def test_langevin_mean_center_averages_the_chains():
  """center="langevin_mean": g^a = (x^a - z^a) + rho (x^a - mean_b z^b), as the authors' codes."""
  data = make_data(3, 1, 4, seed=7)
  xs, ys = data[0][:, 0], data[1][:, 0]
  local = eo.local_entropy(4, 0.3, 0.05, 0.0, 0.75)
  params = jax.tree.map(
    lambda a: a + jnp.arange(3.0).reshape(-1, *[1] * (a.ndim - 1)) * 0.1, init_params(3)
  )

  def entropy_grad(p, x, y):
    grad_fn = lambda q, k: jax.grad(loss)(q, x[k], y[k])
    return local.update(grad_fn(p, 0), local.init(p), p, grad_fn=grad_fn)[0]

  u = jax.jit(jax.vmap(entropy_grad))(params, xs, ys)
  z = jax.tree.map(lambda p, d: p - d, params, u)
  expected = jax.tree.map(lambda d, p, zz: d + 2.0 * (p - zz.mean(0)), u, params, z)
  tx = optax.chain(local, eo.elastic_coupling(2.0, center="langevin_mean"))

  def coupled(p, x, y):
    grad_fn = lambda q, k: jax.grad(loss)(q, x[k], y[k])
    return tx.update(grad_fn(p, 0), tx.init(p), p, grad_fn=grad_fn)[0]

  got = jax.jit(jax.vmap(coupled, axis_name=AXIS))(params, xs, ys)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, expected)


def test_schedules_and_caps():
  data = make_data(2, 5, 2, seed=8)
  tx = eo.parle(
    0.1,
    rho=lambda t: 1.0 + 2.0 * t,
    rho_max=6.0,
    gamma=lambda t: 0.5 * (t + 1.0),
    gamma_max=1.2,
    num_langevin_steps=2,
  )
  xs, ys = data
  params = init_params(2)
  state = jax.vmap(tx.init, axis_name=AXIS)(params)
  step = jax.jit(jax.vmap(lambda p, s, x, y: one_step(tx, p, s, x, y), axis_name=AXIS))
  rho_seen, gamma_seen = [], []
  for t in range(5):
    params, state = step(params, state, xs[:, t], ys[:, t])
    rho_seen.append(float(optax.tree.get(state, "elastic_rho")[0]))
    gamma_seen.append(float(optax.tree.get(state, "langevin_gamma")[0]))
  np.testing.assert_allclose(rho_seen, [1.0, 3.0, 5.0, 6.0, 6.0])
  np.testing.assert_allclose(gamma_seen, [0.5, 1.0, 1.2, 1.2, 1.2], rtol=1e-6)


def test_outside_a_named_axis_is_a_clear_error_and_none_is_one_replica():
  params = jax.tree.map(lambda a: a[0], init_params(1))
  tx = eo.parle(0.1, rho=1.0)
  with pytest.raises(ValueError, match="jax.vmap\\(\\.\\.\\., axis_name='replica'\\)"):
    tx.init(params)
  coupling = eo.elastic_coupling(1.0, axis_name="replica")
  with pytest.raises(ValueError, match="axis_name=None for one replica"):
    coupling.update(params, coupling.init(params), params)
  with pytest.raises(ValueError, match="rho must be finite and >= 0"):
    eo.elastic_coupling(-1.0)
  with pytest.raises(ValueError, match="chain replica_average after the optimizer"):
    eo.elastic_coupling(math.inf)
  with pytest.raises(ValueError, match="center must be one of"):
    eo.elastic_coupling(1.0, center="x")
  single = eo.elastic_coupling(1.0, axis_name=None)
  updates, state = single.update(params, single.init(params), params)
  jax.tree.map(np.testing.assert_array_equal, updates, params)
  assert float(state.elastic_stats.replica_spread) == 0.0


def test_bfloat16_parameters_keep_their_dtype():
  params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), init_params(2))
  tx = optax.chain(eo.elastic_coupling(1.0), optax.sgd(0.1))

  def step(p):
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, p), tx.init(p), p)
    return optax.apply_updates(p, updates)

  out = jax.vmap(step, axis_name=AXIS)(params)
  assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(out))


def test_vmap_equals_shard_map_on_four_simulated_devices():
  report = run_check("parle_shard_map_check.py", devices=4, timeout_s=300)
  assert report["devices"] == 4 and report["sharded_over"] == 4, report
  assert report["replicas_apart"] > 0, report
  assert report["max_param_diff"] == 0.0, report
  assert report["max_stats_diff"] == 0.0, report


def test_inject_hyperparams_rho_under_the_replica_axis():
  """rho as an injected hyper-parameter: setting it in the state changes the coupling."""
  data = make_data(2, 1, 2, seed=9)
  tx = optax.inject_hyperparams(eo.parle, static_args=("num_langevin_steps",))(
    learning_rate=0.1, rho=1.0, num_langevin_steps=2, noise=0.0, momentum=0.0
  )
  params = init_params(2)
  state = jax.vmap(tx.init, axis_name=AXIS)(params)
  state.hyperparams["rho"] = jnp.full((2,), 3.0)
  step = jax.jit(jax.vmap(lambda p, s, x, y: one_step(tx, p, s, x, y), axis_name=AXIS))
  _, state = step(params, state, data[0][:, 0], data[1][:, 0])
  np.testing.assert_array_equal(optax.tree.get(state, "elastic_rho"), [3.0, 3.0])
