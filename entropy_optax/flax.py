"""Flax integration: train Linen and NNX models, BatchNorm and dropout included.

``import entropy_optax.flax`` (needs the ``flax`` extra; ``import entropy_optax`` never imports
flax). Two things stand between a Flax training loop and :func:`~entropy_optax.local_entropy`:

* Linen's ``TrainState.apply_gradients`` does not forward extra arguments to ``tx.update``.
  :class:`~entropy_optax.flax.TrainState` here does (``grad_fn=``), carries optional ``batch_stats``
  and a dropout ``key``, and keeps working with plain optax optimizers (one update per stacked
  mini-batch).
* ``grad_fn(params, k)`` must evaluate the model at the Langevin iterate x' on mini-batch k.
  :func:`~entropy_optax.flax.make_grad_fn` builds it from a functional loss (Linen or plain JAX);
  :func:`~entropy_optax.flax.nnx_grad_fn` builds it from an ``nnx.Module`` by splitting and merging,
  for ``nnx.Optimizer.update(model, grads, grad_fn=...)``, which forwards keyword arguments to
  ``tx.update``. Both take the L mini-batches stacked on axis 0
  (:func:`~entropy_optax.flax.stack_batches` makes them from a data pipeline) and record their
  number as ``grad_fn.num_batches``.
* One training step serves plain optimizers too: ``TrainState.apply_gradients`` and
  :func:`~entropy_optax.flax.nnx_update` give a plain optax optimizer one update per stacked
  mini-batch.

BatchNorm and dropout during the Langevin steps (the library's choice):

* The caller computes the gradient at x on mini-batch 0 with its normal training forward pass,
  and passes it as ``grads``: it is Langevin step 0 (taken at x' = x). The BatchNorm running
  statistics the caller keeps are those of that pass, exactly as in plain SGD training.
* Langevin steps k = 1..L-1 run the model in training mode (BatchNorm normalises with the
  statistics of mini-batch k, dropout is on), but their running-statistics updates are
  discarded. Reasons: no extra forward pass is needed; the statistics describe the weights x
  that the optimizer keeps, not the Langevin samples x' (both of the authors' codes update them
  at every inner pass, and so re-estimate them at x before every evaluation); and the model
  state after a step is a deterministic function of x and batch 0, whatever L is.
  At equal gradient evaluations the running averages then get L times fewer updates and lag
  behind the weights: re-estimate them at x before evaluating,
  :func:`~entropy_optax.flax.reestimate_batch_stats` (Linen) or
  :func:`~entropy_optax.flax.nnx_reestimate_batch_stats` (NNX), as both of the authors' codes do.
* Dropout draws a fresh mask at every Langevin step: step k uses the key
  ``langevin_key(key, k) = fold_in(key, k)`` (NNX: every ``RngKey`` of the model, and of the
  call-time ``rngs`` given to :func:`~entropy_optax.flax.nnx_grad_fn`, is folded with k), so masks
  differ between Langevin steps and from step 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax
from flax.training import train_state

from entropy_optax import _unroll
from entropy_optax._batch_stats import nnx_reestimate_batch_stats, reestimate_batch_stats
from entropy_optax._batches import (
  check_num_batches,
  checked_loss,
  langevin_key,
  num_stacked,
  stack_batches,
  take_batch,
)
from entropy_optax._flax_nnx import (
  GradFn,
  langevin_stats,
  nnx_grad_fn,
  nnx_update,
  takes_grad_fn,
  uses_local_entropy,
)
from entropy_optax._utils import canonical_key

__all__ = (
  "TrainState",
  "check_num_batches",
  "langevin_key",
  "langevin_stats",
  "make_grad_fn",
  "nnx_grad_fn",
  "nnx_reestimate_batch_stats",
  "nnx_update",
  "num_stacked",
  "reestimate_batch_stats",
  "stack_batches",
  "take_batch",
  "takes_grad_fn",
  "uses_local_entropy",
)


def make_grad_fn(
  loss_fn: Callable[..., Any],
  batches: Any,
  *,
  key: jax.Array | None = None,
  has_aux: bool = False,
  shared_batch: bool = False,
) -> GradFn:
  """Builds ``grad_fn(params, k)`` for :func:`~entropy_optax.local_entropy` from a functional loss.

  ``grad_fn(params, k) = grad loss_fn(params, batch_k, langevin_key(key, k))`` (without the
  key argument when ``key`` is None). With ``has_aux``, ``loss_fn`` returns ``(loss, aux)``, as
  a Linen loss returning its ``mutable`` BatchNorm updates does, and ``aux`` is discarded: the
  running statistics of the Langevin steps are not kept (see the module docstring).

  Args:
    loss_fn: ``loss_fn(params, batch, key)``, or ``loss_fn(params, batch)`` if ``key`` is None.
    batches: a pytree whose leaves stack the L mini-batches on axis 0 (step k uses index k),
      or, with ``shared_batch``, one mini-batch used at every step.
    key: the step's dropout key (e.g. ``TrainState.step_key()``), or None for a loss without
      randomness. Step k uses ``fold_in(key, k)``.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
    shared_batch: use the same mini-batch at every Langevin step (fresh dropout masks still).

  Returns:
    ``grad_fn(params, k)``, to pass as ``tx.update(..., grad_fn=grad_fn)`` or
    ``state.apply_gradients(..., grad_fn=grad_fn)``; its ``num_batches`` attribute is the
    number of stacked mini-batches (None with ``shared_batch``).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from entropy_optax.flax import make_grad_fn
    >>> loss_fn = lambda w, batch: jnp.sum((w - batch) ** 2)
    >>> grad_fn = make_grad_fn(loss_fn, jnp.arange(3.0)[:, None])
    >>> print(grad_fn(jnp.zeros(1), 2), grad_fn.num_batches)
    [-4.] 3
  """
  num_batches = None if shared_batch else num_stacked(batches)
  grad = jax.grad(checked_loss(loss_fn, has_aux), has_aux=has_aux)

  def grad_fn(params, k):
    batch = batches if shared_batch else take_batch(batches, k)
    args = (params, batch) if key is None else (params, batch, langevin_key(key, k))
    out = grad(*args)
    return out[0] if has_aux else out

  grad_fn.num_batches = num_batches
  return grad_fn


class TrainState(train_state.TrainState):
  """A Linen TrainState whose ``apply_gradients`` forwards ``grad_fn`` to ``tx.update``.

  A drop-in for ``flax.training.train_state.TrainState`` (subclass it for more fields, as
  with flax's): with a plain optax optimizer and no ``grad_fn`` it behaves the same, and
  with a ``grad_fn`` over L stacked mini-batches it takes one update per mini-batch, so one
  training step serves SGD, Adam and Entropy-SGD. :doc:`/flax` has a whole training loop.

  Attributes:
    step: the number of updates made (with a plain optimizer and L stacked mini-batches, each
      :meth:`apply_gradients` adds L).
    apply_fn: the model's apply function, usually ``model.apply``.
    params: the parameters being trained.
    tx: the optimizer, an optax gradient transformation.
    opt_state: the state of ``tx``.
    batch_stats: the model's ``batch_stats`` collection, or None for a model without BatchNorm.
    key: a raw uint32 PRNG key for dropout (or None); :meth:`step_key` derives the key of the
      current step from it, so the randomness is a function of the state (exact resume).

  Examples:
    >>> import jax, jax.numpy as jnp, entropy_optax
    >>> from entropy_optax.flax import TrainState, make_grad_fn
    >>> loss_fn = lambda params, batch: jnp.sum((params - batch) ** 2)
    >>> batches = jnp.ones((3, 2))  # L = 3 mini-batches, all asking for params = 1
    >>> state = TrainState.create(
    ...     apply_fn=None, params=jnp.zeros(2),
    ...     tx=entropy_optax.entropy_sgd(0.5, num_langevin_steps=3, gamma=1.0))
    >>> for _ in range(30):
    ...   grads = jax.grad(loss_fn)(state.params, batches[0])
    ...   state = state.apply_gradients(grads=grads, grad_fn=make_grad_fn(loss_fn, batches))
    >>> print(int(state.step), state.params.round(2))
    30 [1. 1.]
  """

  batch_stats: Any = None
  key: jax.Array | None = None

  @classmethod
  def create(cls, *, apply_fn, params, tx, batch_stats=None, key=None, **kwargs):
    """Creates a state with ``step=0`` and ``tx.init(params)``.

    Args:
      apply_fn: the model's apply function.
      params: the initial parameters.
      tx: the optimizer.
      batch_stats: the model's ``batch_stats`` collection (None: no BatchNorm).
      key: the dropout PRNG key, or an int seed (None: no dropout).
      **kwargs: further fields of a subclass.

    Returns:
      The new :class:`TrainState`.
    """
    return super().create(
      apply_fn=apply_fn,
      params=params,
      tx=tx,
      batch_stats=batch_stats,
      key=None if key is None else canonical_key(key),
      **kwargs,
    )

  @property
  def variables(self) -> dict[str, Any]:
    """``{'params': ..., 'batch_stats': ...}`` (no batch_stats entry if None), for apply_fn."""
    if self.batch_stats is None:
      return {"params": self.params}
    return {"params": self.params, "batch_stats": self.batch_stats}

  def step_key(self) -> jax.Array:
    """The dropout key of the current step, ``fold_in(key, step)``.

    Returns:
      A PRNG key; a ValueError if the state has no ``key``.
    """
    if self.key is None:
      raise ValueError("This TrainState has no key: TrainState.create(..., key=seed).")
    return jax.random.fold_in(self.key, self.step)

  def _update(self, grads: Any, tx_kwargs: Mapping[str, Any]) -> TrainState:
    """One ``tx.update`` and ``step + 1`` (flax's ``apply_gradients``, with ``tx_kwargs``)."""
    tx = optax.with_extra_args_support(self.tx)
    owg = train_state.OVERWRITE_WITH_GRADIENT
    if isinstance(grads, Mapping) and owg in grads:
      grads_with_opt, params_with_opt = grads["params"], self.params["params"]
    else:
      grads_with_opt, params_with_opt = grads, self.params
    updates, new_opt_state = tx.update(grads_with_opt, self.opt_state, params_with_opt, **tx_kwargs)
    new_params = optax.apply_updates(params_with_opt, updates)
    if isinstance(grads, Mapping) and owg in grads:
      new_params = {"params": new_params, owg: grads[owg]}
    return self.replace(step=self.step + 1, params=new_params, opt_state=new_opt_state)

  def apply_gradients(
    self,
    *,
    grads: Any,
    grad_fn: GradFn | None = None,
    extra_args: Mapping[str, Any] | None = None,
    **kwargs,
  ) -> TrainState:
    """One training step: ``tx.update(grads, opt_state, params, grad_fn=grad_fn)``.

    With a plain optax optimizer (no :func:`~entropy_optax.local_entropy` or
    :func:`~entropy_optax.gaussian_smoothing` in ``tx``: those get ``grad_fn`` and make one
    update) and a ``grad_fn`` over L stacked mini-batches, it takes L updates: ``grads`` (mini-batch
    0), then ``grad_fn(params, k)`` at the new params for k = 1..L-1, so no mini-batch is wasted and
    an epoch has as many updates as with unstacked batches. ``batch_stats`` and other fields
    passed here are set once (those of the caller's pass on mini-batch 0).

    Args:
      grads: the gradient at ``params`` (for :func:`~entropy_optax.local_entropy`: on mini-batch 0,
        from the caller's training forward pass; it is Langevin step 0).
      grad_fn: ``grad_fn(params, k)`` for Langevin steps k >= 1 (see
        :func:`~entropy_optax.flax.make_grad_fn`); required by :func:`~entropy_optax.local_entropy`.
      extra_args: further keyword arguments for ``tx.update``.
      **kwargs: fields to replace, as in the base class (e.g. ``batch_stats=...``).

    Returns:
      The new state, ``step`` incremented by the number of updates.
    """
    unknown = set(kwargs) - set(self.__dataclass_fields__)
    if unknown:
      raise TypeError(
        f"apply_gradients got {sorted(unknown)}, which are not TrainState fields "
        f"({sorted(self.__dataclass_fields__)}); pass arguments for tx.update as "
        "grad_fn=... or extra_args={...}."
      )
    tx_kwargs = dict(extra_args or {})
    num_batches = getattr(grad_fn, "num_batches", None) or 1
    if grad_fn is None or takes_grad_fn(self.opt_state):
      if grad_fn is not None:
        tx_kwargs["grad_fn"] = grad_fn
      return self._update(grads, tx_kwargs).replace(**kwargs)
    state = self._update(grads, tx_kwargs)
    if num_batches > 1:
      # Unrolled where the chain would be (conv nets on XLA:CPU), rolled elsewhere.
      unroll = _unroll.default_unroll(num_batches - 1, lambda: grad_fn(state.params, 1))
      state = jax.lax.fori_loop(
        1,
        num_batches,
        lambda k, s: s._update(grad_fn(s.params, k), tx_kwargs),
        state,
        unroll=unroll,
      )
    return state.replace(**kwargs)
