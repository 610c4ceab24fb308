"""gaussian_smoothing against the closed form on a quadratic and quadrature on a 1-D landscape."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import entropy_optax as eo

CURVATURES = np.array([0.1, 0.5, 1.0, 2.0, 5.0], np.float32)
X0 = np.array([1.0, -2.0, 0.5, 3.0, -1.0], np.float32)

# The 1-D landscape of tests/test_core.py: a wide shallow valley at -2, a deeper sharp one at 1.5.
WIDE, SHARP = (1.0, -2.0, 1.0), (1.5, 1.5, 0.2)  # (depth, centre, width)


def landscape(x, xp=jnp):
  return -sum(a * xp.exp(-((x - c) ** 2) / (2 * s**2)) for a, c, s in (WIDE, SHARP))


landscape_grad = jax.grad(lambda x: jnp.sum(landscape(x)))


def smoothed_grad_by_quadrature(x, sigma):
  """d/dx E f(x + sigma u), u ~ N(0, 1): the smoothed landscape's derivative, by quadrature."""
  u = np.linspace(-10, 10, 200_001)
  weights = np.exp(-(u**2) / 2)
  grads = np.asarray(jax.vmap(landscape_grad)(jnp.asarray(x + sigma * u, jnp.float32)), np.float64)
  return (weights * grads).sum() / weights.sum()


def estimates(tx, params, grad_fn, keys):
  """One update per key (the transformation rebuilt with that key is the same as a new seed)."""

  def one(key):
    state = tx.init(params)._replace(smoothing_key=key)
    return tx.update(grad_fn(params, 0), state, params, grad_fn=grad_fn)[0]

  return jax.jit(jax.vmap(one))(keys)


@pytest.mark.parametrize("sampler", ["gaussian", "irwin_hall"])
def test_quadratic_mean_and_variance_are_the_closed_form(sampler):
  """f = 1/2 x^T A x: each sample is A (x + sigma eps): mean A x, variance sigma^2 A^2 / L."""
  sigma, num_samples, repeats = 0.3, 8, 20_000
  tx = eo.gaussian_smoothing(num_samples, sigma, noise_distribution=sampler)
  keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(repeats))
  got = estimates(tx, jnp.asarray(X0), lambda p, k: CURVATURES * p, keys)
  variance = sigma**2 * CURVATURES**2 / num_samples
  np.testing.assert_array_less(
    np.abs(got.mean(0) - CURVATURES * X0), 5 * np.sqrt(variance / repeats)
  )
  np.testing.assert_allclose(got.var(0), variance, rtol=5 * np.sqrt(2 / repeats))


def test_landscape_matches_quadrature():
  sigma, num_samples, repeats = 0.7, 16, 4096
  xs = jnp.array([-3.0, -1.0, 0.0, 1.2, 2.0], jnp.float32)
  tx = eo.gaussian_smoothing(num_samples, sigma)
  keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(repeats))
  got = jax.vmap(lambda x: estimates(tx, x, lambda p, k: landscape_grad(p), keys))(xs)
  exact = np.array([smoothed_grad_by_quadrature(float(x), sigma) for x in xs])
  std_error = got.std(1) / np.sqrt(repeats)
  np.testing.assert_array_less(np.abs(got.mean(1) - exact), 5 * std_error + 1e-4)
  assert exact.min() < -0.1 and exact.max() > 0.1  # the points pull both ways


def run_sgd(tx, x0, steps):
  def body(carry, _):
    x, state = carry
    updates, state = tx.update(landscape_grad(x), state, x, grad_fn=lambda p, k: landscape_grad(p))
    return (optax.apply_updates(x, updates), state), None

  return jax.lax.scan(body, (x0, tx.init(x0)), None, length=steps)[0][0]


@pytest.mark.parametrize("sigma, valley", [(1.41, WIDE), (0.5, SHARP)])
def test_smoothed_sgd_ends_where_the_smoothed_landscape_has_its_minimum(sigma, valley):
  """From x0 = 1 (the sharp valley's basin for SGD): sigma = 1.41 smooths the sharp valley away
  (f_sigma's only minimum, by quadrature, is near -1.9), sigma = 0.5 keeps it."""

  def end(seed):
    # A decaying step lets the noisy iterates settle in the valley they reached.
    lr = optax.linear_schedule(0.5, 0.01, 400)
    tx = optax.chain(eo.gaussian_smoothing(20, sigma, key=seed), optax.sgd(lr))
    return run_sgd(tx, jnp.float32(1.0), 400)

  ends = jax.jit(jax.vmap(end))(jnp.arange(8))
  np.testing.assert_array_less(np.abs(ends - valley[1]), 0.25)


def test_chains_with_adam_keeps_dtypes_and_ignores_other_extras():
  tx = optax.chain(eo.gaussian_smoothing(4, 0.0), optax.adam(0.1))
  params = {"w": jnp.ones(3, jnp.bfloat16), "b": jnp.zeros(2, jnp.float32)}
  grad_fn = lambda p, k: jax.tree.map(lambda a: 2 * a + 1, p)
  updates, state = jax.jit(functools.partial(tx.update, grad_fn=grad_fn, unused=1.0))(
    grad_fn(params, 0), tx.init(params), params
  )
  assert updates["w"].dtype == jnp.bfloat16 and updates["b"].dtype == jnp.float32
  # sigma = 0: the exact gradient; Adam's first step is -lr sign(g).
  np.testing.assert_allclose(np.asarray(updates["w"], np.float32), -0.1, rtol=1e-2)
  np.testing.assert_allclose(updates["b"], -0.1, rtol=1e-5)
  assert int(optax.tree.get(state, "GaussianSmoothingState").smoothing_count) == 1


@pytest.mark.parametrize(
  "kwargs, name",
  [
    (dict(num_samples=0), "num_samples"),
    (dict(num_samples=2.0), "num_samples"),
    (dict(sigma=-1.0), "sigma"),
    (dict(noise_distribution="uniform"), "noise_distribution"),
  ],
)
def test_bad_arguments_raise_value_errors_naming_them(kwargs, name):
  with pytest.raises(ValueError, match=name):
    eo.gaussian_smoothing(**kwargs)


def test_missing_grad_fn_is_a_type_error_saying_the_fix():
  tx = eo.gaussian_smoothing(2, 0.1)
  with pytest.raises(TypeError, match="grad_fn="):
    tx.update(jnp.ones(2), tx.init(jnp.ones(2)), jnp.ones(2))
