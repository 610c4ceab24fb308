"""Flax integration: train Linen and NNX models, BatchNorm and dropout included.

``import entropy_optax.flax`` (needs the ``flax`` extra; ``import entropy_optax`` never imports
flax). Two things stand between a Flax training loop and ``local_entropy``:

* Linen's ``TrainState.apply_gradients`` does not forward extra arguments to ``tx.update``.
  ``TrainState`` here does (``grad_fn=``), carries optional ``batch_stats`` and a dropout
  ``key``, and keeps working with plain optax optimizers, which ignore ``grad_fn``.
* ``grad_fn(params, k)`` must evaluate the model at the Langevin iterate x' on mini-batch k.
  ``make_grad_fn`` builds it from a functional loss (Linen or plain JAX); ``nnx_grad_fn``
  builds it from an ``nnx.Module`` by splitting and merging, for ``nnx.Optimizer.update(model,
  grads, grad_fn=...)``, which forwards keyword arguments to ``tx.update``.

BatchNorm and dropout during the Langevin steps (the library's choice):

* The caller computes the gradient at x on mini-batch 0 with its normal training forward pass,
  and passes it as ``grads``: it is Langevin step 0 (taken at x' = x). The BatchNorm running
  statistics the caller keeps are those of that pass, exactly as in plain SGD training.
* Langevin steps k = 1..L-1 run the model in training mode (BatchNorm normalises with the
  statistics of mini-batch k, dropout is on), but their running-statistics updates are
  discarded. Reasons: no extra forward pass is needed; the statistics describe the weights x
  that the optimizer keeps, not the Langevin samples x' (which the authors' code, updating them
  at every inner pass, lets leak into evaluation); and the model state after a step is a
  deterministic function of x and batch 0, whatever L is.
* Dropout draws a fresh mask at every Langevin step: step k uses the key
  ``langevin_key(key, k) = fold_in(key, k)`` (NNX: every ``RngKey`` of the model is folded
  with k), so masks differ between Langevin steps and from step 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flax import nnx
from flax.training import train_state
import jax
import jax.numpy as jnp
import optax

from entropy_optax._utils import canonical_key

__all__ = (
    "TrainState",
    "langevin_key",
    "make_grad_fn",
    "nnx_grad_fn",
    "take_batch",
)

GradFn = Callable[[Any, jax.Array], Any]


def langevin_key(key: jax.Array, k: jax.Array | int) -> jax.Array:
  """The PRNG key of Langevin step ``k`` derived from a step's ``key``: ``fold_in(key, k)``."""
  return jax.random.fold_in(key, k)


def take_batch(batches: Any, k: jax.Array | int) -> Any:
  """Mini-batch ``k`` of ``batches`` (every leaf stacked on a leading axis of length L).

  ``k`` may be traced. An out-of-range ``k`` gives NaN inputs (integer leaves: their minimum
  value) rather than silently repeating the last batch, so a ``tx`` taking more Langevin
  steps than there are mini-batches shows up as a NaN loss.
  """
  return jax.tree.map(lambda b: jnp.take(b, k, axis=0, mode="fill"), batches)


def make_grad_fn(
    loss_fn: Callable[..., Any],
    batches: Any,
    *,
    key: jax.Array | None = None,
    has_aux: bool = False,
    shared_batch: bool = False,
) -> GradFn:
  """Builds ``grad_fn(params, k)`` for ``local_entropy`` from a functional loss.

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
    ``state.apply_gradients(..., grad_fn=grad_fn)``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from entropy_optax.flax import make_grad_fn
    >>> loss_fn = lambda w, batch: jnp.sum((w - batch) ** 2)
    >>> grad_fn = make_grad_fn(loss_fn, jnp.arange(3.0)[:, None])
    >>> print(grad_fn(jnp.zeros(1), 2))
    [-4.]
  """
  grad = jax.grad(loss_fn, has_aux=has_aux)

  def grad_fn(params, k):
    batch = batches if shared_batch else take_batch(batches, k)
    args = (params, batch) if key is None else (params, batch, langevin_key(key, k))
    out = grad(*args)
    return out[0] if has_aux else out

  return grad_fn


class TrainState(train_state.TrainState):
  """A Linen ``TrainState`` whose ``apply_gradients`` forwards ``grad_fn`` to ``tx.update``.

  A drop-in for ``flax.training.train_state.TrainState``: with a plain optax optimizer it
  behaves the same (``grad_fn``, if given, is ignored), so one training loop serves SGD, Adam
  and Entropy-SGD.

  Attributes:
    batch_stats: the model's ``batch_stats`` collection, or None for a model without BatchNorm.
    key: a raw uint32 PRNG key for dropout (or None); ``step_key()`` derives the key of the
      current step from it, so the randomness is a function of the state (exact resume).
  """

  batch_stats: Any = None
  key: jax.Array | None = None

  @classmethod
  def create(cls, *, apply_fn, params, tx, batch_stats=None, key=None, **kwargs):
    """Creates a state with ``step=0`` and ``tx.init(params)``; ``key`` may be an int seed."""
    return super().create(
        apply_fn=apply_fn, params=params, tx=tx, batch_stats=batch_stats,
        key=None if key is None else canonical_key(key), **kwargs)

  @property
  def variables(self) -> dict[str, Any]:
    """``{'params': ..., 'batch_stats': ...}`` (no batch_stats entry if None), for apply_fn."""
    if self.batch_stats is None:
      return {"params": self.params}
    return {"params": self.params, "batch_stats": self.batch_stats}

  def step_key(self) -> jax.Array:
    """The dropout key of the current step, ``fold_in(key, step)``."""
    if self.key is None:
      raise ValueError("This TrainState has no key: TrainState.create(..., key=seed).")
    return jax.random.fold_in(self.key, self.step)

  def apply_gradients(
      self,
      *,
      grads: Any,
      grad_fn: GradFn | None = None,
      extra_args: Mapping[str, Any] | None = None,
      **kwargs,
  ) -> TrainState:
    """One optimizer step: ``tx.update(grads, opt_state, params, grad_fn=grad_fn)``.

    Args:
      grads: the gradient at ``params`` (for ``local_entropy``: on mini-batch 0, from the
        caller's training forward pass; it is Langevin step 0).
      grad_fn: ``grad_fn(params, k)`` for Langevin steps k >= 1 (see ``make_grad_fn``);
        required by ``local_entropy``, ignored by plain optax optimizers.
      extra_args: further keyword arguments for ``tx.update``.
      **kwargs: fields to replace, as in the base class (e.g. ``batch_stats=...``).

    Returns:
      The new state, ``step`` incremented.
    """
    unknown = set(kwargs) - set(self.__dataclass_fields__)
    if unknown:
      raise TypeError(
          f"apply_gradients got {sorted(unknown)}, which are not TrainState fields "
          f"({sorted(self.__dataclass_fields__)}); pass arguments for tx.update as "
          "grad_fn=... or extra_args={...}.")
    tx_kwargs = dict(extra_args or {})
    if grad_fn is not None:
      tx_kwargs["grad_fn"] = grad_fn
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
    return self.replace(step=self.step + 1, params=new_params, opt_state=new_opt_state, **kwargs)


def nnx_grad_fn(
    model: nnx.Module,
    loss_fn: Callable[..., Any],
    batches: Any,
    *,
    wrt: Any = nnx.Param,
    has_aux: bool = False,
    shared_batch: bool = False,
) -> GradFn:
  """Builds ``grad_fn(params, k)`` from an ``nnx.Module`` and ``loss_fn(model, batch)``.

  For ``nnx.Optimizer(model, tx, wrt=wrt).update(model, grads, grad_fn=grad_fn)``: ``params``
  is then the pure ``nnx.State`` of the ``wrt`` variables. Step k evaluates ``loss_fn`` on a
  copy of ``model`` (``nnx.merge`` of the graph, ``params`` and the model's other state as it is
  when ``nnx_grad_fn`` is called) on mini-batch k, with every ``RngKey`` of the copy folded
  with k, so dropout draws a fresh mask at each step. The copy's mutations (BatchNorm running
  statistics, RNG counts) are discarded: the model itself is changed only by the caller's own
  forward pass at x, see the module docstring. The model's mode (``model.train()``) applies.

  Args:
    model: the model (its current state is captured here; call inside ``nnx.jit``).
    loss_fn: ``loss_fn(model, batch)`` returning the loss, or ``(loss, aux)`` with ``has_aux``.
    batches: a pytree stacking the L mini-batches on axis 0, or one batch with
      ``shared_batch``.
    wrt: the filter of the differentiated variables; must match ``nnx.Optimizer``'s ``wrt``.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)`` (aux is discarded).
    shared_batch: use the same mini-batch at every Langevin step.

  Returns:
    ``grad_fn(params, k)`` returning an ``nnx.State`` of gradients shaped like ``params``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> import entropy_optax
    >>> from entropy_optax.flax import nnx_grad_fn
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(model, entropy_optax.entropy_sgd(0.1, num_langevin_steps=3),
    ...     wrt=nnx.Param)
    >>> loss_fn = lambda model, batch: jnp.mean((model(batch[0]) - batch[1]) ** 2)
    >>> xs, ys = jnp.ones((3, 4, 2)), jnp.zeros((3, 4, 1))
    >>> grads = nnx.grad(loss_fn)(model, (xs[0], ys[0]))
    >>> _ = optimizer.update(model, grads, grad_fn=nnx_grad_fn(model, loss_fn, (xs, ys)))
  """
  # Pure arrays: every nnx.merge below builds fresh Variables, so the copies' mutations never
  # reach ``model``.
  graphdef, _, keys, rest = nnx.as_pure(nnx.split(model, wrt, nnx.RngKey, ...))

  def grad_fn(params, k):
    batch = batches if shared_batch else take_batch(batches, k)
    keys_k = jax.tree.map(lambda key: langevin_key(key, k), keys)

    def pure_loss(p):
      return loss_fn(nnx.merge(graphdef, p, keys_k, rest), batch)

    out = jax.grad(pure_loss, has_aux=has_aux)(nnx.as_pure(params))
    return out[0] if has_aux else out

  return grad_fn
