"""Tests for entropy_optax.flatness: numbers against closed forms and dense linear algebra."""

import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

matplotlib.use("Agg")

from entropy_optax import flatness  # noqa: E402

# A paper-like spectrum (Fig. 1): a few small negative eigenvalues, a bulk
# near zero, a long positive tail. All distinct, so Lanczos never breaks down.
_LAM = np.concatenate(
  [
    np.linspace(-0.3, -0.05, 3),
    1e-5 * np.linspace(-1.0, 1.0, 45),
    np.geomspace(0.5, 20.0, 12),
  ]
)
_N = _LAM.size  # 60 = 4 * 5 + 40: params {"w": (4, 5), "b": (40,)}.


def _quadratic_problem(lam=_LAM, seed=0):
  """0.5 x^T M_b x on a two-leaf pytree; the mean of the two M_b is Q diag(lam) Q^T."""
  rng = np.random.default_rng(seed)
  n = lam.size
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  a = (q * lam) @ q.T
  s = rng.normal(size=(n, n))
  s = 0.5 * (s + s.T)
  batches = [jnp.asarray(a + s, jnp.float32), jnp.asarray(a - s, jnp.float32)]
  params = {
    "w": jnp.asarray(rng.normal(size=(4, 5)), jnp.float32),
    "b": jnp.asarray(rng.normal(size=(n - 20,)), jnp.float32),
  }

  def loss_fn(p, m):
    x, _ = ravel_pytree(p)
    return 0.5 * x @ (m.astype(x.dtype) @ x)

  return loss_fn, params, batches, a


_QUAD = _quadratic_problem()


def _mlp_loss(params, batch):
  x, y = batch
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  logits = h @ params["w2"] + params["b2"]
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def _mlp_problem(seed=0):
  """A 5-32-3 tanh MLP (291 parameters), two batches of 8 examples."""
  k = jax.random.split(jax.random.key(seed), 6)
  params = {
    "w1": jax.random.normal(k[0], (5, 32)) / jnp.sqrt(5.0),
    "b1": 0.1 * jax.random.normal(k[1], (32,)),
    "w2": jax.random.normal(k[2], (32, 3)) / jnp.sqrt(32.0),
    "b2": jnp.zeros(3),
  }
  xs = jax.random.normal(k[3], (2, 8, 5))
  ys = jax.random.randint(k[4], (2, 8), 0, 3)
  batches = [(xs[0], ys[0]), (xs[1], ys[1])]
  return params, batches


_MLP = _mlp_problem()


def _dense_mlp_eigenvalues():
  """Independent reference: eigvalsh of jax.hessian of the flat mean loss."""
  params, batches = _MLP
  x, unravel = ravel_pytree(params)

  def mean_loss(y):
    return sum(_mlp_loss(unravel(y), b) for b in batches) / len(batches)

  hessian = jax.jit(jax.hessian(mean_loss))(x)
  return np.linalg.eigvalsh(np.asarray(hessian, np.float64))


@pytest.fixture(scope="module")
def dense_mlp():
  return _dense_mlp_eigenvalues()


@pytest.fixture(scope="module")
def slq():
  """One SLQ run shared by the tests that only read it (compiles once)."""
  params, batches = _MLP
  return flatness.spectral_density(_mlp_loss, params, batches, num_iters=20, num_samples=64, key=1)


@pytest.fixture(scope="module")
def per_example_grads():
  params, batches = _MLP
  grad = jax.jit(jax.grad(_mlp_loss))
  grads = [
    ravel_pytree(grad(params, (x[i : i + 1], y[i : i + 1])))[0]
    for x, y in batches
    for i in range(x.shape[0])
  ]
  return np.asarray(jnp.stack(grads), np.float64)


# ----------------------------------------------------------------- hvp / exact


def test_hvp_is_mean_hessian_times_vector():
  loss_fn, params, batches, a = _QUAD
  v = np.random.default_rng(1).normal(size=_N).astype(np.float32)
  np.testing.assert_allclose(flatness.hvp(loss_fn, params, batches)(v), a @ v, rtol=1e-4, atol=1e-4)


def test_exact_eigenvalues_of_quadratic_equal_chosen_spectrum():
  loss_fn, params, batches, _ = _QUAD
  ev = flatness.hessian_eigenvalues(loss_fn, params, batches, chunk_size=16)
  # float32 eigvalsh resolves eigenvalues to ~eps * |A| = 2e-6 here.
  np.testing.assert_allclose(ev, np.sort(_LAM), atol=2e-5)


def test_batches_list_iterator_and_stacked_agree():
  loss_fn, params, batches, _ = _QUAD
  from_list = flatness.hessian_eigenvalues(loss_fn, params, batches)
  from_iter = flatness.hessian_eigenvalues(loss_fn, params, iter(batches))
  from_stack = flatness.hessian_eigenvalues(loss_fn, params, jnp.stack(batches))
  np.testing.assert_allclose(from_iter, from_list, rtol=0, atol=1e-6)
  np.testing.assert_allclose(from_stack, from_list, rtol=0, atol=1e-6)

  class Loader:  # An iterable that is not a pytree, like a tf.data.Dataset.
    def __iter__(self):
      return iter(batches)

  from_loader = flatness.hessian_eigenvalues(loss_fn, params, Loader())
  np.testing.assert_allclose(from_loader, from_list, rtol=0, atol=1e-6)
  # A tuple is a stacked pytree: two batches of (x, y) stacked leaf-wise.
  params_mlp, batches_mlp = _MLP
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *batches_mlp)
  np.testing.assert_allclose(
    flatness.hessian_eigenvalues(_mlp_loss, params_mlp, stacked),
    flatness.hessian_eigenvalues(_mlp_loss, params_mlp, batches_mlp),
    rtol=0,
    atol=1e-6,
  )


def test_stacked_batches_with_mismatched_leading_axes_fail_loudly():
  loss_fn, params, _, _ = _QUAD
  with pytest.raises(ValueError, match="list of batches"):
    flatness.hessian_eigenvalues(loss_fn, params, (jnp.zeros((2, 3)), jnp.zeros((4, 3))))


def test_exact_eigenvalues_of_mlp_match_jax_hessian(dense_mlp):
  params, batches = _MLP
  ev = flatness.hessian_eigenvalues(_mlp_loss, params, batches)
  scale = np.abs(dense_mlp).max()
  np.testing.assert_allclose(ev, dense_mlp, rtol=0, atol=1e-5 * scale)
  # Not trivially flat: the test would pass vacuously on a zero Hessian.
  assert scale > 0.1 and dense_mlp.min() < -1e-3


def test_bfloat16_params_are_analysed_in_float32():
  loss_fn, params, batches, _ = _quadratic_problem(lam=np.linspace(1.0, 2.0, _N))
  params16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
  ev = flatness.hessian_eigenvalues(loss_fn, params16, batches)
  assert ev.dtype == jnp.float32
  np.testing.assert_allclose(ev, np.linspace(1.0, 2.0, _N), atol=0.05)


def test_too_large_model_points_to_lanczos_path():
  loss_fn, params, batches, _ = _QUAD
  with pytest.raises(ValueError) as info:
    flatness.hessian_eigenvalues(loss_fn, params, batches, max_params=59)
  message = str(info.value)
  assert "60 parameters" in message
  assert "lanczos_extremes" in message and "spectral_density" in message


def _conv_loss(params, batch):
  """A 1-channel 3x3 conv, tanh, dense: a conv net small enough for a dense Hessian."""
  x, y = batch
  h = jax.lax.conv_general_dilated(
    x, params["k"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  logits = jnp.tanh(h).reshape(x.shape[0], -1) @ params["w"]
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def _conv_problem(num_batches: int):
  """Parameters of `_conv_loss` (114 of them) and ``num_batches`` batches of 4 images."""
  k = jax.random.split(jax.random.key(5), 4)
  params = {
    "k": 0.5 * jax.random.normal(k[0], (3, 3, 1, 2)),
    "w": 0.3 * jax.random.normal(k[1], (32, 3)),
  }
  xs = jax.random.normal(k[2], (num_batches, 4, 6, 6, 1))
  ys = jax.random.randint(k[3], (num_batches, 4), 0, 3)
  return params, [(xs[i], ys[i]) for i in range(num_batches)]


def test_a_conv_net_on_cpu_is_differentiated_outside_xla_loops(monkeypatch):
  """On XLA:CPU a loss that convolves takes the host path (each batch a loop-free program, the
  loops around it on the host side of a callback): every entry point still gives the dense
  Hessian's numbers, and the same as the in-loop path."""
  params, batches = _conv_problem(num_batches=3)
  x0, unravel = ravel_pytree(params)
  hessian = jax.hessian(lambda y: sum(_conv_loss(unravel(y), b) for b in batches) / 3)(x0)
  dense = np.linalg.eigvalsh(np.asarray(hessian, np.float64))
  v = jax.random.normal(jax.random.key(6), x0.shape)
  host_calls = []
  host = flatness._hvp._host_mean_hvp
  monkeypatch.setattr(flatness._hvp, "_host_mean_hvp", lambda *a: host_calls.append(1) or host(*a))
  hv = flatness.hvp(_conv_loss, params, batches)(v)
  assert host_calls  # jax.default_backend() is "cpu" in the suite
  np.testing.assert_allclose(hv, hessian @ v, rtol=1e-4, atol=1e-5)
  # Under vmap: vectors together; parameters batched too, one element at a time.
  vs = jax.random.normal(jax.random.key(7), (3, x0.size))
  matvec = flatness.hvp(_conv_loss, params, batches)
  np.testing.assert_allclose(jax.vmap(matvec)(vs), vs @ hessian.T, rtol=1e-4, atol=1e-5)
  stacked = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), params)
  per_params = jax.vmap(lambda p, u: flatness.hvp(_conv_loss, p, batches)(u))(stacked, vs[:2])
  np.testing.assert_allclose(per_params[0], hessian @ vs[0], rtol=1e-4, atol=1e-5)
  doubled = flatness.hvp(_conv_loss, jax.tree.map(lambda a: 2 * a, params), batches)(vs[1])
  np.testing.assert_allclose(per_params[1], doubled, rtol=1e-4, atol=1e-5)
  # A loss that closes over its data, batches [None]: no batch array to count.
  hessian0 = jax.hessian(lambda y: _conv_loss(unravel(y), batches[0]))(x0)
  closed = flatness.hvp(lambda p, _: _conv_loss(p, batches[0]), params, [None])(v)
  np.testing.assert_allclose(closed, hessian0 @ v, rtol=1e-4, atol=1e-5)
  scale = np.abs(dense).max()
  ev = flatness.hessian_eigenvalues(_conv_loss, params, batches)
  np.testing.assert_allclose(ev, dense, atol=1e-4 * scale)
  ext = flatness.lanczos_extremes(_conv_loss, params, batches, num_iters=x0.size, key=0)
  np.testing.assert_allclose([ext.smallest, ext.largest], dense[[0, -1]], atol=1e-4 * scale)
  # k = n on a Hessian of rank ~60 of 114: the Krylov space runs out at step ~60, and the
  # steps after it are decoupled (else Ritz values of +-315 came out of rounding noise).
  sd = flatness.spectral_density(
    _conv_loss, params, batches, num_iters=x0.size, num_samples=2, key=1
  )
  assert dense[0] - 1e-4 * scale <= sd.nodes.min() and sd.nodes.max() <= dense[-1] + 1e-4 * scale
  np.testing.assert_allclose(sd.weights.sum(-1), 1.0, rtol=1e-5)
  trace = flatness.hutchinson_trace(_conv_loss, params, batches, num_samples=8, key=0)
  monkeypatch.setattr(flatness._hvp._unroll, "convolves_on_cpu", lambda fn: False)
  calls = len(host_calls)
  in_loop = flatness.hutchinson_trace(_conv_loss, params, batches, num_samples=8, key=0)
  np.testing.assert_allclose(flatness.hvp(_conv_loss, params, batches)(v), hv, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(trace.estimate, in_loop.estimate, rtol=1e-5)
  assert len(host_calls) == calls


def test_each_function_waits_for_its_program_before_any_other_jax_operation(monkeypatch):
  # The host path's callback runs JAX programs of its own; a JAX operation of the caller in the
  # meantime could deadlock with them (an SLQ run on LeNet-BN hung on 2 cores: the caller's
  # ravel_pytree, for the parameter count, against the callback's indexing). So every function
  # waits for its program first, and the parameter count is no JAX operation.
  params, batches = _conv_problem(num_batches=2)
  with monkeypatch.context() as patched:
    patched.setattr(flatness._inputs, "ravel_pytree", None)  # params are only counted now
    assert flatness._inputs.num_params(params) == 114
  waited = []
  finished = flatness._inputs.finished
  monkeypatch.setattr(flatness._inputs, "finished", lambda out: waited.append(1) or finished(out))
  outputs = [
    flatness.lanczos_extremes(_conv_loss, params, batches, num_iters=5, key=0),
    flatness.spectral_density(_conv_loss, params, batches, num_iters=5, num_samples=2, key=1),
    flatness.hutchinson_trace(_conv_loss, params, batches, num_samples=2, key=0),
    flatness.hessian_eigenvalues(_conv_loss, params, batches),
  ]
  assert len(waited) == 4
  for out in outputs:
    assert all(a.is_ready() for a in jax.tree.leaves(out) if isinstance(a, jax.Array))


# ----------------------------------------------------------------- Lanczos


def test_lanczos_extremes_of_quadratic():
  loss_fn, params, batches, _ = _QUAD
  ext = flatness.lanczos_extremes(loss_fn, params, batches, num_iters=40, key=0)
  np.testing.assert_allclose(ext.largest, _LAM.max(), rtol=1e-4)
  np.testing.assert_allclose(ext.smallest, _LAM.min(), rtol=1e-3)


@pytest.mark.parametrize("scale", [0.0, 2.0])
def test_lanczos_when_the_start_vector_is_an_eigenvector_at_once(scale):
  # H = scale * I: the first residual is exactly zero and the next steps are 0/0 (NaN from
  # matfree). A Hessian block of a saturated loss can be exactly zero.
  loss_fn = lambda p, _: 0.5 * scale * jnp.sum(p**2)
  ext = flatness.lanczos_extremes(loss_fn, jnp.ones(10), [None], num_iters=4, key=0)
  np.testing.assert_allclose([ext.largest, ext.smallest], [scale, scale], rtol=1e-6)
  sd = flatness.spectral_density(loss_fn, jnp.ones(10), [None], num_iters=4, num_samples=2, key=0)
  assert np.all(np.isfinite(sd.nodes)) and np.all(np.isfinite(sd.weights))
  np.testing.assert_allclose(np.sum(sd.weights * sd.nodes, axis=1), scale, atol=1e-6)


def test_lanczos_extremes_of_mlp_match_dense(dense_mlp):
  params, batches = _MLP
  ext = flatness.lanczos_extremes(_mlp_loss, params, batches, num_iters=80, key=jax.random.key(3))
  scale = np.abs(dense_mlp).max()
  np.testing.assert_allclose(ext.largest, dense_mlp.max(), atol=1e-4 * scale)
  np.testing.assert_allclose(ext.smallest, dense_mlp.min(), atol=1e-4 * scale)


def test_slq_moments_match_dense_spectrum(slq, dense_mlp):
  sd, num_samples = slq, 64
  assert sd.nodes.shape == sd.weights.shape == (num_samples, 20)
  assert sd.num_params == dense_mlp.size
  # 0th moment: every probe's quadrature weights sum to one.
  np.testing.assert_allclose(sd.weights.sum(axis=1), 1.0, atol=1e-5)
  # 1st and 2nd: per probe, v^T H^p v / |v|^2 exactly (Gauss quadrature,
  # degree <= 2k - 1), unbiased for tr(H^p) / n; allow 4 standard errors.
  for power in (1, 2):
    per_probe = np.sum(np.asarray(sd.weights) * np.asarray(sd.nodes) ** power, 1)
    exact = np.mean(dense_mlp**power)
    stderr = per_probe.std(ddof=1) / np.sqrt(num_samples)
    assert abs(per_probe.mean() - exact) < 4 * stderr + 1e-6 * abs(exact)
    np.testing.assert_allclose(sd.moment(power), per_probe.mean(), rtol=1e-5)
  # Extreme nodes are Ritz values: inside the spectrum, close to its ends.
  assert sd.nodes.max() <= dense_mlp.max() * (1 + 1e-4)
  np.testing.assert_allclose(sd.nodes.max(), dense_mlp.max(), rtol=1e-2)


def test_smoothed_density_is_a_density_with_the_right_mean(slq):
  sd = slq
  lo, hi = float(sd.nodes.min()), float(sd.nodes.max())
  sigma = 0.02 * (hi - lo)
  grid = np.linspace(lo - 8 * sigma, hi + 8 * sigma, 4001)
  density = np.asarray(sd.density(grid, sigma))
  np.testing.assert_allclose(np.trapezoid(density, grid), 1.0, atol=1e-4)
  np.testing.assert_allclose(np.trapezoid(grid * density, grid), sd.moment(1), rtol=1e-3, atol=1e-6)


# ----------------------------------------------------------------- trace


def test_hutchinson_is_unbiased_with_honest_stderr():
  loss_fn, params, batches, a = _QUAD
  num_runs, num_samples = 40, 8
  runs = [
    flatness.hutchinson_trace(loss_fn, params, batches, num_samples=num_samples, key=seed)
    for seed in range(num_runs)
  ]
  estimates = np.array([r.estimate for r in runs])
  stderrs = np.array([r.stderr for r in runs])
  exact = np.trace(a)
  assert abs(estimates.mean() - exact) < 4 * estimates.std(ddof=1) / np.sqrt(num_runs)
  # Rademacher probes: Var(z^T A z) = 2 sum_{i != j} A_ij^2 (closed form).
  probe_var = 2 * (np.sum(a**2) - np.sum(np.diag(a) ** 2))
  np.testing.assert_allclose(np.mean(stderrs**2), probe_var / num_samples, rtol=0.3)
  np.testing.assert_allclose(estimates.var(ddof=1), probe_var / num_samples, rtol=0.5)


def test_hutchinson_is_exact_on_a_diagonal_hessian():
  lam = jnp.arange(1.0, 7.0)
  est = flatness.hutchinson_trace(
    lambda p, _: 0.5 * jnp.sum(lam * p**2),
    jnp.zeros(6),
    [None],
    num_samples=4,
    key=0,
  )
  np.testing.assert_allclose(est.estimate, 21.0, rtol=1e-6)
  np.testing.assert_allclose(est.stderr, 0.0, atol=1e-6)


# ----------------------------------------------------------------- perturbations


def test_perturbation_profile_absolute_radius_is_a_euclidean_distance():
  # f = batch * |x - c|^2 is r^2 on every sphere of radius r; batches 1 and 3 average to 2.
  center = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(4)}
  flat_center = ravel_pytree(center)[0]
  loss = lambda p, batch: batch * jnp.sum((ravel_pytree(p)[0] - flat_center) ** 2)
  radii = [0.0, 0.5, 2.0]
  profile = flatness.perturbation_profile(loss, center, [1.0, 3.0], radii, num_samples=5, key=0)
  assert profile.losses.shape == (3, 5) and not profile.relative
  np.testing.assert_allclose(profile.losses, 2 * np.square(radii)[:, None] * np.ones(5), rtol=1e-5)


def test_perturbation_profile_relative_radius_scales_each_array_by_its_norm():
  # |x_a| = 2, |x_b| = 3, x_z = 0: relative r moves a by 2r, b by 3r, z not at all, so
  # f = |d_a|^2 + 10 |d_b|^2 + 1000 |d_z|^2 = r^2 (4 + 90) in every direction.
  center = {"a": jnp.array([2.0, 0.0]), "b": jnp.array([0.0, 3.0, 0.0]), "z": jnp.zeros(3)}
  weights = {"a": 1.0, "b": 10.0, "z": 1000.0}
  loss = lambda p, _: sum(weights[k] * jnp.sum((p[k] - center[k]) ** 2) for k in center)
  radii = np.array([0.0, 0.1, 1.0])
  profile = flatness.perturbation_profile(
    loss, center, [None], radii, num_samples=4, key=1, relative=True
  )
  np.testing.assert_allclose(profile.losses, np.outer(94 * radii**2, np.ones(4)), rtol=1e-5)


def test_perturbation_profile_mean_is_the_trace_on_the_sphere():
  # Uniform d on the unit sphere: E[d d^T] = I / n, so E f(x + r d) = r^2 tr(H) / (2 n).
  curvature = jnp.array([4.0, 1.0, 0.0, -1.0, 0.5])
  loss = lambda p, _: 0.5 * jnp.sum(curvature * p**2)
  num_samples, radius = 4000, 2.0
  profile = flatness.perturbation_profile(
    loss, jnp.zeros(5), [None], [radius], num_samples=num_samples, key=2
  )
  samples = np.asarray(profile.losses[0])
  exact = radius**2 * float(curvature.sum()) / (2 * 5)
  assert abs(samples.mean() - exact) < 4 * samples.std(ddof=1) / np.sqrt(num_samples)
  assert samples.min() >= -0.5 * radius**2 - 1e-5 and samples.max() <= 2 * radius**2 + 1e-5


def test_perturbation_profile_same_key_same_directions_for_another_solution():
  # f linear in x: f(x + r d) - f(x) = r <g, d> depends on the direction only.
  g = jnp.array([1.0, -2.0, 0.5, 3.0])
  loss = lambda p, _: jnp.dot(g, p)
  first, second = (
    flatness.perturbation_profile(loss, x, [None], [1.0], num_samples=6, key=3)
    for x in (jnp.zeros(4), jnp.full(4, 5.0))
  )
  np.testing.assert_allclose(
    second.losses - float(jnp.dot(g, jnp.full(4, 5.0))), first.losses, atol=1e-4
  )


def test_local_entropy_is_the_log_mean_exp_and_its_closed_form_on_a_sphere():
  losses = np.array([[0.0, 1.0, 4.0], [2.0, 2.0, 2.0]])
  profile = flatness.PerturbationProfile(jnp.array([1.0, 2.0]), jnp.asarray(losses), False)
  beta = 2.0
  expected = np.log(np.mean(np.exp(-beta * losses), axis=1))
  np.testing.assert_allclose(
    flatness.local_entropy(profile, inverse_temperature=beta), expected, rtol=1e-6
  )
  # Isotropic f = (h/2) |x|^2: every sample is h r^2 / 2, so F_r = -beta h r^2 / 2.
  isotropic = flatness.perturbation_profile(
    lambda p, _: 1.5 * jnp.sum(p**2), jnp.zeros(7), [None], [0.0, 1.0, 3.0], num_samples=3, key=0
  )
  np.testing.assert_allclose(
    flatness.local_entropy(isotropic, inverse_temperature=beta),
    -beta * 1.5 * np.array([0.0, 1.0, 9.0]),
    rtol=1e-5,
    atol=1e-6,
  )


@pytest.mark.parametrize(
  "radii, num_samples, message",
  [([1.0], 0, "num_samples"), ([-1.0], 2, "radii"), ([[1.0]], 2, "radii"), ([], 2, "radii")],
)
def test_perturbation_profile_bad_input_says_what_to_fix(radii, num_samples, message):
  with pytest.raises(ValueError, match=message):
    flatness.perturbation_profile(
      lambda p, _: jnp.sum(p), jnp.zeros(2), [None], radii, num_samples=num_samples, key=0
    )


# ----------------------------------------------------------------- Fisher


@pytest.mark.parametrize("centered", [False, True])
def test_fisher_diagonal_matches_per_example_loop(centered, per_example_grads):
  params, batches = _MLP
  g = per_example_grads
  expected = np.mean(g**2, axis=0)
  if centered:
    expected -= np.mean(g, axis=0) ** 2
  fisher = flatness.fisher_diagonal(_mlp_loss, params, batches, centered=centered)
  assert jax.tree.structure(fisher) == jax.tree.structure(params)
  np.testing.assert_allclose(ravel_pytree(fisher)[0], expected, rtol=1e-4, atol=1e-7)


def test_fisher_diagonal_per_example_loss(per_example_grads):
  params, batches = _MLP

  def single(p, example):
    x, y = example
    return _mlp_loss(p, (x[None], y[None]))

  fisher = flatness.fisher_diagonal(single, params, batches, per_example=True)
  np.testing.assert_allclose(
    ravel_pytree(fisher)[0],
    np.mean(per_example_grads**2, axis=0),
    rtol=1e-4,
    atol=1e-7,
  )


def _as_restored_dicts(state):
  """The state as a checkpoint restored without a target gives it: dicts and lists."""
  if hasattr(state, "_fields"):
    return {name: _as_restored_dicts(getattr(state, name)) for name in state._fields}
  if isinstance(state, dict):
    return {k: _as_restored_dicts(v) for k, v in state.items()}
  if isinstance(state, (list, tuple)):
    return [_as_restored_dicts(v) for v in state]
  return state


def _shift_other_counts(state, shift=100):
  """The state with every step count but Adam's moved by ``shift`` (a mix-up then shows)."""
  if hasattr(state, "_fields"):
    fields = {name: _shift_other_counts(getattr(state, name), shift) for name in state._fields}
    if "count" in fields and not isinstance(state, optax.ScaleByAdamState):
      fields["count"] = fields["count"] + shift
    return type(state)(**fields)
  if isinstance(state, dict):
    return {k: _shift_other_counts(v, shift) for k, v in state.items()}
  if isinstance(state, (list, tuple)):
    return type(state)(_shift_other_counts(v, shift) for v in state)
  return state


# Each of these keeps a second step count beside Adam's (the schedule's or inject_hyperparams').
_DECAY = optax.exponential_decay(0.1, transition_steps=2, decay_rate=0.5)
_SCHEDULED_ADAMS = {
  "inject_hyperparams": lambda b1, b2: optax.inject_hyperparams(optax.adam)(
    learning_rate=0.1, b1=b1, b2=b2
  ),
  "adam(schedule)": lambda b1, b2: optax.adam(_DECAY, b1=b1, b2=b2),
  "chain(scale_by_schedule)": lambda b1, b2: optax.chain(
    optax.add_decayed_weights(1e-4), optax.scale_by_adam(b1, b2), optax.scale_by_schedule(_DECAY)
  ),
}


@pytest.mark.parametrize("name", list(_SCHEDULED_ADAMS))
@pytest.mark.parametrize("param_names", [("a", "b"), ("count", "nu")])
def test_fisher_diagonal_from_adam_is_bias_corrected_ema(name, param_names):
  b1, b2 = 0.8, 0.95
  opt = _SCHEDULED_ADAMS[name](b1, b2)
  first, second = param_names  # parameters named like Adam's fields must not confuse it
  params = {first: jnp.zeros(3), second: jnp.zeros((2,))}
  state = opt.init(params)
  rng = np.random.default_rng(0)
  grads = [rng.normal(size=5).astype(np.float32) for _ in range(3)]
  for g in grads:
    _, state = opt.update({first: jnp.asarray(g[:3]), second: jnp.asarray(g[3:])}, state, params)
  t = len(grads)
  nu = sum((1 - b2) * b2 ** (t - 1 - s) * g**2 for s, g in enumerate(grads))
  mu = sum((1 - b1) * b1 ** (t - 1 - s) * g for s, g in enumerate(grads))

  raw = ravel_pytree(flatness.fisher_diagonal_from_adam(state))[0]
  np.testing.assert_allclose(raw, nu, rtol=1e-5)
  corrected = ravel_pytree(flatness.fisher_diagonal_from_adam(state, b2=b2))[0]
  np.testing.assert_allclose(corrected, nu / (1 - b2**t), rtol=1e-5)
  centered = flatness.fisher_diagonal_from_adam(state, b2=b2, b1=b1, centered=True)
  np.testing.assert_allclose(
    ravel_pytree(centered)[0],
    nu / (1 - b2**t) - (mu / (1 - b1**t)) ** 2,
    rtol=1e-4,
    atol=1e-6,
  )
  for other in (_shift_other_counts(state), _as_restored_dicts(state)):
    fisher = flatness.fisher_diagonal_from_adam(other, b2=b2)
    np.testing.assert_allclose(ravel_pytree(fisher)[0], nu / (1 - b2**t), rtol=1e-5)


def test_fisher_diagonal_from_non_adam_state_fails_loudly():
  state = optax.sgd(0.1, momentum=0.9).init(jnp.zeros(3))
  with pytest.raises(ValueError, match="no Adam state .* it holds EmptyState, TraceState"):
    flatness.fisher_diagonal_from_adam(state)
  two = optax.chain(optax.adam(0.1), optax.scale_by_adam()).init(jnp.zeros(3))
  with pytest.raises(ValueError, match=r"2 Adam states \(at \[0\]\[0\], \[1\]\)"):
    flatness.fisher_diagonal_from_adam(two)


# ----------------------------------------------------------------- summary / plot


def test_spectrum_summary_on_hand_made_array():
  ev = np.array([-0.5, -5e-5, 0.0, 5e-5, 5e-4, 5e-3, 2.0, 40.0])
  s = flatness.spectrum_summary(ev)
  assert s == {
    "count": 8,
    "max_eigenvalue": 40.0,
    "min_eigenvalue": -0.5,
    "frac_negative": 2 / 8,
    "frac_abs_below_1e-04": 3 / 8,
    "frac_abs_below_1e-03": 4 / 8,
    "frac_abs_below_1e-02": 5 / 8,
  }
  # A pytree (e.g. a Fisher diagonal) is raveled.
  assert flatness.spectrum_summary({"a": ev[:3], "b": ev[3:]}) == s


def test_plot_spectrum_draws_one_histogram_per_spectrum(slq, dense_mlp):
  import matplotlib.pyplot as plt

  rng = np.random.default_rng(0)
  spectra = {
    "SGD": rng.normal(size=300),
    "Entropy-SGD": 0.1 * rng.normal(size=300),
    "Adam": rng.standard_cauchy(size=300),
  }
  ax = flatness.plot_spectrum(spectra, bins=40)
  try:
    assert len(ax.patches) == 3 and not ax.lines
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(spectra)
    assert ax.get_yscale() == "log"
  finally:
    plt.close(ax.figure)

  # A single spectrum on given axes; a SpectralDensity is one curve.
  sd = slq
  _, ax2 = plt.subplots()
  try:
    out = flatness.plot_spectrum({"exact": dense_mlp, "SLQ": sd}, ax=ax2)
    assert out is ax2 and len(ax2.patches) == 1 and len(ax2.lines) == 1
    out = flatness.plot_spectrum(dense_mlp, ax=ax2, log=False)
    assert len(ax2.patches) == 2
  finally:
    plt.close(ax2.figure)


def test_missing_matfree_names_the_extra(monkeypatch):
  import sys

  monkeypatch.setitem(sys.modules, "matfree", None)
  loss_fn, params, batches, _ = _QUAD
  with pytest.raises(ImportError, match=r"entropy_optax\[flatness\]"):
    flatness.lanczos_extremes(loss_fn, params, batches, num_iters=5, key=0)
  with pytest.raises(ImportError, match=r"entropy_optax\[flatness\]"):
    flatness.spectral_density(loss_fn, params, batches, num_iters=5, num_samples=2, key=0)


# ----------------------------------------------------------------- the loss as a jit argument


def _diagonal_loss(curvature, traces):
  """0.5 sum(curvature p^2) + <batch, p>: Hessian diag(curvature). Counts its traces."""

  def loss(p, batch):
    traces.append(None)  # Runs when JAX traces the loss, not when compiled code runs.
    return 0.5 * jnp.sum(curvature * p**2) + jnp.sum(batch * p)

  return loss


def test_closures_over_other_arrays_of_the_same_shape_compile_once():
  traces = []
  batches = [jnp.ones(4)]
  curvatures = [jnp.array([1.0, 2.0, 3.0, 4.0]), jnp.array([-1.0, 0.5, 7.0, 2.0])]
  eigenvalues = [
    flatness.hessian_eigenvalues(_diagonal_loss(c, traces), jnp.zeros(4), batches)
    for c in curvatures
  ]
  traced_once = len(traces)
  assert traced_once > 0
  # Each closure's own array was used (no stale constant from the first compilation).
  for ev, c in zip(eigenvalues, curvatures, strict=True):
    np.testing.assert_allclose(ev, np.sort(c), rtol=1e-6)
  # The same holds for the other entry points: a second closure adds no trace.
  for c in curvatures:
    est = flatness.hutchinson_trace(
      _diagonal_loss(c, traces), jnp.zeros(4), batches, num_samples=2, key=0
    )
    np.testing.assert_allclose(est.estimate, np.sum(c), rtol=1e-6)
    fisher = flatness.fisher_diagonal(_diagonal_loss(c, traces), jnp.zeros(4), [jnp.ones((2, 4))])
    np.testing.assert_allclose(fisher, np.ones(4))  # the gradient at 0 is the batch row
  traced_twice = len(traces)
  for c in curvatures:
    flatness.hutchinson_trace(
      _diagonal_loss(c, traces), jnp.zeros(4), batches, num_samples=2, key=0
    )
    flatness.fisher_diagonal(_diagonal_loss(c, traces), jnp.zeros(4), [jnp.ones((2, 4))])
  assert len(traces) == traced_twice  # hutchinson and fisher: traced for the first closure only
  flatness.hessian_eigenvalues(_diagonal_loss(curvatures[1], traces), jnp.zeros(4), batches)
  assert len(traces) == traced_twice
  # Another shape is another program.
  ev = flatness.hessian_eigenvalues(
    _diagonal_loss(jnp.arange(5.0), traces), jnp.zeros(5), [jnp.ones(5)]
  )
  assert len(traces) > traced_twice
  np.testing.assert_allclose(ev, np.arange(5.0), atol=1e-6)


def test_partial_bound_method_and_hashable_callable_are_accepted():
  curvature = jnp.array([3.0, 1.0, 2.0])

  def loss(p, batch, c):
    return 0.5 * jnp.sum(c * p**2) + 0.0 * jnp.sum(batch)

  expected = np.sort(np.asarray(curvature))
  as_partial = jax.tree_util.Partial(lambda c, p, b: loss(p, b, c), curvature)
  as_functools = functools.partial(loss, c=curvature)

  class Quadratic:  # Hashable by value, as the experiments' loss class was: stays static.
    def __init__(self, scale):
      self.scale = scale

    def __call__(self, p, batch):
      return self.scale * loss(p, batch, curvature)

    def __eq__(self, other):
      return isinstance(other, Quadratic) and other.scale == self.scale

    def __hash__(self):
      return hash(self.scale)

    def method(self, p, batch):
      return self(p, batch)

  for fn, scale in [
    (as_partial, 1.0),
    (as_functools, 1.0),
    (Quadratic(2.0), 2.0),
    (Quadratic(2.0).method, 2.0),
  ]:
    ev = flatness.hessian_eigenvalues(fn, jnp.zeros(3), [jnp.zeros(3)])
    np.testing.assert_allclose(ev, scale * expected, rtol=1e-6, err_msg=str(fn))


def test_loss_closing_over_numpy_and_nested_functions():
  """NumPy arrays stay constants (NumPy code on them still works); nested closures are split."""
  weights = np.array([1.0, 4.0])
  inner_scale = jnp.array(0.5)

  def inner(p):
    return inner_scale * jnp.sum(np.sqrt(weights) * p**2)

  def loss(p, _):
    return inner(p)

  ev = flatness.hessian_eigenvalues(loss, jnp.zeros(2), [None])
  np.testing.assert_allclose(ev, [1.0, 2.0], rtol=1e-6)  # 2 * 0.5 * sqrt(w)


def test_importing_the_package_does_not_import_matplotlib():
  code = (
    "import sys, entropy_optax, entropy_optax.flatness; "
    "from entropy_optax import flatness; "
    "print('matplotlib' in sys.modules, 'matfree' in sys.modules)"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.split() == ["False", "False"]
