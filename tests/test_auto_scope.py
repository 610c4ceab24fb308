"""The automatic scope (``entropy_optax.auto_scoping``): closed forms, stability, contract,
and the harness option ``--scoping auto``."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import entropy_optax as eo
from experiments import mnist1d
from experiments.launch import components
from experiments.optimizers import registry
from experiments.run import directory
from experiments.run.schema import ConfigError, RunConfig

# f(x) = x'Ax/2 with a spread of curvatures; the exact Gibbs mean (noise 0) is
# mu = (A + gamma I)^-1 gamma x, so the ratio is
# r(gamma) = norm(gamma (A + gamma I)^-1 A x) / norm(Ax).
CURVATURES = np.array([0.2, 0.5, 1.0, 2.0, 4.0], np.float32)
X = np.array([1.0, -2.0, 0.5, 1.5, -0.3], np.float32)


def quadratic_grad(p, k=0):
  del k
  return CURVATURES * p


def closed_form_ratio(gamma, x=X):
  return np.linalg.norm(gamma * CURVATURES * x / (CURVATURES + gamma)) / np.linalg.norm(
    CURVATURES * x
  )


def solve_gamma(target, x=X):
  """gamma with r(gamma) = target, by bisection on log gamma (r is increasing)."""
  lo, hi = 1e-8, 1e8
  for _ in range(200):
    mid = np.sqrt(lo * hi)
    lo, hi = (mid, hi) if closed_form_ratio(mid, x) < target else (lo, mid)
  return np.sqrt(lo * hi)


def exact_chain(scope, **kwargs):
  """local_entropy whose chain reaches the Gibbs mean: 1000 steps, no noise, mu = last sample
  (the slowest direction contracts by 1 - 0.1 (0.2 + gamma) a step)."""
  return eo.local_entropy(1000, scope, langevin_lr=0.1, noise=0.0, alpha=1.0, unroll=1, **kwargs)


def gammas_at_fixed_x(tx, num_updates, x=X):
  """The gamma each update used, and the last state, with the weights held at x."""
  params = jnp.asarray(x)
  state = tx.init(params)
  update = jax.jit(lambda s: tx.update(quadratic_grad(params), s, params, grad_fn=quadratic_grad))
  used = []
  for _ in range(num_updates):
    _, state = update(state)
    used.append(float(state.langevin_stats.langevin_gamma))
  return np.array(used), state


@pytest.mark.parametrize("target", [0.05, 0.5, 0.8])
@pytest.mark.parametrize("smoothing", [1.0, 0.3])
def test_converges_without_oscillation_to_the_closed_form(target, smoothing):
  want = solve_gamma(target)
  tx = exact_chain(eo.auto_scoping(target, smoothing=smoothing))
  used, state = gammas_at_fixed_x(tx, 150 if smoothing < 1 else 40)
  # Monotone: every step moves gamma the same way, none overshoots the answer.
  steps = np.diff(np.log(used))
  assert np.all(steps >= -1e-6) or np.all(steps <= 1e-6), used
  assert np.all(used <= want * (1 + 1e-4)), (used, want)  # approached from below (gamma_init small)
  np.testing.assert_allclose(used[-1], want, rtol=2e-3)
  # The chain the rule measured is the closed form: mu = (A + gamma I)^-1 gamma x.
  gamma = used[-1]
  np.testing.assert_allclose(state.langevin_mu, gamma * X / (CURVATURES + gamma), rtol=1e-4)
  stats = state.langevin_stats
  np.testing.assert_allclose(stats.entropy_grad_norm / stats.grad_norm, target, rtol=3e-3)


def test_one_step_per_measurement_contracts_by_at_most_the_elasticity():
  """With smoothing 1, log gamma's error shrinks each update at least by the factor 1 - e, with
  e = d log r / d log gamma the ratio's elasticity, smallest at the answer (from below)."""
  target = 0.5
  want = solve_gamma(target)
  used, _ = gammas_at_fixed_x(exact_chain(eo.auto_scoping(target, smoothing=1.0)), 8)
  errors = np.abs(np.log(used) - np.log(want))
  h = 1e-3
  e = (np.log(closed_form_ratio(want * np.exp(h))) - np.log(closed_form_ratio(want))) / h
  assert 0 < e < 1
  for before, after in zip(errors[:-1], errors[1:]):
    assert after <= (1 - e) * before + 1e-4, (before, after, e)


def test_from_above_too():
  want = solve_gamma(0.2)
  tx = exact_chain(eo.auto_scoping(0.2, gamma_init=9.0, smoothing=0.5))
  used, _ = gammas_at_fixed_x(tx, 40)
  assert np.all(np.diff(used) <= 1e-6) and np.all(used >= want * (1 - 1e-4))
  np.testing.assert_allclose(used[-1], want, rtol=2e-3)


def test_training_on_an_isotropic_quadratic_settles_where_the_ratio_says():
  """f = a norm(x)^2 / 2: r = gamma / (a + gamma) wherever x is, so gamma -> a r / (1 - r)."""
  a, target = 2.0, 0.25
  grad = lambda p, k=0: a * p
  tx = eo.entropy_sgd(
    0.1,
    num_langevin_steps=200,
    gamma=eo.auto_scoping(target),
    langevin_lr=0.1,
    noise=0.0,
    alpha=1.0,
    unroll=1,
  )
  params = jnp.array([3.0, -1.0, 2.0])
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(grad(params), state, params, grad_fn=grad)
    return optax.apply_updates(params, updates), state

  used = []
  for _ in range(60):
    params, state = step(params, state)
    used.append(float(optax.tree.get(state, "langevin_gamma")))
  assert np.all(np.diff(used) >= -1e-6)
  np.testing.assert_allclose(used[-1], target * a / (1 - target), rtol=5e-3)
  assert float(jnp.linalg.norm(params)) < 3.0  # and it trained


def test_a_short_chain_calibrates_at_the_first_update():
  """Default settings (L = 20, noise): the ratio of the second update is near its target."""
  target = 0.1
  tx = eo.local_entropy(20, eo.auto_scoping(target), noise=1e-4, unroll=1)
  params = jnp.asarray(X)
  state = tx.init(params)
  update = jax.jit(lambda s: tx.update(quadratic_grad(params), s, params, grad_fn=quadratic_grad))
  ratios = []
  for _ in range(2):
    _, state = update(state)
    ratios.append(float(state.langevin_stats.entropy_grad_norm / state.langevin_stats.grad_norm))
  assert ratios[0] < 0.5 * target  # gamma_init = 0.03 was far too small
  np.testing.assert_allclose(ratios[1], target, rtol=0.15)


def test_gamma_is_visible_and_bounded():
  # A target the short chain cannot reach stops at gamma_max = 1 / langevin_lr.
  tx = eo.local_entropy(3, eo.auto_scoping(0.99, smoothing=1.0), langevin_lr=0.2, noise=0.0)
  used, state = gammas_at_fixed_x(tx, 10)
  assert used[0] == pytest.approx(0.03)
  assert float(optax.tree.get(state, "scope_gamma")) == pytest.approx(5.0)
  tx = eo.local_entropy(3, eo.auto_scoping(1e-6, gamma_min=0.01), noise=0.0)
  _, state = gammas_at_fixed_x(tx, 3)
  assert float(optax.tree.get(state, "scope_gamma")) == pytest.approx(0.01)


def test_a_zero_gradient_keeps_gamma():
  tx = eo.local_entropy(3, eo.auto_scoping(0.3), noise=0.0)
  params = jnp.zeros(3)
  zero = lambda p, k=0: jnp.zeros_like(p)
  state = tx.init(params)
  _, state = jax.jit(lambda s: tx.update(zero(params), s, params, grad_fn=zero))(state)
  assert float(state.langevin_scope.scope_gamma) == pytest.approx(0.03)


def test_schedule_of_the_target_and_ratio_scoping():
  target = eo.ratio_scoping(0.02, 1e-3, 0.5)
  np.testing.assert_allclose(target(np.arange(3)), 0.02 * 1.001 ** np.arange(3), rtol=1e-6)
  assert float(target(10**6)) == pytest.approx(0.5)
  # The target of update t + 1 is what gamma_{t+1} aims at: a growing target raises gamma.
  tx = exact_chain(eo.auto_scoping(lambda t: 0.05 * (1.0 + t), smoothing=1.0))
  used, _ = gammas_at_fixed_x(tx, 6)
  assert np.all(np.diff(used) > 0)
  ratios = [closed_form_ratio(g) for g in used[1:]]
  np.testing.assert_allclose(ratios, 0.05 * (1.0 + np.arange(1, 6)), rtol=0.15)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(target_ratio=1.0), "target_ratio must be in (0, 1)"),
    (dict(target_ratio=0.1, smoothing=0.0), "smoothing must be in (0, 1]"),
    (dict(target_ratio=0.1, gamma_init=-1.0), "gamma_init must be > 0"),
    (dict(target_ratio=0.1, gamma_min=1.0, gamma_max=0.5), "gamma_max must be >= gamma_min"),
  ],
)
def test_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    eo.auto_scoping(**kwargs)
  with pytest.raises(ValueError, match="ratio0 out of range"):
    eo.ratio_scoping(2.0, 1e-3, 0.5)


@pytest.mark.parametrize("factory", [eo.entropy_sgd, eo.entropy_adam])
def test_contract_jit_once_vmap_chain_inject_dtype(factory):
  traces = []
  tx = factory(0.1, num_langevin_steps=3, gamma=eo.auto_scoping(0.2))

  @jax.jit
  def step(params, state):
    traces.append(1)
    updates, state = tx.update(quadratic_grad(params), state, params, grad_fn=quadratic_grad)
    return optax.apply_updates(params, updates), state

  params = jnp.asarray(X)
  state = tx.init(params)
  for _ in range(3):
    params, state = step(params, state)
  assert len(traces) == 1
  first_gamma = float(optax.tree.get(state, "scope_gamma"))
  assert first_gamma != pytest.approx(0.03)

  # vmap over seeds (keys): each seed has its own gamma, as its own chain measured.
  def run(key):
    tx = factory(0.1, num_langevin_steps=3, gamma=eo.auto_scoping(0.2), noise=0.3, key=key)
    s = tx.init(jnp.asarray(X))
    _, s = tx.update(quadratic_grad(jnp.asarray(X)), s, jnp.asarray(X), grad_fn=quadratic_grad)
    return optax.tree.get(s, "scope_gamma")

  gammas = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(0), 3))
  assert gammas.shape == (3,) and len(set(np.asarray(gammas).tolist())) == 3

  # inject_hyperparams passes the scope through as a static argument.
  injected = optax.inject_hyperparams(factory, static_args=("num_langevin_steps",))(
    0.1, num_langevin_steps=3, gamma=eo.auto_scoping(0.2)
  )
  s = injected.init(jnp.asarray(X))
  _, s = injected.update(quadratic_grad(jnp.asarray(X)), s, jnp.asarray(X), grad_fn=quadratic_grad)
  assert float(optax.tree.get(s, "scope_gamma")) == pytest.approx(first_gamma, rel=0.5)

  # bfloat16 weights: updates keep the dtype, the scope stays float32.
  p16 = jnp.asarray(X, jnp.bfloat16)
  s = tx.init(p16)
  grad16 = lambda p, k=0: (CURVATURES * p.astype(jnp.float32)).astype(jnp.bfloat16)
  updates, s = tx.update(grad16(p16), s, p16, grad_fn=grad16)
  assert updates.dtype == jnp.bfloat16
  assert optax.tree.get(s, "scope_gamma").dtype == jnp.float32


def test_a_fixed_gamma_keeps_an_empty_scope_state():
  state = eo.local_entropy(2, 0.1).init(jnp.ones(2))
  assert state.langevin_scope == () and len(jax.tree.leaves(state)) == 8


# ---- the harness: --scoping auto -------------------------------------------------------------


def test_run_config_scoping_auto_builds_the_scope():
  config = RunConfig(optimizer="entropy-sgd", langevin_steps=5, scoping="auto", target_ratio=0.05)
  tx = registry.OPTIMIZERS["entropy-sgd"].make(config, 0.1, jax.random.key(0))
  state = tx.init(jnp.asarray(X))
  assert float(optax.tree.get(state, "scope_gamma")) == pytest.approx(config.gamma0)
  for bad, message in (
    (dict(target_ratio=0.0), "--target-ratio must be in (0, max_target_ratio"),
    (dict(max_target_ratio=1.0), "--max-target-ratio must be in (0, 1)"),
  ):
    with pytest.raises(ConfigError, match=re.escape(message)):
      components.validate(config.replace(**bad))


def test_command_line_scoping_auto(tmp_path, capsys):
  """One tiny Entropy-SGD run through the command line with --scoping auto: gamma moves."""
  workdir = tmp_path / "job"
  argv = [
    "--models",
    "mlp1d",
    "--optimizers",
    "entropy-sgd",
    "--recipe.entropy-sgd.scoping",
    "auto",
    "--recipe.entropy-sgd.target-ratio",
    "0.2",
    "--recipe.entropy-sgd.langevin-steps",
    "2",
    "--effective-epochs",
    "5",
    "--num-seeds",
    "1",
    "--num-train",
    "200",
    "--num-test",
    "100",
    "--batch-size",
    "50",
    "--eval-every-effective-epochs",
    "2.5",
    "--workdir",
    str(workdir),
    "--no-progress",
  ]
  assert mnist1d.main(argv) == 0, capsys.readouterr().err
  run = workdir / "mlp1d-entropy-sgd"
  saved = directory.read_json(run / "config.json")["config"]
  assert saved["scoping"] == "auto" and saved["target_ratio"] == 0.2
  lines = [r for r in directory.read_records(run / "metrics.jsonl") if "langevin_gamma" in r]
  assert lines and lines[-1]["langevin_gamma"] != pytest.approx(0.03)
