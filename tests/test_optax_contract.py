"""Optax's contract for optimizers, checked on Entropy-SGD, Entropy-Adam and local_entropy + SGD.

Each test names the optax 0.2.8 test (in optax's own test files) whose property it checks; the
code is ours. Also the compositions users of optax reach for: MultiSteps, partition, complex.
"""

import functools
import inspect
import os
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import entropy_optax as eo
from tests import fresh_process

L = 3
OPTIMIZERS = {
  "entropy_sgd": lambda: eo.entropy_sgd(
    0.1, num_langevin_steps=L, momentum=0.9, langevin_momentum=0.5, weight_decay=1e-3
  ),
  "entropy_adam": lambda: eo.entropy_adam(
    0.1, num_langevin_steps=L, gamma=0.5, noise_distribution="gaussian"
  ),
  "local_entropy_sgd": lambda: optax.chain(eo.local_entropy(L, 0.1), optax.sgd(0.1)),
  # One replica (no named axis): the coupling is zero, the contract is the chain's.
  "parle_one_replica": lambda: eo.parle(0.1, rho=1.0, num_langevin_steps=L, axis_name=None),
}
CURVATURES = np.array([0.5, 1.0, 2.0], np.float32)


def quadratic_grad(params, k):
  """grad of 1/2 sum c |x|^2 for every leaf (c broadcast to the leaf), in optax's convention."""
  del k
  return jax.tree.map(lambda x: jnp.asarray(CURVATURES[: x.shape[-1]], x.real.dtype) * x, params)


@functools.lru_cache
def compiled(update):
  return jax.jit(update, static_argnames=("grad_fn",))


def jit_update(tx, grads, state, params, grad_fn=quadratic_grad, **kwargs):
  """tx.update under jit, compiled once per optimizer and grad_fn."""
  return compiled(tx.update)(grads, state, params, grad_fn=grad_fn, **kwargs)


def dtypes(tree):
  return jax.tree.map(lambda a: jnp.dtype(a.dtype), tree)


# ---------------------------------------------------------------------------------------------
# x64: the state keeps its dtypes.


def scan_steps(tx, params, state, num_steps=3):
  """num_steps of training in a lax.scan, whose carry must keep its types."""

  def step(carry, _):
    p, s = carry
    u, s = tx.update(quadratic_grad(p, 0), s, p, grad_fn=quadratic_grad)
    return (optax.apply_updates(p, u), s), None

  return jax.jit(lambda c: jax.lax.scan(step, c, length=num_steps)[0])((params, state))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_x64_mixed_dtypes_keep_state_and_param_dtypes(name):
  """float64_test.test_mixed_dtype_input_outputs, in a lax.scan loop (carry types must match)."""
  with jax.enable_x64(True):
    params = (jnp.array([1.0, 2.0], jnp.float32), jnp.array([3.0, 4.0], jnp.float64))
    tx = OPTIMIZERS[name]()
    state = jax.jit(tx.init)(params)
    final, final_state = scan_steps(tx, params, state)
    assert dtypes(final_state) == dtypes(state) and dtypes(final) == dtypes(params)
  # The float32 leaf moves as it does without x64 (float32 arithmetic in both).
  params32 = (jnp.array([1.0, 2.0], jnp.float32), jnp.array([3.0, 4.0], jnp.float32))
  final32, _ = scan_steps(OPTIMIZERS[name](), params32, OPTIMIZERS[name]().init(params32))
  np.testing.assert_allclose(final[0], final32[0], rtol=1e-5)
  assert np.all(np.abs(np.asarray(final[0])) < [1.0, 2.0])  # it did descend


def test_x64_injected_float64_hyperparameters_keep_the_float32_state():
  """Hyper-parameters injected as float64 arrays: the float32 chain stays float32.

  (optax's own sgd and add_decayed_weights promote their float32 state with float64
  hyper-parameters, so local_entropy is injected alone here.)
  """
  with jax.enable_x64(True):
    inject = optax.inject_hyperparams(
      eo.local_entropy, static_args=("num_langevin_steps",), hyperparam_dtype=jnp.float64
    )
    tx = inject(L, langevin_momentum=0.5, weight_decay=1e-3, alpha=0.5, noise=1e-3)
    params = jnp.array([1.0, -2.0, 0.5], jnp.float32)
    state = tx.init(params)
    assert optax.tree.get(state, "alpha").dtype == jnp.float64  # the hazard is real
    updates, new_state = jit_update(tx, quadratic_grad(params, 0), state, params)
    assert dtypes(new_state) == dtypes(state) and updates.dtype == jnp.float32


def test_x64_float64_chain_reaches_the_closed_form_in_double_precision():
  """A float64 chain runs in float64: the noise-free quadratic's mean A (A + g)^-1 x to 1e-12."""
  gamma = 0.7
  with jax.enable_x64(True):
    x = jnp.array([1.0, -2.0, 0.5], jnp.float64)
    tx = eo.local_entropy(400, gamma, 0.1, 0.0, 1.0)
    updates, state = jit_update(tx, quadratic_grad(x, 0), tx.init(x), x)
    assert updates.dtype == jnp.float64 and state.langevin_mu.dtype == jnp.float64
    curvatures = CURVATURES.astype(np.float64)
    np.testing.assert_allclose(
      updates, curvatures / (curvatures + gamma) * np.asarray(x), rtol=1e-12
    )


# ---------------------------------------------------------------------------------------------
# init on shapes only; empty trees.


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_init_with_abstract_input(name):
  """sharding_test.test_init_with_abstract_input, and eval_shape(tx.init) like the real init."""
  tx = OPTIMIZERS[name]()
  shape_only = jax.ShapeDtypeStruct((2, 4, 8), jnp.bfloat16)
  state = tx.init(shape_only)
  concrete = tx.init(jnp.ones((2, 4, 8), jnp.bfloat16))
  describe = lambda t: jax.tree.map(lambda a: (a.shape, jnp.dtype(a.dtype)), t)
  assert describe(state) == describe(concrete) == describe(jax.eval_shape(tx.init, shape_only))
  mu = optax.tree.get(state, "langevin_mu")
  assert mu.dtype == jnp.float32 and not np.any(mu)  # zeros: there is no x to copy
  np.testing.assert_array_equal(optax.tree.get(concrete, "langevin_mu"), 1.0)  # x


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_empty_params_tree(name):
  """An empty model, as optax.adam takes it: empty updates, zero stats, the count advances."""
  tx = OPTIMIZERS[name]()
  updates, state = tx.update({}, tx.init({}), {}, grad_fn=lambda p, k: p)
  assert updates == {}
  stats = optax.tree.get(state, "langevin_stats")
  assert float(stats.grad_norm) == 0.0 and float(stats.cosine) == 0.0
  assert int(optax.tree.get(state, "langevin_count")) == 1


# ---------------------------------------------------------------------------------------------
# Explicit sharding (8 simulated CPU devices: a fresh process, the count is fixed at start-up).

SHARDING_CHECK = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax
    import entropy_optax as eo
    mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Explicit,))
    sharding = jax.sharding.NamedSharding(mesh, jax.P(None, "x"))
    grad_fn = lambda p, k: p * (1.0 + k)
    types = lambda t: jax.tree.map(jax.typeof, t)
    for i, make in enumerate((
        lambda: eo.entropy_sgd(1.0, num_langevin_steps=3),
        lambda: eo.entropy_adam(1.0, num_langevin_steps=3, noise_distribution="gaussian"),
        lambda: optax.chain(eo.local_entropy(3, 0.1), optax.sgd(1.0)))):
      tx = make()
      update = jax.jit(lambda u, s, p: tx.update(u, s, p, grad_fn=grad_fn))
      plain = jnp.linspace(-1, 1, 64, dtype=jnp.float16).reshape(2, 8, 4)
      expected, _ = update(plain, tx.init(plain), plain)
      with jax.set_mesh(mesh):
        params = jax.device_put(plain, sharding)
        state0 = tx.init(params)
        assert types(jax.jit(tx.init)(params)) == types(state0)
        updates, state1 = update(params, state0, params)
        assert types(state0) == types(state1), (types(state0), types(state1))
        assert "8@x" in str(jax.typeof(optax.tree.get(state1, "langevin_mu")))
        if i == 0:  # op by op too (slow: once)
          assert types(tx.update(params, state0, params, grad_fn=grad_fn)[1]) == types(state1)
      np.testing.assert_allclose(np.asarray(updates, np.float32),
                                 np.asarray(expected, np.float32), rtol=1e-2, atol=1e-3)
    print("SHARDING OK")
""")


def test_explicit_sharding_state_types_match_and_survive_jit():
  """sharding_test.test_state_sharding_type_init_match_update and ..._preserved_with_jit."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(
    [sys.executable, "-c", SHARDING_CHECK],
    env=fresh_process.environment(8),
    cwd=root,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0 and "SHARDING OK" in result.stdout, result.stderr[-3000:]


# ---------------------------------------------------------------------------------------------
# Names: optax.tree.get finds one value; schedules are recognised.


def test_tree_get_names_do_not_clash_with_adam_or_inject_hyperparams():
  """alias_test.test_optimizers_can_be_wrapped_in_inject_hyperparams, read by optax.tree.get."""
  params = jnp.array([1.0, -2.0, 0.5])
  tx = eo.entropy_adam(0.1, num_langevin_steps=L)
  _, state = jit_update(tx, quadratic_grad(params, 0), tx.init(params), params)
  adam_state = state[1][1][0]
  np.testing.assert_array_equal(optax.tree.get(state, "mu"), adam_state.mu)
  assert int(optax.tree.get(state, "count")) == int(adam_state.count) == 1
  assert int(optax.tree.get(state, "langevin_count")) == 1
  assert optax.tree.get(state, "langevin_mu").shape == (3,)

  inject = optax.inject_hyperparams(eo.entropy_sgd, static_args=("num_langevin_steps",))
  tx = inject(0.1, num_langevin_steps=L)
  state = optax.tree.set(tx.init(params), gamma=jnp.asarray(0.4))
  assert float(optax.tree.get(state, "gamma")) == pytest.approx(0.4)
  _, state = jit_update(tx, quadratic_grad(params, 0), state, params)
  assert float(optax.tree.get(state, "langevin_gamma")) == pytest.approx(0.4)


@pytest.mark.parametrize("factory", [eo.entropy_sgd, eo.entropy_adam])
def test_learning_rate_schedule_is_recognised_by_its_annotation(factory):
  """contrib/_common_test.test_optimizers_accept_learning_rate_schedule_if_type_annotated_as_such."""
  signature = inspect.signature(factory)
  assert signature.parameters["learning_rate"].annotation is optax.ScalarOrSchedule
  assert signature.parameters["gamma"].annotation is optax.ScalarOrSchedule
  assert inspect.signature(eo.local_entropy).parameters["gamma"].annotation is (
    optax.ScalarOrSchedule
  )
  params = {"with_schedule": jnp.array([1.0, -2.0, 0.5]), "with_lr": jnp.array([1.0, -2.0, 0.5])}
  for name, lr in (("with_schedule", optax.constant_schedule(1e-2)), ("with_lr", 1e-2)):
    tx = factory(lr, num_langevin_steps=L)
    p, state = params[name], tx.init(params[name])
    for _ in range(3):
      updates, state = jit_update(tx, quadratic_grad(p, 0), state, p)
      p = optax.apply_updates(p, updates)
    params[name] = p
  np.testing.assert_allclose(params["with_schedule"], params["with_lr"], rtol=1e-6)
  assert not np.allclose(params["with_lr"], [1.0, -2.0, 0.5])


# ---------------------------------------------------------------------------------------------
# Gradient accumulation.


def counting(grad_fn, calls):
  """grad_fn that counts its executions (a callback: a skipped lax.cond branch does not count)."""

  def counted(params, k):
    jax.debug.callback(lambda: calls.append(1))
    return grad_fn(params, k)

  return counted


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_multisteps_runs_the_chain_once_per_emitted_update(name):
  """alias_test.test_gradient_accumulation (zero updates between emissions), and the cost."""
  k_micro = 4
  inner = OPTIMIZERS[name]()
  params = jnp.array([1.0, -2.0, 0.5])
  micro_grads = [quadratic_grad(params, 0) + 0.1 * i for i in range(k_micro)]
  expected, _ = jit_update(inner, sum(micro_grads) / k_micro, inner.init(params), params)
  for multi, calls_per_emit in (
    (eo.MultiSteps(inner, k_micro), L - 1),
    (optax.MultiSteps(inner, k_micro), k_micro * (L - 1)),
  ):
    calls = []
    grad_fn = counting(quadratic_grad, calls)
    state = multi.init(params)
    for i, grads in enumerate(micro_grads):
      updates, state = jit_update(multi, grads, state, params, grad_fn=grad_fn)
      jax.effects_barrier()
      if i < k_micro - 1:
        np.testing.assert_array_equal(updates, 0.0)
    assert len(calls) == calls_per_emit
    np.testing.assert_allclose(updates, expected, rtol=1e-6)
    assert int(optax.tree.get(state, "langevin_count")) == 1


def test_run_langevin_false_skips_the_chain_and_keeps_the_state():
  tx = eo.entropy_sgd(0.1, num_langevin_steps=L)
  params = jnp.array([1.0, -2.0, 0.5])
  state = tx.init(params)
  calls = []
  updates, new_state = jit_update(
    tx,
    quadratic_grad(params, 0),
    state,
    params,
    grad_fn=counting(quadratic_grad, calls),
    run_langevin=jnp.asarray(False),
  )
  jax.effects_barrier()
  assert not calls
  np.testing.assert_array_equal(updates, 0.0)
  jax.tree.map(np.testing.assert_array_equal, new_state, state)


# ---------------------------------------------------------------------------------------------
# Part of a model: mask, with optax.partition after it.

PARAMS = {"backbone": {"w": jnp.array([0.5, -1.0])}, "head": {"w": jnp.array([1.0, 2.0, -0.5])}}
LABELS = {"backbone": "frozen", "head": "entropy"}
HEAD_ONLY = {"backbone": False, "head": True}


def coupled_grad(params, k):
  """Gradient of |b|^2 |h|^2 / 2 + k-dependent tilt: the head's gradient needs the backbone."""
  b, h = params["backbone"]["w"], params["head"]["w"]
  return {"backbone": {"w": jnp.sum(h**2) * b}, "head": {"w": jnp.sum(b**2) * h + 0.01 * k}}


def test_partition_with_frozen_backbone_moves_only_the_head():
  """The chain moves the head; grad_fn sees whole params, the backbone held at x."""
  gamma, lr, noise, alpha = 0.5, 0.1, 1e-2, 0.75
  tx = optax.chain(
    eo.local_entropy(5, gamma, lr, noise, alpha, mask=HEAD_ONLY, key=3),
    optax.partition({"entropy": optax.sgd(1.0), "frozen": optax.set_to_zero()}, LABELS),
  )
  state = tx.init(PARAMS)
  assert isinstance(state[0].langevin_mu["backbone"]["w"], optax.MaskedNode)
  updates, state = jit_update(tx, coupled_grad(PARAMS, 0), state, PARAMS, grad_fn=coupled_grad)
  np.testing.assert_array_equal(updates["backbone"]["w"], 0.0)
  # Independently: the chain on the head alone, the backbone a constant of its gradient.
  _, chain_key = jax.random.split(jax.random.PRNGKey(3))
  head_grad = lambda h, k: coupled_grad({"backbone": PARAMS["backbone"], "head": h}, k)["head"]
  mu, _ = eo.langevin_mean(
    head_grad,
    PARAMS["head"],
    chain_key,
    gamma=gamma,
    num_steps=5,
    langevin_lr=lr,
    noise=noise,
    alpha=alpha,
  )
  np.testing.assert_allclose(updates["head"]["w"], -(PARAMS["head"]["w"] - mu["w"]), rtol=1e-6)
  np.testing.assert_allclose(state[0].langevin_mu["head"]["w"], mu["w"], rtol=1e-6)


def test_entropy_sgd_mask_passes_the_other_gradients_through_like_optax_masked():
  callable_mask = lambda params: jax.tree.map(lambda _: True, params) | {"backbone": False}
  grads = coupled_grad(PARAMS, 0)
  results = []
  for mask in (HEAD_ONLY, callable_mask):
    tx = eo.entropy_sgd(0.1, num_langevin_steps=L, mask=mask)
    updates, _ = jit_update(tx, grads, tx.init(PARAMS), PARAMS, grad_fn=coupled_grad)
    np.testing.assert_array_equal(updates["backbone"]["w"], grads["backbone"]["w"])
    results.append(updates["head"]["w"])
  np.testing.assert_array_equal(results[0], results[1])
  assert np.all(np.sign(results[0]) == -np.sign(PARAMS["head"]["w"]))  # towards 0


def test_function_mask_under_inject_hyperparams_needs_static_args():
  """Named in static_args, a mask function gives the updates of the plain transformation; not
  named, inject_hyperparams calls it with the step count: a mask selecting nothing raises."""
  by_size = lambda params: jax.tree.map(lambda leaf: leaf.size > 2, params)  # the head
  grads = coupled_grad(PARAMS, 0)
  plain = eo.local_entropy(L, 0.5, mask=HEAD_ONLY, key=3)
  expected, _ = jit_update(plain, grads, plain.init(PARAMS), PARAMS, grad_fn=coupled_grad)
  static = ("mask", "num_langevin_steps")
  injected = optax.inject_hyperparams(eo.local_entropy, static_args=static)(
    L, 0.5, mask=by_size, key=3
  )
  updates, _ = jit_update(injected, grads, injected.init(PARAMS), PARAMS, grad_fn=coupled_grad)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), updates, expected)
  assert not np.allclose(updates["head"]["w"], grads["head"]["w"])  # the chain did move it
  as_schedule = optax.inject_hyperparams(eo.local_entropy, static_args=("num_langevin_steps",))
  with pytest.raises(ValueError, match=r"selects no leaf .* static_args=\('mask'"):
    as_schedule(L, 0.5, mask=by_size).init(PARAMS)
  with pytest.raises(ValueError, match="selects no leaf"):
    eo.local_entropy(mask={"backbone": False, "head": False}).init(PARAMS)


def test_local_entropy_inside_partition_says_to_use_mask():
  tx = optax.partition({"entropy": eo.entropy_sgd(0.1), "frozen": optax.set_to_zero()}, LABELS)
  with pytest.raises(ValueError, match="mask"):
    tx.init(PARAMS)
  with pytest.raises(ValueError, match="tree structure of params"):
    eo.local_entropy(mask={"head": True}).init(PARAMS)


# ---------------------------------------------------------------------------------------------
# Complex parameters: SGLD on R^2n.


def test_complex_noise_has_unit_variance_in_both_parts():
  """One step from x with no gradient: x - mu = -sqrt(lr) noise z, z of unit variance per part."""
  lr, noise, n = 0.04, 0.5, 40_000
  tx = eo.local_entropy(1, 1e-6, lr, noise, 1.0)
  x = jnp.zeros(n, jnp.complex64)
  updates, _ = jit_update(tx, x, tx.init(x), x, grad_fn=lambda p, k: jnp.zeros_like(p))
  z = -np.asarray(updates) / (np.sqrt(lr) * noise)
  tolerance = 5 * np.sqrt(2 / n)
  assert abs(z.real.var() - 1) < tolerance and abs(z.imag.var() - 1) < tolerance
  assert abs(np.corrcoef(z.real, z.imag)[0, 1]) < 5 / np.sqrt(n)


def test_complex_quadratic_closed_form_and_real_cosine_without_warning():
  """alias_test.test_optimization's complex case: optax's convention, conj(jax.grad)."""
  gamma = 0.7
  c = jnp.asarray(CURVATURES)
  loss = lambda z: 0.5 * jnp.sum(c * jnp.abs(z) ** 2)
  grad_fn = lambda z, k: jnp.conj(jax.grad(loss)(z))
  z = jnp.array([1 + 2j, -0.5 + 1j, 2 - 1j], jnp.complex64)
  np.testing.assert_allclose(grad_fn(z, 0), c * z, rtol=1e-6)  # the convention
  tx = eo.local_entropy(300, gamma, 0.1, 0.0, 1.0)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    updates, state = jit_update(tx, grad_fn(z, 0), tx.init(z), z, grad_fn=grad_fn)
  np.testing.assert_allclose(updates, c / (c + gamma) * z, rtol=1e-5)
  # The cosine is that of R^2n: (Re, Im) stacked.
  as_real = lambda a: np.concatenate([np.real(a), np.imag(a)])
  g, d = as_real(grad_fn(z, 0)), as_real(updates)
  expected = g @ d / (np.linalg.norm(g) * np.linalg.norm(d))
  np.testing.assert_allclose(state.langevin_stats.cosine, expected, rtol=1e-5)
  np.testing.assert_allclose(state.langevin_stats.grad_norm, np.linalg.norm(g), rtol=1e-6)


def test_entropy_sgd_minimises_a_complex_parabola():
  """alias_test.test_optimization on the parabola, complex64."""
  target = jnp.array([1 + 1j, -2 + 0.5j], jnp.complex64)
  loss = lambda z: jnp.sum(jnp.abs(z - target) ** 2)
  grad_fn = lambda z, k: jnp.conj(jax.grad(loss)(z))
  tx = eo.entropy_sgd(0.1, num_langevin_steps=L, gamma=1.0)
  z = jnp.zeros(2, jnp.complex64)
  state = tx.init(z)

  @jax.jit
  def step(z, state):
    updates, state = tx.update(grad_fn(z, 0), state, z, grad_fn=grad_fn)
    return optax.apply_updates(z, updates), state

  for _ in range(100):
    z, state = step(z, state)
  assert z.dtype == jnp.complex64
  np.testing.assert_allclose(z, target, atol=1e-2)
