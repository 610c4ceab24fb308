"""authors_entropy_sgd against plain-NumPy (float64) loops of the authors' two codes.

The reference steps below follow ``entropyoptim.lua`` (``optim.entropysgd``, which ran the
paper) and ``python/optim.py`` (``EntropySGD.step``, the port) of ucla-vision/entropy-sgd in the
order those codes do things, on flat float64 vectors, with their own state (Lua's ``state.t``
and killed outer momentum, the port's never-advancing ``t`` and first-gradient buffer). They are
fed the same mini-batches as the factory: the gradient at x that both codes take first (on a
mini-batch of its own there) is taken here on the first Langevin step's mini-batch, which is
``local_entropy``'s contract.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import entropy_optax as eo

# ---------------------------------------------------------------------------------------------
# A tiny tanh MLP with a squared loss, its gradient written out in NumPy (float64) and by jax.
SHAPES = {"b1": (4,), "b2": (2,), "w1": (3, 4), "w2": (4, 2)}  # sorted, as jax flattens dicts
NAMES = sorted(SHAPES)
SIZES = [int(np.prod(SHAPES[n])) for n in NAMES]
BATCH = 8


def unflatten(flat):
  parts = np.split(flat, np.cumsum(SIZES)[:-1])
  return {n: p.reshape(SHAPES[n]) for n, p in zip(NAMES, parts)}


def flatten(tree):
  return np.concatenate([np.asarray(tree[n], np.float64).ravel() for n in NAMES])


def numpy_grad(flat, batch):
  """grad of mean_i 1/2 |tanh(x_i w1 + b1) w2 + b2 - y_i|^2, by hand."""
  p, (x, y) = unflatten(flat), batch
  h = np.tanh(x @ p["w1"] + p["b1"])
  r = (h @ p["w2"] + p["b2"] - y) / len(x)
  dh = (r @ p["w2"].T) * (1 - h**2)
  return flatten({"w1": x.T @ dh, "b1": dh.sum(0), "w2": h.T @ r, "b2": r.sum(0)})


def jax_loss(params, x, y):
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  return 0.5 * jnp.sum((h @ params["w2"] + params["b2"] - y) ** 2) / x.shape[0]


def make_batches(count, seed=0):
  rng = np.random.default_rng(seed)
  xs = rng.normal(size=(count, BATCH, 3))
  ys = rng.normal(size=(count, BATCH, 2))
  return xs, ys


def initial_params(seed=1):
  rng = np.random.default_rng(seed)
  return {n: 0.7 * rng.normal(size=SHAPES[n]) for n in NAMES}


# ---------------------------------------------------------------------------------------------
# The references: one call per outer step, as each code's step function.
def lua_reference(
  x0,
  closure,
  num_outer,
  *,
  lr_at,
  num_langevin_steps,
  gamma,
  scoping,
  langevin_lr,
  momentum,
  weight_decay,
  counter_from=1,
  decay_before_momentum=False,
):
  """``optim.entropysgd`` with ``train.lua``'s config (Nesterov, dampening 0), noise 0.

  ``closure(x, outer_step, k)`` is the gradient on mini-batch k of that outer step; k = None is
  the code's own evaluation at x (here on mini-batch 0). ``counter_from`` and
  ``decay_before_momentum`` exist only for the test that changed conventions are caught.
  """
  x, t, outer_buffer, trajectory = x0.copy(), 0, None, []
  for step in range(num_outer):
    xc = x.copy()
    dfdx = closure(x, step, None)  # (1) f(x), df/dx
    t += 1  # state.t advanced here, before gamma uses it
    dfdx = dfdx + weight_decay * x  # (2) weight decay
    if outer_buffer is None:  # (3) momentum: first call copies the gradient
      outer_buffer = dfdx.copy()
    else:
      outer_buffer = momentum * outer_buffer + dfdx
    dfdx = dfdx + momentum * outer_buffer  # Nesterov
    lr = lr_at(step)
    g = gamma * (1 + scoping) ** (t - 1 + counter_from)
    lx, lmx, inner_buffer = xc.copy(), xc.copy(), np.zeros_like(xc)
    w = np.zeros_like(xc)
    if num_langevin_steps > 0:
      for k in range(num_langevin_steps):
        ldfdx = closure(lx, step, k) + (weight_decay * lx if decay_before_momentum else 0)
        inner_buffer = momentum * inner_buffer + ldfdx
        ldfdx = ldfdx + momentum * inner_buffer
        ldfdx = ldfdx - g * (xc - lx) + (0 if decay_before_momentum else weight_decay * lx)
        # (+ noise / sqrt(0.5 lr') N(0, I): 0 here)
        lx = lx - langevin_lr * ldfdx
        lmx = 0.75 * lmx + 0.25 * lx
      w = xc - lmx
      dfdx = 0 * dfdx  # "kill the original gradient"
    x = xc - lr * (dfdx + w)
    trajectory.append(x.copy())
  return np.array(trajectory)


def port_reference(
  x0,
  closure,
  num_outer,
  *,
  lr_at,
  num_langevin_steps,
  gamma,
  scoping,
  langevin_lr,
  momentum,
  weight_decay,
  seed_buffer=True,
):
  """``EntropySGD.step`` with ``train.py``'s config (Nesterov, damp 0), noise 0.

  ``seed_buffer=False`` (a zeroed outer buffer) exists only for the test that catches it.
  """
  x, t, outer_buffer, trajectory = x0.copy(), 0, None, []
  for step in range(num_outer):
    grad_at_x = closure(x, step, None)  # mf, merr = closure()
    if outer_buffer is None:  # state['mdw'] = deepcopy(w.grad), never zeroed
      outer_buffer = grad_at_x.copy() if seed_buffer else np.zeros_like(x)
    wc, mw, w = x.copy(), x.copy(), x.copy()
    inner_buffer = np.zeros_like(x)
    g = gamma * (1 + scoping) ** t  # state['t'] is never advanced
    for k in range(num_langevin_steps):
      dw = closure(w, step, k)
      dw = dw + weight_decay * w
      inner_buffer = momentum * inner_buffer + dw
      dw = dw + momentum * inner_buffer
      dw = dw - g * (wc - w)  # + noise, 0 here
      w = w - langevin_lr * dw
      mw = 0.75 * mw + 0.25 * w
    w = wc.copy()
    dw = w - mw
    dw = dw + weight_decay * w
    outer_buffer = momentum * outer_buffer + dw
    dw = dw + momentum * outer_buffer
    x = w - lr_at(step) * dw
    trajectory.append(x.copy())
  return np.array(trajectory)


# ---------------------------------------------------------------------------------------------
SETTINGS = dict(
  num_langevin_steps=4, gamma=0.3, scoping=0.1, langevin_lr=0.1, momentum=0.9, weight_decay=0.05
)
NUM_OUTER = 6
LR_BOUNDARY, LR0, LR1 = 3, 0.5, 0.2


def lr_at(step):
  return LR0 if step < LR_BOUNDARY else LR1


@functools.cache
def factory_trajectory(code, num_outer=NUM_OUTER):
  """The factory's iterates, float32, with noise 0 and a piecewise-constant learning rate."""
  settings = SETTINGS
  schedule = optax.piecewise_constant_schedule(LR0, {LR_BOUNDARY: LR1 / LR0})
  tx = eo.authors_entropy_sgd(schedule, code=code, noise=0.0, **settings)
  L = settings["num_langevin_steps"]
  xs, ys = make_batches(num_outer * L)
  xs = jnp.asarray(xs, jnp.float32).reshape(num_outer, L, BATCH, 3)
  ys = jnp.asarray(ys, jnp.float32).reshape(num_outer, L, BATCH, 2)

  @jax.jit
  def step(params, state, bx, by):
    grad_fn = lambda p, k: jax.grad(jax_loss)(p, bx[k], by[k])
    updates, state = tx.update(grad_fn(params, 0), state, params, grad_fn=grad_fn)
    return optax.apply_updates(params, updates), state

  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), initial_params())
  state, trajectory = tx.init(params), []
  for t in range(num_outer):
    params, state = step(params, state, xs[t], ys[t])
    trajectory.append(flatten(params))
  return np.array(trajectory)


def reference_trajectory(code, num_outer=NUM_OUTER):
  settings = SETTINGS
  L = settings["num_langevin_steps"]
  xs, ys = make_batches(num_outer * L)
  closure = lambda x, step, k: numpy_grad(x, (xs[step * L + (k or 0)], ys[step * L + (k or 0)]))
  reference = lua_reference if code == "lua" else port_reference
  return reference(flatten(initial_params()), closure, num_outer, lr_at=lr_at, **settings)


@pytest.mark.parametrize("code", ["lua", "pytorch"])
def test_noise_free_trajectory_matches_the_code(code):
  got, want = factory_trajectory(code), reference_trajectory(code)
  assert np.abs(want[-1] - want[0]).max() > 0.05  # the run moves
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
  "code,wrong",
  [
    ("lua", dict(counter_from=0)),  # scoping counter advanced after use
    ("lua", dict(decay_before_momentum=True)),  # the port's place for the inside weight decay
    ("pytorch", dict(seed_buffer=False)),  # outer buffer starting at zero
  ],
)
def test_the_trajectory_test_sees_each_convention(code, wrong):
  """The reference with one convention changed is far from the factory: the test has power."""
  settings = dict(SETTINGS)
  L = settings["num_langevin_steps"]
  xs, ys = make_batches(NUM_OUTER * L)
  closure = lambda x, step, k: numpy_grad(x, (xs[step * L + (k or 0)], ys[step * L + (k or 0)]))
  reference = lua_reference if code == "lua" else port_reference
  changed = reference(
    flatten(initial_params()), closure, NUM_OUTER, lr_at=lr_at, **settings, **wrong
  )
  assert np.abs(factory_trajectory(code) - changed).max() > 1e-4


def test_lua_without_langevin_steps_is_optax_nesterov_sgd():
  """The Lua code's L = 0 (its SGD baseline) equals add_decayed_weights + optax.sgd(nesterov)."""
  num_outer, momentum, weight_decay = 6, 0.9, 0.05
  xs, ys = make_batches(num_outer)
  closure = lambda x, step, k: numpy_grad(x, (xs[step], ys[step]))
  slow = lambda step: 0.2 * lr_at(step)  # SGD at lr 0.5 diverges on this MLP
  want = lua_reference(
    flatten(initial_params()),
    closure,
    num_outer,
    lr_at=slow,
    num_langevin_steps=0,
    gamma=0.0,
    scoping=0.0,
    langevin_lr=0.1,
    momentum=momentum,
    weight_decay=weight_decay,
  )
  schedule = optax.piecewise_constant_schedule(0.2 * LR0, {LR_BOUNDARY: LR1 / LR0})
  tx = optax.chain(
    optax.add_decayed_weights(weight_decay), optax.sgd(schedule, momentum, nesterov=True)
  )
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), initial_params())

  @jax.jit
  def step(params, state, x, y):
    updates, state = tx.update(jax.grad(jax_loss)(params, x, y), state, params)
    return optax.apply_updates(params, updates), state

  state, got = tx.init(params), []
  for t in range(num_outer):
    params, state = step(params, state, xs[t], ys[t])
    got.append(flatten(params))
  np.testing.assert_allclose(np.array(got), want, atol=1e-5, rtol=0)
  with pytest.raises(ValueError, match="L = 0 is plain SGD"):
    eo.authors_entropy_sgd(0.1, code="lua", num_langevin_steps=0)


@pytest.mark.parametrize("code", ["lua", "pytorch"])
def test_noise_per_step_has_the_codes_std(code):
  """Zero gradient, tiny gamma: x - mu is the noise weighted by the average; std and kurtosis.

  Each Langevin step adds noise / sqrt(0.5 lr') N(0, I) to the step direction, i.e.
  s = noise sqrt(2 lr') to x'. After three steps from x' = x, mu = x + 0.25 (0.75^2 x'_1 +
  0.75 x'_2 + x'_3 - ...) so x - mu = -s (c1 N1 + c2 N2 + c3 N3) with the c's below.
  """
  noise, langevin_lr, lr, momentum, size = 0.01, 0.1, 0.5, 0.9, 200_000
  tx = eo.authors_entropy_sgd(
    lr,
    code=code,
    num_langevin_steps=3,
    gamma=1e-9,
    scoping=0.0,
    noise=noise,
    langevin_lr=langevin_lr,
    momentum=momentum,
    key=3,
  )
  params = jnp.zeros(size, jnp.float32)
  zero_grad = lambda p, k: jnp.zeros_like(p)
  updates, _ = jax.jit(functools.partial(tx.update, grad_fn=zero_grad))(
    jnp.zeros_like(params), tx.init(params), params
  )
  # Lua: x <- x - lr (x - mu). Port, first step with grad 0 and wd 0: x - lr (1 + momentum)(x - mu).
  outer_factor = lr * (1 + momentum if code == "pytorch" else 1.0)
  x_minus_mu = -np.asarray(updates, np.float64) / outer_factor
  c = 0.25 * np.array([0.75**2 + 0.75 + 1, 0.75 + 1, 1])
  step_std = np.std(x_minus_mu) / np.sqrt(np.sum(c**2))
  np.testing.assert_allclose(step_std, noise * np.sqrt(2 * langevin_lr), rtol=0.015)
  assert abs(np.mean(x_minus_mu)) < 5 * np.std(x_minus_mu) / np.sqrt(size)
  z = (x_minus_mu - x_minus_mu.mean()) / x_minus_mu.std()
  assert abs(np.mean(z**4) - 3) < 0.07  # Gaussian draws (Irwin-Hall would give about -0.13)


@pytest.mark.parametrize("code", ["lua", "pytorch"])
def test_nesterov_off_is_refused_with_the_reason(code):
  with pytest.raises(ValueError, match="dw = mdw"):
    eo.authors_entropy_sgd(0.1, code=code, nesterov=False)


def test_bad_arguments_say_what_to_fix():
  with pytest.raises(ValueError, match="'lua'"):
    eo.authors_entropy_sgd(0.1, code="torch")
  with pytest.raises(ValueError, match="asserts"):
    eo.authors_entropy_sgd(0.1, code="lua", momentum=0.0)
  with pytest.raises(ValueError, match="weight_decay must be >= 0"):
    eo.authors_entropy_sgd(0.1, code="pytorch", weight_decay=-1.0)
  # The port without momentum has none anywhere, so its nesterov flag does nothing.
  eo.authors_entropy_sgd(0.1, code="pytorch", momentum=0.0, nesterov=False)


@pytest.mark.parametrize(
  "code,gammas", [("lua", [0.01 * 1.5, 0.01 * 1.5**2]), ("pytorch", [0.01, 0.01])]
)
def test_gamma_of_each_update_uses_the_codes_counter(code, gammas):
  """Lua advances state.t before gamma (1 + scoping)^t; the port never advances its t."""
  tx = eo.authors_entropy_sgd(
    1.0, code=code, num_langevin_steps=2, gamma=0.01, scoping=0.5, noise=0.0
  )
  params = jnp.ones(3)
  update = jax.jit(functools.partial(tx.update, grad_fn=lambda p, k: p))
  state = tx.init(params)
  for want in gammas:
    _, state = update(params, state, params)
    np.testing.assert_allclose(
      optax.tree.get(state, "langevin_stats").langevin_gamma, want, rtol=1e-6
    )
