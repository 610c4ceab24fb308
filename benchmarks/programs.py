"""The two programs every benchmark compares, and the object that runs one.

* ``entropy_step`` (`build_entropy_step`): one Entropy-SGD update, exactly as a user writes it
  (value_and_grad at x, ``tx.update(grads, ..., grad_fn=...)``, ``optax.apply_updates``), jitted
  with donation;
* ``sgd_steps`` (`build_sgd_steps`): L plain SGD steps (same outer optimizer: Nesterov momentum
  0.9) over the same L mini-batches, a ``lax.scan`` with the same unrolling, jitted with donation.

Both cost L gradient evaluations, so their time ratio is the overhead of the Langevin chain.
Also here: the optimizers of both sides, the unrolling policy (the core's documented default,
so that the baseline unrolls alike) and `Runner`, which compiles a program once and calls it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

import entropy_optax
from benchmarks.workloads import ModelSpec


def entropy_tx(
  num_steps: int,
  *,
  noise: float = 1e-4,
  noise_distribution: str = "irwin_hall",
  unroll: int | None = None,
  key: int = 0,
) -> optax.GradientTransformation:
  """The paper's Entropy-SGD (Nesterov 0.9 outside; gamma 0.03, eta' 0.1, alpha 0.75)."""
  return entropy_optax.entropy_sgd(
    1.0,
    num_langevin_steps=num_steps,
    gamma=entropy_optax.exponential_scoping(0.03, 1e-3),
    langevin_lr=0.1,
    noise=noise,
    alpha=0.75,
    momentum=0.9,
    nesterov=True,
    noise_distribution=noise_distribution,
    unroll=unroll,
    key=key,
  )


def sgd_tx() -> optax.GradientTransformation:
  return optax.sgd(0.1, momentum=0.9, nesterov=True)


# The core's documented default (README, "Unrolling"): on CPU the chain of a model with
# convolutions is unrolled, up to this many steps; everywhere else it is a rolled loop.
CORE_CPU_UNROLL_CAP = 32


def resolve_unroll(unroll: str, num_steps: int) -> int | None:
  """'auto' (the core's default: None), 'full', 'rolled' or an int -> the scan's unroll."""
  if unroll == "auto":
    return None  # the core decides (full on CPU for conv nets, rolled otherwise)
  if unroll == "full":
    return max(num_steps, 1)
  if unroll == "rolled":
    return 1
  return int(unroll)


def core_default_unroll(spec: ModelSpec, num_steps: int) -> int:
  """The unrolling the core picks by default for this model, so that a baseline can match it.

  Follows the rule the README documents, from what the benchmark knows of its model; the core
  detects convolutions from ``grad_fn`` itself, through no public function.
  """
  if jax.default_backend() == "cpu" and spec.convolves:
    return min(max(num_steps, 1), CORE_CPU_UNROLL_CAP)
  return 1


def baseline_unroll(unroll: str, spec: ModelSpec, num_steps: int) -> int:
  """The SGD baseline's unroll for the Entropy-SGD setting ``unroll``: the same as the core's."""
  resolved = resolve_unroll(unroll, num_steps)
  return core_default_unroll(spec, num_steps) if resolved is None else resolved


def build_entropy_step(
  loss_fn: Callable, tx: optax.GradientTransformation, jit: bool = True
) -> Callable:
  """One Entropy-SGD update as a user writes it; batches has a leading axis L.

  (params, batch_stats, opt_state, key, batches) -> (params, batch_stats, opt_state, key, loss).
  BatchNorm statistics and the loss come from the evaluation at x (mini-batch 0); the chain's
  own forward passes (k >= 1) discard theirs.
  """

  def step(params, batch_stats, opt_state, key, batches):
    key, step_key = jax.random.split(key)
    batch = lambda k: jax.tree.map(lambda b: b[k], batches)
    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      params, batch_stats, batch(0), step_key
    )

    def grad_fn(p, k):
      return jax.grad(
        lambda q: loss_fn(q, batch_stats, batch(k), jax.random.fold_in(step_key, k))[0]
      )(p)

    updates, opt_state = tx.update(grads, opt_state, params, grad_fn=grad_fn)
    return optax.apply_updates(params, updates), new_stats, opt_state, key, loss

  return jax.jit(step, donate_argnums=(0, 1, 2, 3)) if jit else step


def build_sgd_steps(loss_fn: Callable, tx: optax.GradientTransformation, unroll: int) -> Callable:
  """L plain SGD steps over the L batches (one each), in one jitted ``lax.scan``.

  ``unroll``: the scan's unrolling; `baseline_unroll` gives the one that matches an
  Entropy-SGD step's, so that both sides of a comparison unroll alike.
  """

  def step(params, batch_stats, opt_state, key, batches):
    key, step_key = jax.random.split(key)

    def sgd_step(carry, inputs):
      params, batch_stats, opt_state = carry
      k, batch = inputs
      (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch_stats, batch, jax.random.fold_in(step_key, k)
      )
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

    num_steps = jax.tree.leaves(batches)[0].shape[0]
    (params, batch_stats, opt_state), losses = jax.lax.scan(
      sgd_step,
      (params, batch_stats, opt_state),
      (jnp.arange(num_steps, dtype=jnp.int32), batches),
      unroll=unroll,
    )
    return params, batch_stats, opt_state, key, losses[0]

  return jax.jit(step, donate_argnums=(0, 1, 2, 3))


class Runner:
  """Holds a (donated) training state and advances it by one call to ``fn`` per ``__call__``."""

  def __init__(
    self,
    fn: Callable,
    params,
    batch_stats,
    opt_state,
    batches,
    seed: int = 0,
    key: jax.Array | None = None,
  ):
    # Each runner owns the buffers it donates (an fp32 optimizer state may alias params).
    copy = lambda t: jax.tree.map(jnp.copy, t)
    self.fn = fn
    self.state = (
      copy(params),
      copy(batch_stats),
      copy(opt_state),
      jax.random.key(seed)
      if key is None
      else jax.random.wrap_key_data(jnp.copy(jax.random.key_data(key))),
    )
    self.batches = batches
    self.compile_s = None
    self.compiled = None

  def compile(self, compiler_options: dict[str, Any] | None = None) -> float:
    """Compiles once (timed); calls then run this executable, never a re-trace."""
    start = time.perf_counter()
    self.compiled = self.fn.lower(*self.state, self.batches).compile(compiler_options)
    self.compile_s = time.perf_counter() - start
    return self.compile_s

  def __call__(self):
    if self.compiled is None:
      self.compile()
    *state, loss = self.compiled(*self.state, self.batches)
    self.state = tuple(state)
    jax.block_until_ready((self.state, loss))
    return loss


# XLA:CPU's default scheduler runs independent work concurrently at the price of memory: with a
# fully unrolled chain (the core's CPU default for conv nets) it keeps buffers of many Langevin
# steps alive at once. Compiling with this option orders for memory instead (per executable,
# no XLA_FLAGS needed): LeNet-BN, batch 128, L = 20: 1195x -> 64x the parameter bytes extra.
CPU_MEMORY_SCHEDULER = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
