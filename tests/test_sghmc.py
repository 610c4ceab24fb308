"""The SGHMC chain (sampler="sghmc") against closed forms and a plain-Python loop of its steps."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import entropy_optax as eo

# f = 1/2 x^T A x with spread curvatures, as tests/test_core.py.
CURVATURES = np.array([0.1, 0.5, 1.0, 2.0, 5.0], np.float32)
X0 = np.array([1.0, -2.0, 0.5, 3.0, -1.0], np.float32)


def quadratic_grad(x, k):
  del k
  return CURVATURES * x


def stationary_variance(curvature, lr, friction, noise):
  """Exact stationary variance of x' for the linear SGHMC recursion (discrete Lyapunov equation).

  With deviations (x, v) from the fixed point: v <- (1 - a) v - lr c x + s n, x <- x + v, so
  z <- M z + b n with M = [[1 - lr c, 1 - a], [-lr c, 1 - a]], b = (s, s), s = noise sqrt(a lr).
  """
  s = noise * np.sqrt(friction * lr)
  m = np.array([[1 - lr * curvature, 1 - friction], [-lr * curvature, 1 - friction]])
  b = np.array([s, s])
  sigma = np.zeros((2, 2))
  for _ in range(20_000):  # Sigma = M Sigma M^T + b b^T, converged geometrically
    sigma = m @ sigma @ m.T + np.outer(b, b)
  return sigma[0, 0]


def test_noisy_quadratic_samples_the_gibbs_measure_at_noise_squared_over_two():
  """alpha = 1 makes mu the last sample: many vmapped chains give the Gibbs mean and variance."""
  gamma, lr, friction, noise, steps, chains = 0.5, 0.05, 0.2, 0.3, 250, 10_000
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
    noise_distribution="gaussian",
    unroll=8,
    sampler="sghmc",
    friction=friction,
  )[0]
  samples = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(0), chains))
  c = CURVATURES + gamma
  mean = gamma * X0 / c  # Gibbs mean (A + gamma)^-1 gamma x
  temperature = noise**2 / 2
  variance = np.array([stationary_variance(ci, lr, friction, noise) for ci in c])
  # The discrete chain's variance is the Gibbs variance T / c up to the O(lr) step bias.
  np.testing.assert_allclose(variance, temperature / c, rtol=0.2)
  std_error_mean = np.sqrt(variance / chains)
  np.testing.assert_array_less(np.abs(samples.mean(0) - mean), 5 * std_error_mean)
  np.testing.assert_allclose(samples.var(0), variance, rtol=5 * np.sqrt(2 / chains))


def test_noise_free_quadratic_gives_closed_form():
  gamma = 0.7
  tx = eo.local_entropy(300, gamma, 0.1, 0.0, 1.0, sampler="sghmc", friction=0.2, unroll=10)
  x = jnp.asarray(X0)
  updates, _ = jax.jit(functools.partial(tx.update, grad_fn=quadratic_grad))(
    quadratic_grad(x, 0), tx.init(x), x
  )
  expected = CURVATURES / (CURVATURES + gamma) * X0  # A (A + gamma I)^-1 x
  np.testing.assert_allclose(updates, expected, rtol=1e-5, atol=1e-6)


def python_sghmc_mean(x, curvatures, gamma, lr, friction, alpha, wd, steps):
  """mu of the noise-free SGHMC chain on f = 1/2 sum c x^2, written out in float64."""
  x = np.asarray(x, np.float64)
  x_prime, velocity, mu = x.copy(), np.zeros_like(x), x.copy()
  for _ in range(steps):
    force = curvatures * x_prime + wd * x_prime - gamma * (x - x_prime)
    velocity = (1 - friction) * velocity - lr * force
    x_prime = x_prime + velocity
    mu = (1 - alpha) * mu + alpha * x_prime
  return mu


def test_steps_match_a_plain_python_loop():
  """mu after 7 steps, with weight decay and averaging, from the documented recursion."""
  gamma, lr, friction, alpha, wd, steps = 0.3, 0.2, 0.25, 0.6, 0.05, 7
  mu, _ = eo.langevin_mean(
    quadratic_grad,
    jnp.asarray(X0),
    jax.random.key(0),
    gamma=gamma,
    num_steps=steps,
    langevin_lr=lr,
    noise=0.0,
    alpha=alpha,
    weight_decay=wd,
    sampler="sghmc",
    friction=friction,
  )
  expected = python_sghmc_mean(X0, CURVATURES, gamma, lr, friction, alpha, wd, steps)
  np.testing.assert_allclose(mu, expected, rtol=1e-5)


def test_friction_one_is_sgld_step_for_step():
  common = dict(gamma=0.5, num_steps=30, langevin_lr=0.05, noise=0.3, alpha=0.25)
  key = jax.random.key(3)
  sgld, _ = eo.langevin_mean(quadratic_grad, jnp.asarray(X0), key, **common)
  sghmc, _ = eo.langevin_mean(
    quadratic_grad, jnp.asarray(X0), key, **common, sampler="sghmc", friction=1.0
  )
  np.testing.assert_allclose(sghmc, sgld, rtol=1e-5, atol=1e-6)


def test_entropy_sgd_with_sghmc_vmaps_over_a_traced_friction():
  """inject_hyperparams makes friction a traced value: a vmapped sweep over it, one program."""

  def final_params(friction):
    tx = optax.inject_hyperparams(eo.entropy_sgd, static_args=("num_langevin_steps",))(
      0.5, num_langevin_steps=5, gamma=1.0, noise=0.0, sampler="sghmc", friction=friction
    )
    params = jnp.asarray(X0)
    state = tx.init(params)

    def body(carry, _):
      params, state = carry
      updates, state = tx.update(quadratic_grad(params, 0), state, params, grad_fn=quadratic_grad)
      return (optax.apply_updates(params, updates), state), None

    return jax.lax.scan(body, (params, state), None, length=200)[0][0]

  frictions = jnp.array([0.1, 0.5, 1.0])
  ends = jax.jit(jax.vmap(final_params))(frictions)
  np.testing.assert_allclose(ends, 0.0, atol=1e-3)  # the quadratic's minimum

  # The same runs with friction a Python float, built and compiled one by one.
  def concrete_run(friction):
    tx = eo.entropy_sgd(
      0.5, num_langevin_steps=5, gamma=1.0, noise=0.0, sampler="sghmc", friction=friction
    )

    def body(carry, _):
      params, state = carry
      updates, state = tx.update(quadratic_grad(params, 0), state, params, grad_fn=quadratic_grad)
      return (optax.apply_updates(params, updates), state), None

    params = jnp.asarray(X0)
    return jax.jit(lambda p: jax.lax.scan(body, (p, tx.init(p)), None, length=200)[0][0])(params)

  one_by_one = np.stack([concrete_run(f) for f in [0.1, 0.5, 1.0]])
  np.testing.assert_allclose(ends, one_by_one, rtol=1e-4, atol=1e-6)


def test_keeps_bfloat16_params_and_a_float32_chain():
  tx = eo.local_entropy(5, 1.0, 0.1, 0.0, 0.75, sampler="sghmc", friction=0.5)
  params = {"w": jnp.ones(4, jnp.bfloat16)}
  state = tx.init(params)
  grad_fn = lambda p, k: jax.tree.map(lambda w: 2 * w, p)  # f = |w|^2
  updates, state = jax.jit(functools.partial(tx.update, grad_fn=grad_fn))(
    grad_fn(params, 0), state, params
  )
  assert updates["w"].dtype == jnp.bfloat16 and state.langevin_mu["w"].dtype == jnp.float32
  mu = python_sghmc_mean(np.ones(4), 2.0, 1.0, 0.1, 0.5, 0.75, 0.0, 5)
  # grad_fn sees x' rounded to bfloat16 (8 bits): the gradients carry ~4e-3 relative error.
  np.testing.assert_allclose(state.langevin_mu["w"], mu, rtol=4e-3)
  np.testing.assert_allclose(np.asarray(updates["w"], np.float32), 1 - mu, rtol=1e-2)


@pytest.mark.parametrize(
  "kwargs, name",
  [
    (dict(sampler="hmc"), "sampler"),
    (dict(sampler="sghmc", friction=0.0), "friction"),
    (dict(sampler="sghmc", friction=1.5), "friction"),
    (dict(friction=0.1), "friction"),  # friction without sampler="sghmc"
    (dict(sampler="sghmc", langevin_momentum=0.9), "langevin_momentum"),
  ],
)
def test_bad_arguments_raise_value_errors_naming_them(kwargs, name):
  with pytest.raises(ValueError, match=name):
    eo.local_entropy(5, **kwargs)
  with pytest.raises(ValueError, match=name):
    eo.entropy_sgd(0.1, **kwargs)
  with pytest.raises(ValueError, match=name):
    eo.langevin_mean(
      quadratic_grad,
      jnp.asarray(X0),
      jax.random.key(0),
      gamma=1.0,
      num_steps=5,
      langevin_lr=0.1,
      noise=0.0,
      alpha=1.0,
      **kwargs,
    )


def test_weight_decay_after_a_momentum_buffer_sghmc_lacks_is_refused():
  """SGHMC has no momentum buffer to add the weight decay after: the decay used to be dropped
  silently; now the combination is an error, and the decay before it (the force) works."""
  after = dict(sampler="sghmc", weight_decay=1e-4, weight_decay_at="after_momentum")
  with pytest.raises(ValueError, match="weight_decay_at='before_momentum'"):
    eo.local_entropy(5, **after)
  eo.local_entropy(5, **{**after, "weight_decay": 0.0})  # nothing to place
  tx = eo.local_entropy(5, sampler="sghmc", weight_decay=1e-4, noise=0.0)
  params = jnp.ones(3)
  state = tx.init(params)
  grad_fn = lambda p, k: jnp.zeros_like(p)  # noqa: E731 (only the decay moves x')
  updates, _ = tx.update(jnp.zeros(3), state, params, grad_fn=grad_fn)
  assert float(jnp.abs(updates).max()) > 0  # the decay pulled x' and mu towards 0
