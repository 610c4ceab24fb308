"""authors_entropy_sgd: Entropy-SGD exactly as the authors' Lua code or their PyTorch port.

ucla-vision/entropy-sgd holds two implementations: ``entropyoptim.lua`` (with ``train.lua``),
which produced the paper's numbers, and ``python/optim.py``, a later port. Both differ from the
paper's Alg. 1 and from each other; this module rebuilds each from the library's own pieces
(:func:`~entropy_optax.local_entropy` and small optax transformations), with each code's own
argument meanings.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from entropy_optax._scoping import exponential_scoping
from entropy_optax._transform import local_entropy
from entropy_optax._utils import is_concrete_number

Code = Literal["lua", "pytorch"]
CODES = ("lua", "pytorch")

# Both codes: mu <- 0.75 mu + 0.25 x' (``beta1 = 0.75`` is the weight of the old mean).
AUTHORS_ALPHA = 0.25
# Both codes add noise / sqrt(0.5 lclr) N(0, I) to the step direction, i.e. noise sqrt(2 lclr) to
# x'; the library's chain adds noise sqrt(lclr): its noise is the code's times sqrt(2).
AUTHORS_NOISE_FACTOR = math.sqrt(2.0)


class PortMomentumState(NamedTuple):
  """State of the PyTorch port's outer momentum around its local-entropy chain.

  Attributes:
    port_count: outer updates done so far (int32; so named that ``optax.tree.get`` of
      ``"count"`` finds no second ``count`` beside Adam's or SGD's).
    inner_state: the state of the wrapped chain (:func:`~entropy_optax.local_entropy` and the outer
      weight decay).
    momentum_buffer: the port's ``state['mdw']``: a copy of the first gradient, then
      momentum * buffer + (x - μ + weight_decay x) at every update.
  """

  port_count: jax.Array
  inner_state: optax.OptState
  momentum_buffer: optax.Updates


def _port_outer_momentum(
  inner: optax.GradientTransformationExtraArgs, momentum: float, nesterov: bool
) -> optax.GradientTransformationExtraArgs:
  """``inner`` followed by the port's outer momentum, whose buffer starts as the first gradient.

  The port fills ``state['mdw']`` with ``deepcopy(w.grad)`` of the first closure at x and never
  zeroes it, so its first outer Nesterov step carries an extra lr momentum^2 ∇f(x0), which
  decays as momentum^t. ``inner`` receives the raw gradient; the buffer is seeded with it.
  """

  def init_fn(params):
    return PortMomentumState(
      port_count=jnp.zeros([], jnp.int32),
      inner_state=inner.init(params),
      momentum_buffer=optax.tree.zeros_like(params),
    )

  def update_fn(updates, state, params=None, **extra_args):
    first = state.port_count == 0
    buffer = optax.tree.where(
      first,
      jax.tree.map(lambda g, b: g.astype(b.dtype), updates, state.momentum_buffer),
      state.momentum_buffer,
    )
    direction, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    buffer = jax.tree.map(lambda b, d: (momentum * b + d).astype(b.dtype), buffer, direction)
    if nesterov:
      direction = jax.tree.map(lambda d, b: (d + momentum * b).astype(d.dtype), direction, buffer)
    else:
      direction = buffer
    return direction, PortMomentumState(optax.safe_increment(state.port_count), inner_state, buffer)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check(code, num_langevin_steps, momentum, nesterov, weight_decay, scoping) -> None:
  """ValueErrors for settings each code would run differently from what this factory builds."""
  if code not in CODES:
    raise ValueError(
      f"code must be 'lua' (the code that ran the paper) or 'pytorch' (the port), got {code!r}."
    )
  if (
    isinstance(num_langevin_steps, (int,))
    and not isinstance(num_langevin_steps, bool)
    and (num_langevin_steps < 1)
  ):
    lua_sgd = (
      "the Lua code's L = 0 is plain SGD, exactly optax.chain(optax.add_decayed_weights("
      "weight_decay), optax.sgd(lr, momentum, nesterov=True))"
    )
    raise ValueError(f"num_langevin_steps must be >= 1, got {num_langevin_steps}; {lua_sgd}.")
  for name, value in (("momentum", momentum), ("weight_decay", weight_decay), ("scoping", scoping)):
    if not is_concrete_number(value):
      raise TypeError(f"{name} must be a Python float for authors_entropy_sgd, got {value!r}.")
    if value < 0:
      raise ValueError(f"{name} must be >= 0, got {value} (the codes skip a negative {name}).")
  if code == "lua" and nesterov and momentum == 0:
    raise ValueError(
      "the Lua code asserts that Nesterov momentum has momentum > 0: pass "
      "momentum > 0 or nesterov=False."
    )
  if not nesterov and (code == "lua" or momentum > 0):
    raise ValueError(
      "nesterov=False is not reproduced: both codes then set the Langevin step to the "
      "momentum buffer itself (dw = mdw) and add the coupling and the noise to it in place, so "
      "they accumulate in the buffer (heavy-ball on the whole drift; with momentum 0 the Lua "
      "code even drops the gradient). Their scripts always use nesterov=True; "
      "entropy_sgd(..., langevin_momentum=m, langevin_nesterov=False) is the library's heavy-ball."
    )


def authors_entropy_sgd(
  learning_rate: float | optax.Schedule,
  *,
  code: Code,
  num_langevin_steps: int = 20,
  gamma: float = 1e-4,
  scoping: float = 1e-3,
  noise: float = 1e-4,
  langevin_lr: float = 0.1,
  momentum: float = 0.9,
  nesterov: bool = True,
  weight_decay: float = 0.0,
  key: jax.Array | int = 0,
) -> optax.GradientTransformationExtraArgs:
  r"""Entropy-SGD exactly as the authors' Lua code (``code="lua"``) or PyTorch port ("pytorch").

  Each argument means what the code's option means (``train.lua``'s ``--gamma``,
  ``--scoping``, ``--noise``, ``--L2``; the port's ``g0``, ``g1``, ``eps``, ``weight_decay``).
  Both codes, per outer step, starting from x' = μ = x and a zeroed inner buffer b::

    g  = ∇f(x'; batch k) [+ wd x' : port]
    b  = momentum b + g;  g = g + momentum b                        (Nesterov)
    x' = x' - langevin_lr (g - gamma_t (x - x') [+ wd x' : Lua]) + noise sqrt(2 langevin_lr) N(0,I)
    μ = 0.75 μ + 0.25 x'

  then, with ``lr`` the outer learning rate:

  - **Lua** (``entropyoptim.lua``, which ran the paper): x ← x - lr (x - μ). The code's outer
    momentum and weight decay are computed and then multiplied by 0 ("kill the original
    gradient"). gamma_t = γ (1 + scoping)^t with t incremented *before* use, so the first
    update already uses γ (1 + scoping).
  - **PyTorch port** (``python/optim.py``): d = x - μ + wd x; B = momentum B + d;
    x ← x - lr (d + momentum B), the buffer B starting as a copy of the first gradient (the
    ``grads`` of the first update), never zeroed. Its step counter never advances, so
    gamma_t = γ: ``scoping`` has no effect, as in the port.

  Compared with the paper's Alg. 1 both codes put weight 0.25 (not 0.75) on the newest sample,
  add the noise times sqrt(2), and drop γ from the outer step.

  ``update(grads, state, params, *, grad_fn)`` has :func:`~entropy_optax.local_entropy`'s contract:
  ``grads`` is ∇f(x) on the mini-batch of the first Langevin step (both codes spend one more
  gradient at x on a separate mini-batch, for logging and, in the port, to seed the outer buffer;
  this factory does not), and ``grad_fn(x_prime, k)`` gives the gradient on mini-batch k.

  Args:
    learning_rate: the outer learning rate (``train.lua``'s per-epoch ``learningRate``), a float
      or an optax schedule of the outer step count.
    code: "lua" or "pytorch".
    num_langevin_steps: L >= 1.
    gamma: the scope at t = 0 (``--gamma`` / ``g0``), > 0.
    scoping: γ grows as γ (1 + scoping)^t (``--scoping`` / ``g1``; the port ignores it).
    noise: ε (``--noise`` / ``eps``), as the codes apply it: noise sqrt(2 langevin_lr) per
      Langevin step, drawn with ``jax.random.normal`` as the codes draw Gaussians.
    langevin_lr: the Langevin step size (``lclr`` / ``langevin['lr']``, 0.1 in both codes).
    momentum: the momentum of the Langevin loop (both) and of the outer step (port only).
    nesterov: must be True (both scripts use it); False raises a ValueError (see below).
    weight_decay: ``--L2`` / ``weight_decay``: inside the chain (Lua: after the momentum, with
      the coupling; port: on the raw gradient) and, in the port only, on the outer gradient.
    key: PRNG key or seed of the Langevin noise.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Raises:
    ValueError: for ``nesterov=False``, which both codes implement by aliasing the momentum
      buffer (``dw = mdw``) so that the coupling and the noise accumulate in it; for
      ``momentum=0`` with Nesterov in Lua (the code asserts); for ``num_langevin_steps < 1``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, entropy_optax
    >>> loss = lambda p: jnp.sum((p - 1.0) ** 2)
    >>> tx = entropy_optax.authors_entropy_sgd(1.0, code="lua", num_langevin_steps=5,
    ...                                        gamma=0.1, noise=0.0)
    >>> params = jnp.zeros(2); state = tx.init(params)
    >>> grads = jax.grad(loss)(params)
    >>> updates, state = tx.update(grads, state, params, grad_fn=lambda p, k: jax.grad(loss)(p))
    >>> x = optax.apply_updates(params, updates)  # lr 1: x moves to mu
    >>> print(round(float(x[0]), 3))
    0.86

  References:
    Chaudhari et al., "Entropy-SGD: Biasing Gradient Descent Into Wide Valleys", ICLR 2017;
    https://github.com/ucla-vision/entropy-sgd (``entropyoptim.lua``, ``python/optim.py``).
  """
  _check(code, num_langevin_steps, momentum, nesterov, weight_decay, scoping)
  if code == "lua":
    # state.t is incremented before gamma (1 + scoping)^state.t: update t (from 0) uses t + 1.
    scope = exponential_scoping(gamma, scoping) if is_concrete_number(gamma) and gamma > 0 else None
    gamma_t = (lambda count: scope(count + 1)) if scope is not None else gamma
  else:
    gamma_t = gamma  # the port's state['t'] stays 0: gamma (1 + scoping)^0
  langevin = local_entropy(
    num_langevin_steps,
    gamma_t,
    langevin_lr,
    noise * AUTHORS_NOISE_FACTOR,
    AUTHORS_ALPHA,
    langevin_momentum=momentum,
    langevin_nesterov=nesterov,
    weight_decay=weight_decay,
    weight_decay_at="after_momentum" if code == "lua" else "before_momentum",
    key=key,
    noise_distribution="gaussian",
  )
  if code == "lua":
    return optax.chain(langevin, optax.scale_by_learning_rate(learning_rate))
  outer = optax.chain(langevin, optax.add_decayed_weights(weight_decay))
  if momentum > 0:  # the port's `if mom > 0`
    outer = _port_outer_momentum(outer, momentum, nesterov)
  return optax.chain(outer, optax.scale_by_learning_rate(learning_rate))
