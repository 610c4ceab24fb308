"""Numbers of the core against closed forms, quadrature and an independent plain-Python loop."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import entropy_optax as eo


def jit_update(tx, grads, state, params, grad_fn):
  """tx.update under jit: compiling once is several times faster than running op by op."""
  return jax.jit(functools.partial(tx.update, grad_fn=grad_fn))(grads, state, params)


# ---------------------------------------------------------------------------------------------
# A quadratic f = 1/2 x^T A x with spread curvatures: everything has a closed form.
CURVATURES = np.array([0.1, 0.5, 1.0, 2.0, 5.0], np.float32)
X0 = np.array([1.0, -2.0, 0.5, 3.0, -1.0], np.float32)


def quadratic_grad(x, k):
  del k
  return CURVATURES * x


def test_noise_free_quadratic_gives_closed_form():
  gamma = 0.7
  tx = eo.local_entropy(300, gamma, 0.1, 0.0, 1.0, unroll=10)
  x = jnp.asarray(X0)
  updates, _ = jax.jit(functools.partial(tx.update, grad_fn=quadratic_grad))(
    quadratic_grad(x, 0), tx.init(x), x
  )
  expected = CURVATURES / (CURVATURES + gamma) * X0  # A (A + gamma I)^-1 x
  np.testing.assert_allclose(updates, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sampler", ["irwin_hall", "gaussian"])
def test_noisy_quadratic_samples_the_gibbs_measure(sampler):
  """alpha = 1 makes mu the last sample: many chains give the Gibbs mean and variance."""
  gamma, lr, noise, steps, chains = 0.5, 0.05, 0.3, 400, 20_000
  x = jnp.asarray(X0)
  run = lambda key: eo.langevin_mean(
    quadratic_grad,
    x,
    key,
    gamma=gamma,
    num_steps=steps,
    langevin_lr=lr,
    noise=noise,
    alpha=1.0,
    noise_distribution=sampler,
    unroll=8,
  )[0]
  samples = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(0), chains))
  c = CURVATURES + gamma
  mean = gamma * X0 / c  # Gibbs mean (A + gamma)^-1 gamma x
  temperature = noise**2 / 2
  # Euler-Maruyama's stationary variance lr noise^2 / (1 - (1 - lr c)^2) -> T / c as lr -> 0.
  variance = lr * noise**2 / (1 - (1 - lr * c) ** 2)
  np.testing.assert_allclose(variance, temperature / c, rtol=0.2)
  std_error_mean = np.sqrt(variance / chains)
  np.testing.assert_array_less(np.abs(samples.mean(0) - mean), 5 * std_error_mean)
  np.testing.assert_allclose(samples.var(0), variance, rtol=5 * np.sqrt(2 / chains))


# ---------------------------------------------------------------------------------------------
# A 1-D landscape: a wide shallow valley at -2 and a deeper sharp one at 1.5.
WIDE, SHARP = (1.0, -2.0, 1.0), (1.5, 1.5, 0.2)  # (depth, centre, width)
TEMPERATURE = 1.0
NOISE = float(np.sqrt(2 * TEMPERATURE))


def landscape(x, xp=jnp):
  return -sum(a * xp.exp(-((x - c) ** 2) / (2 * s**2)) for a, c, s in (WIDE, SHARP))


landscape_grad = jax.grad(lambda x: jnp.sum(landscape(x)))


def quadrature_local_entropy_grad(x, gamma):
  """-grad F = gamma (x - <x'>) with <x'> under exp(-(f(x') + gamma/2 (x - x')^2) / T)."""
  grid = np.linspace(-15, 15, 300_001)
  energy = (landscape(grid, np) + gamma / 2 * (x - grid) ** 2) / TEMPERATURE
  weights = np.exp(-(energy - energy.min()))
  return gamma * (x - (weights * grid).sum() / weights.sum())


def test_langevin_estimate_matches_quadrature():
  gamma, chains = 1.0, 512
  xs = jnp.array([-3.0, -1.0, 0.0, 1.2, 2.0], jnp.float32)

  def estimate(x, key):
    mu, _ = eo.langevin_mean(
      lambda p, k: landscape_grad(p),
      x,
      key,
      gamma=gamma,
      num_steps=3000,
      langevin_lr=0.01,
      noise=NOISE,
      alpha=0.002,
      noise_distribution="gaussian",
      unroll=8,
    )
    return mu

  keys = jax.random.split(jax.random.key(1), chains)
  mus = jax.jit(jax.vmap(jax.vmap(estimate, (None, 0)), (0, None)))(xs, keys)
  langevin = gamma * (xs - mus.mean(1))
  exact = np.array([quadrature_local_entropy_grad(float(x), gamma) for x in xs])
  std_error = gamma * mus.std(1) / np.sqrt(chains)
  # Statistical error plus the O(lr) bias of an unadjusted Langevin chain.
  np.testing.assert_array_less(np.abs(langevin - exact), 5 * std_error + 0.03)
  assert exact.min() < -0.2 and exact.max() > 0.15  # the points pull both ways


def test_entropy_sgd_ends_in_the_wide_valley_and_sgd_in_the_sharp_one():
  x0 = jnp.float32(1.0)  # between the valleys, inside the sharp valley's basin for SGD
  gamma = 0.5
  # Where the scope sees the landscape, -grad F points to the wide valley all the way.
  grid = np.linspace(-1.5, 2.5, 17)
  assert all(quadrature_local_entropy_grad(x, gamma) > 0 for x in grid)

  def run(tx, steps, x):
    def body(carry, _):
      x, state = carry
      grads = landscape_grad(x)
      updates, state = tx.update(grads, state, x, grad_fn=lambda p, k: landscape_grad(p))
      return (optax.apply_updates(x, updates), state), None

    return jax.lax.scan(body, (x, tx.init(x)), None, length=steps)[0][0]

  sgd_end = jax.jit(lambda x: run(optax.sgd(0.01), 3000, x))(x0)
  assert abs(sgd_end - SHARP[1]) < 0.05

  def entropy_sgd_end(seed):
    tx = eo.entropy_sgd(
      0.2,
      num_langevin_steps=1500,
      gamma=gamma,
      langevin_lr=0.02,
      noise=NOISE,
      alpha=2 / 1500,
      momentum=0.0,
      key=seed,
      unroll=8,
    )
    return run(tx, 300, x0)

  ends = jax.jit(jax.vmap(entropy_sgd_end))(jax.vmap(jax.random.PRNGKey)(jnp.arange(8)))
  np.testing.assert_array_less(np.abs(ends - WIDE[1]), 0.75)


# ---------------------------------------------------------------------------------------------
# entropy_sgd against a plain-Python loop of the semantics, every option on.
def mlp_loss(params, batch):
  x, y = batch
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  return jnp.mean((h @ params["w2"] - y) ** 2)


def make_mlp_problem(num_steps):
  k1, k2, k3, k4 = jax.random.split(jax.random.key(3), 4)
  params = {
    "w1": jax.random.normal(k1, (4, 8)) * 0.5,
    "b1": jnp.zeros(8),
    "w2": jax.random.normal(k2, (8, 2)) * 0.5,
  }
  xs = jax.random.normal(k3, (num_steps, 16, 4))
  ys = jax.random.normal(k4, (num_steps, 16, 2))
  return params, (xs, ys)


def reference_entropy_sgd(
  params,
  batches,
  outer_steps,
  *,
  L,
  lr,
  gamma_fn,
  langevin_lr,
  alpha,
  momentum,
  langevin_momentum,
  wd,
):
  """The core issue's semantics, leaf by leaf in float64 numpy, noise 0."""
  grad = jax.grad(mlp_loss)
  x = {k: np.asarray(v, np.float64) for k, v in params.items()}
  outer_buffer = {k: np.zeros_like(v) for k, v in x.items()}
  trajectory = []
  for t in range(outer_steps):
    gamma = float(gamma_fn(t))
    xp = {k: v.copy() for k, v in x.items()}
    mu = {k: v.copy() for k, v in x.items()}
    inner_buffer = {k: np.zeros_like(v) for k, v in x.items()}
    for k in range(L):
      batch = (batches[0][(t * L + k) % len(batches[0])], batches[1][(t * L + k) % len(batches[0])])
      g = grad({n: jnp.asarray(v, jnp.float32) for n, v in xp.items()}, batch)
      for n in x:
        gn = np.asarray(g[n], np.float64) + wd * xp[n]
        inner_buffer[n] = langevin_momentum * inner_buffer[n] + gn
        gn = gn + langevin_momentum * inner_buffer[n]  # Nesterov
        xp[n] = xp[n] - langevin_lr * (gn - gamma * (x[n] - xp[n]))
        mu[n] = (1 - alpha) * mu[n] + alpha * xp[n]
    for n in x:
      outer_grad = (x[n] - mu[n]) + wd * x[n]
      outer_buffer[n] = momentum * outer_buffer[n] + outer_grad
      x[n] = x[n] - lr * (outer_grad + momentum * outer_buffer[n])  # Nesterov
    trajectory.append({n: v.copy() for n, v in x.items()})
  return trajectory


def test_entropy_sgd_matches_plain_python_loop():
  L, outer_steps = 4, 5
  params, batches = make_mlp_problem(outer_steps * L)
  gamma_fn = eo.exponential_scoping(0.3, 0.5)
  settings = dict(lr=0.3, langevin_lr=0.2, alpha=0.25, momentum=0.9, langevin_momentum=0.9, wd=1e-2)
  tx = eo.entropy_sgd(
    settings["lr"],
    num_langevin_steps=L,
    gamma=gamma_fn,
    langevin_lr=settings["langevin_lr"],
    noise=0.0,
    alpha=settings["alpha"],
    momentum=settings["momentum"],
    langevin_momentum=settings["langevin_momentum"],
    weight_decay=settings["wd"],
  )

  @jax.jit
  def step(params, state, t):
    batch = lambda k: jax.tree.map(lambda b: b[t * L + k], batches)
    grads = jax.grad(mlp_loss)(params, batch(0))
    updates, state = tx.update(
      grads, state, params, grad_fn=lambda p, k: jax.grad(mlp_loss)(p, batch(k))
    )
    return optax.apply_updates(params, updates), state

  expected = reference_entropy_sgd(params, batches, outer_steps, L=L, gamma_fn=gamma_fn, **settings)
  state = tx.init(params)
  for t in range(outer_steps):
    params, state = step(params, state, t)
    for name in params:
      np.testing.assert_allclose(params[name], expected[t][name], rtol=2e-5, atol=2e-6)
  stats = optax.tree.get(state, "langevin_stats")
  np.testing.assert_allclose(stats.langevin_gamma, gamma_fn(outer_steps - 1), rtol=1e-6)


def test_update_uses_incoming_gradient_as_first_step():
  """local_entropy's update == langevin_mean calling grad_fn for every step."""
  L = 5
  params, batches = make_mlp_problem(L)
  grad_fn = lambda p, k: jax.grad(mlp_loss)(p, jax.tree.map(lambda b: b[k], batches))
  tx = eo.local_entropy(L, 0.5, 0.1, 1e-2, 0.75, key=7)
  state = tx.init(params)
  updates, new_state = jit_update(tx, grad_fn(params, 0), state, params, grad_fn)
  _, chain_key = jax.random.split(state.langevin_key)
  mu, stats = eo.langevin_mean(
    grad_fn, params, chain_key, gamma=0.5, num_steps=L, langevin_lr=0.1, noise=1e-2, alpha=0.75
  )
  for name in params:
    np.testing.assert_allclose(updates[name], params[name] - mu[name], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(stats.grad_norm, optax.tree.norm(grad_fn(params, 0)), rtol=1e-6)
  assert new_state.langevin_count == 1
  # A different incoming gradient changes the result: it really is step 0's gradient.
  other, _ = jit_update(tx, optax.tree.zeros_like(params), state, params, grad_fn)
  assert not np.allclose(other["w1"], updates["w1"])


def test_diagnostics():
  x = jnp.asarray(X0)
  gamma = 0.7
  mu, stats = eo.langevin_mean(
    quadratic_grad,
    x,
    jax.random.key(0),
    gamma=gamma,
    num_steps=300,
    langevin_lr=0.1,
    noise=0.0,
    alpha=1.0,
    unroll=10,
  )
  direction = CURVATURES / (CURVATURES + gamma) * X0
  grad = CURVATURES * X0
  np.testing.assert_allclose(stats.langevin_gamma, gamma)
  np.testing.assert_allclose(stats.grad_norm, np.linalg.norm(grad), rtol=1e-6)
  np.testing.assert_allclose(stats.entropy_grad_norm, gamma * np.linalg.norm(direction), rtol=1e-5)
  np.testing.assert_allclose(
    stats.cosine, grad @ direction / np.linalg.norm(grad) / np.linalg.norm(direction), rtol=1e-5
  )
  # The chain converges geometrically, so the mean distance is slightly below the final one.
  assert 0.9 * np.linalg.norm(direction) < stats.mean_distance < np.linalg.norm(direction)


# ---------------------------------------------------------------------------------------------
# Contract tests every optimizer passes.
OPTIMIZERS = {
  "local_entropy": lambda: eo.local_entropy(3, 0.1, 0.1, 1e-3, 0.75),
  "entropy_sgd": lambda: eo.entropy_sgd(0.1, num_langevin_steps=3, weight_decay=1e-3),
  "entropy_adam": lambda: eo.entropy_adam(1e-3, num_langevin_steps=3, langevin_momentum=0.9),
}


def _problem(dtype=jnp.float32):
  params, batches = make_mlp_problem(3)
  params = jax.tree.map(lambda p: p.astype(dtype), params)

  def grad_fn(p, k):
    return jax.grad(mlp_loss)(p, jax.tree.map(lambda b: b[k].astype(dtype), batches))

  return params, grad_fn


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_jit_compiles_once(name):
  tx = OPTIMIZERS[name]()
  params, grad_fn = _problem()
  chex.clear_trace_counter()  # chex counts per code object: one `step` serves every optimizer

  @jax.jit
  @chex.assert_max_traces(n=1)  # a second trace (a recompilation) raises
  def step(params, state):
    updates, state = tx.update(grad_fn(params, 0), state, params, grad_fn=grad_fn, unused=1.0)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  params, state1 = step(params, state)
  params, state2 = step(params, state1)
  chex_shapes = lambda s: jax.tree.map(lambda a: (a.shape, a.dtype), s)
  assert chex_shapes(state1) == chex_shapes(state2) == chex_shapes(state)


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dtypes_kept(name, dtype):
  tx = OPTIMIZERS[name]()
  params, grad_fn = _problem(dtype)
  state = tx.init(params)
  updates, state = jit_update(tx, grad_fn(params, 0), state, params, grad_fn)
  assert all(u.dtype == dtype for u in jax.tree.leaves(updates))
  mu = optax.tree.get(state, "LocalEntropyState").langevin_mu
  assert all(m.dtype == jnp.float32 for m in jax.tree.leaves(mu))


def test_bfloat16_params_keep_noise_and_coupling():
  """In a bf16 chain, 1e-5 noise on weights of size ~1 would round away; ours keeps it."""
  params = jnp.ones(1000, jnp.bfloat16)
  zero_grad = lambda p, k: jnp.zeros_like(p)
  tx = eo.local_entropy(20, 1e-3, 0.1, 1e-4, 0.75)
  updates, state = jit_update(tx, zero_grad(params, 0), tx.init(params), params, zero_grad)
  mu = state.langevin_mu
  assert mu.dtype == jnp.float32
  # With no gradient, x' is a random walk and mu - x = sum_j n_j sum_{k>=j} w_k, with the
  # averaging weights w_k = alpha (1 - alpha)^(L - k) of sample k.
  alpha, steps = 0.75, 20
  weights = alpha * (1 - alpha) ** (steps - np.arange(1, steps + 1))
  expected = np.sqrt(0.1) * 1e-4 * np.sqrt(np.sum(np.cumsum(weights[::-1]) ** 2))
  np.testing.assert_allclose(float(jnp.std(mu - 1.0)), expected, rtol=0.1)
  naive = (params + jnp.asarray(1e-5, jnp.bfloat16)).astype(jnp.float32)
  assert float(jnp.max(jnp.abs(naive - 1.0))) == 0.0  # what a bf16 chain would have kept


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_vmap_over_independent_runs(name):
  tx = OPTIMIZERS[name]()
  params, grad_fn = _problem()
  seeds = jnp.arange(3)

  def init(seed):
    state = tx.init(params)
    return optax.tree.set(state, langevin_key=jax.random.PRNGKey(seed))

  @jax.jit
  def update(state):
    return jit_update(tx, grad_fn(params, 0), state, params, grad_fn)

  states = jax.vmap(init)(seeds)
  batched = jax.jit(jax.vmap(update))(states)
  for i, seed in enumerate(seeds):
    single = update(init(seed))
    for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(single)):
      np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-7)
  mus = optax.tree.get(batched[1], "LocalEntropyState").langevin_mu
  assert not np.allclose(mus["w1"][0], mus["w1"][1])  # each run has its own noise


def test_vmap_langevin_mean_over_gamma():
  x = jnp.asarray(X0)
  gammas = jnp.array([0.1, 1.0, 10.0])
  run = lambda g: eo.langevin_mean(
    quadratic_grad,
    x,
    jax.random.key(0),
    gamma=g,
    num_steps=600,
    langevin_lr=0.1,
    noise=0.0,
    alpha=1.0,
    unroll=10,
  )[0]
  mus = jax.vmap(run)(gammas)
  for g, mu in zip(gammas, mus):
    np.testing.assert_allclose(mu, g * X0 / (CURVATURES + g), rtol=1e-4, atol=1e-5)


def test_same_key_same_result_other_key_other_noise():
  params, grad_fn = _problem()
  results = []
  for key in (0, 0, 1, jax.random.key(1)):
    tx = eo.local_entropy(3, 0.1, 0.1, 1e-2, 0.75, key=key)
    results.append(jit_update(tx, grad_fn(params, 0), tx.init(params), params, grad_fn)[0])
  np.testing.assert_array_equal(results[0]["w1"], results[1]["w1"])
  assert not np.allclose(results[0]["w1"], results[2]["w1"])
  np.testing.assert_array_equal(results[2]["w1"], results[3]["w1"])  # typed key == its seed


def test_inject_hyperparams():
  params, grad_fn = _problem()
  tx = optax.inject_hyperparams(eo.entropy_sgd, static_args=("num_langevin_steps",))(
    learning_rate=0.1, num_langevin_steps=3, gamma=0.2
  )
  state = tx.init(params)
  step = jax.jit(lambda s: tx.update(grad_fn(params, 0), s, params, grad_fn=grad_fn))
  updates, state = step(state)
  state.hyperparams["gamma"] = jnp.asarray(0.4)
  _, state = step(state)
  assert float(optax.tree.get(state, "langevin_stats").langevin_gamma) == pytest.approx(0.4)
  reference = eo.entropy_sgd(0.1, num_langevin_steps=3, gamma=0.2)
  expected, _ = jit_update(reference, grad_fn(params, 0), reference.init(params), params, grad_fn)
  # x - mu cancels leading digits: compare with an absolute tolerance near float32's epsilon.
  np.testing.assert_allclose(updates["w1"], expected["w1"], rtol=1e-4, atol=1e-7)


def test_inject_hyperparams_without_static_steps_says_what_to_do():
  params, grad_fn = _problem()
  tx = optax.inject_hyperparams(eo.local_entropy)(3, 0.1, 0.1, 0.0, 0.5)
  with pytest.raises(TypeError, match="static_args=\\('num_langevin_steps',\\)"):
    jax.jit(lambda s: tx.update(grad_fn(params, 0), s, params, grad_fn=grad_fn))(tx.init(params))


def test_chain_with_any_optimizer():
  params, grad_fn = _problem()
  tx = optax.chain(
    eo.local_entropy(3, 0.1, 0.1, 0.0, 0.75),
    optax.clip_by_global_norm(1.0),
    optax.lion(1e-3, weight_decay=0.0),
  )
  state = tx.init(params)
  updates, state = jit_update(tx, grad_fn(params, 0), state, params, grad_fn)
  plain = eo.local_entropy(3, 0.1, 0.1, 0.0, 0.75)
  direction, _ = jit_update(plain, grad_fn(params, 0), plain.init(params), params, grad_fn)
  # lion's first update is -lr sign(direction) (clipping keeps the sign).
  np.testing.assert_allclose(updates["w1"], -1e-3 * jnp.sign(direction["w1"]), atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Bad input.
@pytest.mark.parametrize(
  "kwargs, name",
  [
    (dict(num_langevin_steps=0), "num_langevin_steps"),
    (dict(gamma=0.0), "gamma"),
    (dict(gamma=-1.0), "gamma"),
    (dict(langevin_lr=0.0), "langevin_lr"),
    (dict(noise=-1e-4), "noise"),
    (dict(alpha=0.0), "alpha"),
    (dict(alpha=1.5), "alpha"),
  ],
)
def test_bad_hyperparameters_name_the_argument(kwargs, name):
  args = dict(num_langevin_steps=3, gamma=0.1, langevin_lr=0.1, noise=1e-4, alpha=0.75) | kwargs
  with pytest.raises(ValueError, match=name):
    eo.local_entropy(**args)
  with pytest.raises(ValueError, match=name):
    eo.entropy_sgd(0.1, **args)


def test_bad_noise_distribution():
  with pytest.raises(ValueError, match="noise_distribution"):
    eo.local_entropy(3, 0.1, 0.1, 1e-4, 0.75, noise_distribution="uniform")


def test_missing_grad_fn_says_how_to_pass_it():
  tx = eo.entropy_sgd(0.1)
  params = jnp.ones(3)
  with pytest.raises(TypeError, match=r"grad_fn.*tx.update\(grads, opt_state, params, grad_fn="):
    tx.update(params, tx.init(params), params)


def test_grad_fn_returning_another_structure_names_the_mismatch():
  params, grad_fn = _problem()
  tx = eo.local_entropy(3, 0.1, 0.1, 0.0, 0.75)
  state = tx.init(params)
  wrong_tree = lambda p, k: {"w1": p["w1"], "b1": p["b1"]}
  with pytest.raises(ValueError, match="same tree structure"):
    jit_update(tx, grad_fn(params, 0), state, params, wrong_tree)
  wrong_shape = lambda p, k: dict(p, w1=p["w1"].T)
  with pytest.raises(ValueError, match=r"shape \(8, 4\) for params\['w1'\]"):
    jit_update(tx, grad_fn(params, 0), state, params, wrong_shape)


def _nan_at(step):
  params, grad_fn = _problem()

  def bad_grad_fn(p, k):
    return jax.tree.map(lambda g: g * jnp.where(k == step, jnp.nan, 1.0), grad_fn(p, k))

  return params, bad_grad_fn


def _assert_same_tree(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def test_apply_if_finite_skips_a_non_finite_gradient_at_x():
  params, grad_fn = _nan_at(0)
  tx = optax.apply_if_finite(eo.entropy_sgd(0.1, num_langevin_steps=3), max_consecutive_errors=5)
  state = tx.init(params)
  updates, new_state = jit_update(tx, grad_fn(params, 0), state, params, grad_fn)
  _assert_same_tree(updates, optax.tree.zeros_like(params))
  _assert_same_tree(new_state.inner_state, state.inner_state)
  assert int(new_state.notfinite_count) == 1


def test_apply_if_finite_after_local_entropy_skips_a_diverged_chain():
  params, bad_grad_fn = _nan_at(2)
  _, grad_fn = _problem()
  tx = optax.chain(
    eo.local_entropy(3, 0.1, 0.1, 1e-3, 0.75),
    optax.apply_if_finite(optax.sgd(0.1, momentum=0.9), max_consecutive_errors=5),
  )
  state = tx.init(params)
  step = jax.jit(lambda s, g: tx.update(grad_fn(params, 0), s, params, grad_fn=g), static_argnums=1)
  updates, new_state = step(state, bad_grad_fn)
  _assert_same_tree(updates, optax.tree.zeros_like(params))  # params stay as they are
  # The step did not happen: count, key and stats as they were; mu back at the chain's start x.
  _assert_same_tree(new_state[0]._replace(langevin_mu=None), state[0]._replace(langevin_mu=None))
  _assert_same_tree(new_state[0].langevin_mu, params)
  _assert_same_tree(new_state[1].inner_state, state[1].inner_state)
  assert int(new_state[1].notfinite_count) == 1
  updates, new_state = step(new_state, grad_fn)  # the next good step goes through
  assert int(new_state[0].langevin_count) == 1 and np.any(updates["w1"])


def test_diverged_chain_is_not_hidden():
  params, bad_grad_fn = _nan_at(2)
  _, grad_fn = _problem()
  tx = eo.local_entropy(3, 0.1, 0.1, 1e-3, 0.75)
  state = tx.init(params)
  updates, new_state = jit_update(tx, grad_fn(params, 0), state, params, bad_grad_fn)
  assert np.all(np.isnan(updates["w1"]))
  _assert_same_tree(new_state._replace(langevin_mu=None), state._replace(langevin_mu=None))
  _assert_same_tree(new_state.langevin_mu, params)


def test_rolled_chain_keeps_one_parameter_sized_temporary():
  # Compiled-memory regression check (deterministic, not timed): beyond its inputs and output
  # mu, a rolled chain needs x' only. The noise is recomputed in the loop, never stored; this
  # failed (2x) when XLA hoisted the key-independent part of the noise counter out of the loop.
  params = {"w": jnp.ones((512, 256)), "b": jnp.ones((256,))}
  double = lambda x, k: jax.tree.map(lambda a: 2.0 * a, x)
  chain = lambda p, key: eo.langevin_mean(
    double,
    p,
    key,
    gamma=0.1,
    num_steps=8,
    langevin_lr=0.1,
    noise=1e-3,
    alpha=0.75,
    grad_at_params=p,
    unroll=1,
  )
  memory = jax.jit(chain).lower(params, jax.random.key(0)).compile().memory_analysis()
  param_bytes = sum(a.nbytes for a in jax.tree.leaves(params))
  assert memory.temp_size_in_bytes <= 1.1 * param_bytes, memory.temp_size_in_bytes / param_bytes


# ---------------------------------------------------------------------------------------------
# Scoping schedules.
def test_scoping_schedules():
  t = np.arange(0, 5000, 500)
  np.testing.assert_allclose(eo.exponential_scoping(0.03, 1e-3)(t), 0.03 * 1.001**t, rtol=1e-5)
  np.testing.assert_allclose(eo.linear_scoping(0.03, 1e-3)(t), 0.03 * (1 + 1e-3 * t), rtol=1e-6)
  np.testing.assert_allclose(
    eo.quadratic_scoping(0.03, 1e-3)(t), 0.03 * (1 + 1e-3 * t) ** 2, rtol=1e-6
  )
  bounded = eo.bounded_exponential_scoping(0.03, 1.0, 1e-3)
  np.testing.assert_allclose(bounded(t), 0.03 + 0.97 * (1 - np.exp(-1e-3 * t)), rtol=1e-6)
  assert float(bounded(0)) == pytest.approx(0.03) and float(bounded(10**6)) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="gamma0"):
    eo.exponential_scoping(0.0, 1e-3)
  with pytest.raises(ValueError, match="gamma_max"):
    eo.bounded_exponential_scoping(0.1, 0.01, 1e-3)


def test_scoping_drives_gamma_by_update_count():
  params, grad_fn = _problem()
  tx = eo.entropy_sgd(0.1, num_langevin_steps=2, gamma=eo.exponential_scoping(0.1, 1.0))
  state = tx.init(params)
  gammas = []
  for _ in range(3):
    params_updates, state = jit_update(tx, grad_fn(params, 0), state, params, grad_fn)
    gammas.append(float(optax.tree.get(state, "langevin_stats").langevin_gamma))
  np.testing.assert_allclose(gammas, [0.1, 0.2, 0.4], rtol=1e-6)


def test_irwin_hall_noise_moments():
  from entropy_optax._noise import tree_noise

  z = np.asarray(tree_noise(jax.random.key(0), jnp.zeros((1001, 999))), np.float64).ravel()
  assert abs(z.mean()) < 5 / np.sqrt(z.size)
  assert abs(z.var() - 1) < 5 * np.sqrt(2 / z.size)
  kurtosis = ((z - z.mean()) ** 4).mean() / z.var() ** 2
  assert abs(kurtosis - (3 - 0.3)) < 0.02  # Irwin-Hall(4): excess kurtosis -1.2 / 4


def test_irwin_hall_noise_is_uncorrelated():
  """Neighbouring elements, leaves and keys (Langevin steps) give uncorrelated noise."""
  from entropy_optax._noise import tree_noise

  tree = {"a": jnp.zeros((500, 400)), "b": jnp.zeros(200_000)}
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  first, second = (tree_noise(k, tree) for k in keys)
  bound = 5 / np.sqrt(200_000)
  corr = lambda u, v: float(np.corrcoef(np.ravel(u), np.ravel(v))[0, 1])
  assert abs(corr(first["a"].ravel()[:-1], first["a"].ravel()[1:])) < bound  # neighbours
  assert abs(corr(first["a"], first["b"])) < bound  # leaves
  assert abs(corr(first["a"], second["a"])) < bound  # keys
  assert not np.array_equal(first["a"], second["a"])


# ---------------------------------------------------------------------------------------------
# The unroll rule, the one argument check, the defaults.
def test_convolutions_are_found_in_nested_jaxprs_without_running_fn():
  from entropy_optax import _unroll

  kernel = jnp.ones((1, 1, 3))  # (out, in, width): the output keeps the input's shape
  conv = lambda x: jax.lax.conv_general_dilated(x, kernel, (1,), "SAME")
  x = jnp.ones((1, 1, 8))
  assert _unroll.has_convolution(lambda: conv(x))
  assert _unroll.has_convolution(lambda: jax.jit(conv)(x))  # inside a pjit
  assert _unroll.has_convolution(  # inside a scan inside a jit
    lambda: jax.jit(lambda y: jax.lax.scan(lambda c, _: (conv(c), None), y, None, 2)[0])(x)
  )
  assert not _unroll.has_convolution(lambda: jnp.dot(jnp.ones(3), jnp.ones(3)))


def test_default_unroll_traces_the_model_only_on_cpu(monkeypatch):
  from entropy_optax import _unroll

  def must_not_trace():
    raise AssertionError("traced")

  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert _unroll.default_unroll(20, must_not_trace) == 1
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  conv = lambda: jax.lax.conv_general_dilated(
    jnp.ones((1, 1, 8)), jnp.ones((1, 1, 3)), (1,), "SAME"
  )
  assert _unroll.default_unroll(40, conv) == _unroll.MAX_CPU_UNROLL
  assert _unroll.default_unroll(5, conv) == 5


def test_missing_params_is_a_type_error_like_missing_grad_fn():
  tx = eo.entropy_sgd(0.1)
  params = jnp.ones(3)
  with pytest.raises(TypeError, match=r"needs params"):
    tx.update(params, tx.init(params), grad_fn=lambda p, k: p)


def test_local_entropy_defaults_are_entropy_sgds():
  import inspect

  le = inspect.signature(eo.local_entropy).parameters
  sgd = inspect.signature(eo.entropy_sgd).parameters
  for name in ("num_langevin_steps", "gamma", "langevin_lr", "noise", "alpha"):
    assert le[name].default == sgd[name].default, name


def test_entropy_adam_langevin_nesterov_switches_the_langevin_momentum_form():
  params, grad_fn = _problem()

  def first_update(**kwargs):
    tx = eo.entropy_adam(1e-3, num_langevin_steps=3, noise=0.0, **kwargs)
    state = jit_update(tx, grad_fn(params, 0), tx.init(params), params, grad_fn)[1]
    return state[0].langevin_mu["w1"]

  nesterov = first_update(langevin_momentum=0.9)
  heavy_ball = first_update(langevin_momentum=0.9, langevin_nesterov=False)
  assert np.abs(nesterov - heavy_ball).max() > 1e-6
  # Without Langevin momentum the flag has nothing to act on.
  np.testing.assert_array_equal(first_update(), first_update(langevin_nesterov=False))
  with pytest.raises(TypeError, match="nesterov"):
    eo.entropy_adam(1e-3, nesterov=False)


def test_bad_weight_decay_at_names_the_two_places():
  for build in (
    lambda: eo.local_entropy(weight_decay_at="inside"),
    lambda: eo.langevin_mean(
      lambda x, k: x,
      jnp.ones(2),
      jax.random.key(0),
      gamma=1.0,
      num_steps=2,
      langevin_lr=0.1,
      noise=0.0,
      alpha=1.0,
      weight_decay_at="inside",
    ),
  ):
    with pytest.raises(ValueError, match="weight_decay_at must be one of"):
      build()
