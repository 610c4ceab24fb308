"""Gradient accumulation for local entropy: ``optax.MultiSteps`` that runs the chain once."""

from typing import Any

import jax.numpy as jnp
import optax


class MultiSteps(optax.MultiSteps):
  """``optax.MultiSteps`` that runs the Langevin chain only at the micro-step that emits.

  What accumulation means for local entropy: the k micro-batch gradients, all taken at the same
  x, average to ∇f(x) on the k-times larger batch, which is Langevin step 0 (taken at
  x' = x); the chain's steps 1..L-1 then call ``grad_fn`` once each, at the micro-step that
  emits the update. One emitted update costs the caller's k micro-batch gradients plus L - 1
  ``grad_fn`` calls (for Langevin steps on k micro-batches too, let ``grad_fn`` average over
  them). Under a plain ``optax.MultiSteps`` the result is the same, but the chain runs (and is
  thrown away) at every micro-step: k (L - 1) calls. This class passes the inner update
  ``run_langevin=`` (True at the emitting micro-step), which :func:`~entropy_optax.local_entropy`
  skips its chain on (under ``lax.cond``); any other member of the inner chain ignores it.

  Args:
    opt: the inner optimizer, e.g. :func:`~entropy_optax.entropy_sgd`; a chain whose first
      member is :func:`~entropy_optax.local_entropy` skips its chain on the micro-steps that do
      not emit.
    every_k_schedule: k, the micro-steps per emitted update: an int or a schedule of the
      emitted-update count, as ``optax.MultiSteps`` takes.
    **kwargs: the other arguments of ``optax.MultiSteps`` (``use_grad_mean``,
      ``should_skip_update_fn``).

  Its methods are those of ``optax.MultiSteps``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, entropy_optax
    >>> tx = entropy_optax.MultiSteps(entropy_optax.entropy_sgd(0.1, num_langevin_steps=3), 4)
    >>> params = jnp.ones(2); state = tx.init(params)
    >>> grad_fn = lambda p, k: 2 * p
    >>> for _ in range(4):
    ...   updates, state = tx.update(grad_fn(params, 0), state, params, grad_fn=grad_fn)
    >>> print(bool(tx.has_updated(state)), bool(jnp.all(updates < 0)))
    True True
  """

  def __init__(
    self, opt: optax.GradientTransformation, every_k_schedule: int | optax.Schedule, **kwargs: Any
  ):
    super().__init__(opt, every_k_schedule, **kwargs)
    self._langevin_k_schedule = (
      every_k_schedule if callable(every_k_schedule) else lambda step: every_k_schedule
    )

  def update(
    self,
    updates: optax.Updates,
    state: optax.MultiStepsState,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[optax.Updates, optax.MultiStepsState]:
    """``optax.MultiSteps.update``, telling the inner update whether this micro-step emits."""
    emits = state.mini_step == self._langevin_k_schedule(state.gradient_step) - 1
    return super().update(updates, state, params, run_langevin=jnp.asarray(emits), **extra_args)
