"""NNX side of ``entropy_optax.flax``: nnx_grad_fn, nnx_update and reading the state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.errors
import jax
import optax
from flax import nnx

from entropy_optax._batches import checked_loss, langevin_key, num_stacked, take_batch

GradFn = Callable[[Any, jax.Array], Any]

_TRACE_HELP = (
  "loss_fn changed an NNX object that lives outside the Langevin step (the chain runs inside "
  "a jax.lax.scan, a deeper trace level): an nnx.Rngs passed at call time, e.g. "
  "self.dropout(x, rngs=rngs), or a module other than `model` that loss_fn closes over. "
  "Pass call-time RNGs to the builder, nnx_grad_fn(model, loss_fn, batches, rngs=rngs), with "
  "loss_fn(model, batch, rngs): each step then gets its own copy, keys folded with k. Any "
  "other module loss_fn uses must be an attribute of `model`."
)


def _pure_state(opt_state: Any) -> Any:
  """An optimizer state with NNX Variables (OptArray, OptVariable) replaced by their arrays."""
  if isinstance(opt_state, nnx.Optimizer):
    opt_state = opt_state.opt_state
  return nnx.as_pure(opt_state)


def uses_local_entropy(opt_state: Any) -> bool:
  """Whether an optimizer state (optax, Linen or NNX) holds a local-entropy state.

  Args:
    opt_state: an optax state, a Linen ``TrainState.opt_state``, an ``nnx.Optimizer`` or its
      ``opt_state``.

  Returns:
    True if a :class:`~entropy_optax.LocalEntropyState` is in it (a chain that starts with
    :func:`~entropy_optax.local_entropy`, :func:`~entropy_optax.entropy_sgd`, ...).

  Examples:
    >>> import jax.numpy as jnp, optax, entropy_optax
    >>> from entropy_optax.flax import uses_local_entropy
    >>> params = jnp.ones(3)
    >>> uses_local_entropy(entropy_optax.entropy_adam(0.1, num_langevin_steps=2).init(params))
    True
    >>> uses_local_entropy(optax.adam(0.1).init(params))
    False
  """
  return optax.tree.get(_pure_state(opt_state), "langevin_stats") is not None


def takes_grad_fn(opt_state: Any) -> bool:
  """Whether an optimizer state belongs to a transformation that takes ``grad_fn``.

  Those make one update per L mini-batches: :func:`~entropy_optax.local_entropy` (and so
  :func:`~entropy_optax.entropy_sgd`, :func:`~entropy_optax.entropy_adam`) and
  :func:`~entropy_optax.gaussian_smoothing`. A plain optimizer instead gets one update per
  mini-batch from :meth:`TrainState.apply_gradients <entropy_optax.flax.TrainState.apply_gradients>`
  and :func:`~entropy_optax.flax.nnx_update`.

  Args:
    opt_state: an optax state, a Linen ``TrainState.opt_state``, an ``nnx.Optimizer`` or its
      ``opt_state``.

  Returns:
    True for a state of a transformation that takes ``grad_fn``.

  Examples:
    >>> import jax.numpy as jnp, optax, entropy_optax
    >>> from entropy_optax.flax import takes_grad_fn
    >>> params = jnp.ones(3)
    >>> takes_grad_fn(entropy_optax.entropy_sgd(0.1, num_langevin_steps=2).init(params))
    True
    >>> takes_grad_fn(optax.chain(entropy_optax.gaussian_smoothing(2, 0.1), optax.sgd(0.1))
    ...               .init(params))
    True
    >>> takes_grad_fn(optax.sgd(0.1).init(params))
    False
  """
  pure = _pure_state(opt_state)
  return uses_local_entropy(pure) or optax.tree.get(pure, "smoothing_key") is not None


def langevin_stats(opt_state: Any) -> Any:
  """The diagnostics of the last update, as plain arrays, from any optimizer state.

  They are a :class:`~entropy_optax.LangevinStats`.

  Args:
    opt_state: the state to read: an optax state, a Linen ``TrainState.opt_state``, an
      ``nnx.Optimizer`` or its ``opt_state`` (whose ``OptArray`` variables are read without the
      ``.value`` warning). It must hold a :func:`~entropy_optax.local_entropy` state (else a
      ValueError).

  Returns:
    ``LangevinStats(langevin_gamma, grad_norm, entropy_grad_norm, cosine, mean_distance)``,
    float32 scalars (zeros before the first update).

  Examples:
    >>> import jax.numpy as jnp, entropy_optax
    >>> from entropy_optax.flax import langevin_stats
    >>> tx = entropy_optax.entropy_sgd(0.1, num_langevin_steps=2)
    >>> float(langevin_stats(tx.init(jnp.ones(3))).grad_norm)  # zeros before the first update
    0.0
  """
  stats = optax.tree.get(_pure_state(opt_state), "langevin_stats")
  if stats is None:
    raise ValueError(
      "this optimizer state holds no local_entropy state (a plain optax optimizer?): "
      "diagnostics exist for entropy_sgd, entropy_adam and chains starting with local_entropy."
    )
  return stats


def nnx_grad_fn(
  model: nnx.Module,
  loss_fn: Callable[..., Any],
  batches: Any,
  *,
  rngs: nnx.Rngs | None = None,
  wrt: Any = nnx.Param,
  has_aux: bool = False,
  shared_batch: bool = False,
) -> GradFn:
  """Builds ``grad_fn(params, k)`` from an ``nnx.Module`` and ``loss_fn(model, batch[, rngs])``.

  For ``nnx.Optimizer(model, tx, wrt=wrt).update(model, grads, grad_fn=grad_fn)`` (or
  :func:`~entropy_optax.flax.nnx_update`): ``params`` is then the pure ``nnx.State`` of the ``wrt``
  variables. Step k evaluates ``loss_fn`` on a copy of ``model`` (``nnx.merge`` of the graph,
  ``params`` and the model's other state as it is when :func:`~entropy_optax.flax.nnx_grad_fn` is
  called) on mini-batch k, with every ``RngKey`` of the copy, and of the copy of ``rngs``, folded
  with k, so dropout draws a fresh mask at each step. The copies' mutations (BatchNorm running
  statistics, RNG counts) are
  discarded: the model and ``rngs`` are changed only by the caller's own forward pass at x.
  The model's mode (``model.train()``, ``nnx.view``) applies.

  Args:
    model: the model (its current state is captured here; call inside ``nnx.jit``).
    loss_fn: ``loss_fn(model, batch)``, or ``loss_fn(model, batch, rngs)`` with ``rngs``,
      returning the loss, or ``(loss, aux)`` with ``has_aux`` (aux is discarded).
    batches: a pytree stacking the L mini-batches on axis 0, or one batch with
      ``shared_batch``.
    rngs: the ``nnx.Rngs`` that the training step passes at call time
      (``self.dropout(x, rngs=rngs)``), or None when the model holds its RNGs.
    wrt: the filter of the differentiated variables; must match ``nnx.Optimizer``'s ``wrt``.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
    shared_batch: use the same mini-batch at every Langevin step.

  Returns:
    ``grad_fn(params, k)`` returning an ``nnx.State`` of gradients shaped like ``params``; its
    ``num_batches`` attribute is the number of stacked mini-batches (None with shared_batch).

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
  num_batches = None if shared_batch else num_stacked(batches)
  # Pure arrays: every nnx.merge below builds fresh Variables, so the copies' mutations never
  # reach ``model`` or ``rngs``.
  graphdef, _, keys, rest = nnx.as_pure(nnx.split(model, wrt, nnx.RngKey, ...))
  if rngs is not None:
    rngs_graphdef, rngs_keys, rngs_rest = nnx.as_pure(nnx.split(rngs, nnx.RngKey, ...))
  loss = checked_loss(loss_fn, has_aux)

  def grad_fn(params, k):
    batch = batches if shared_batch else take_batch(batches, k)
    fold = lambda tree: jax.tree.map(lambda key: langevin_key(key, k), tree)
    keys_k = fold(keys)

    def pure_loss(p):
      model_k = nnx.merge(graphdef, p, keys_k, rest)
      if rngs is None:
        return loss(model_k, batch)
      return loss(model_k, batch, nnx.merge(rngs_graphdef, fold(rngs_keys), rngs_rest))

    try:
      out = jax.grad(pure_loss, has_aux=has_aux)(nnx.as_pure(params))
    except flax.errors.TraceContextError as error:
      raise ValueError(_TRACE_HELP) from error
    return out[0] if has_aux else out

  grad_fn.num_batches = num_batches
  return grad_fn


def nnx_update(
  optimizer: nnx.Optimizer,
  model: nnx.Module,
  grads: Any,
  *,
  grad_fn: GradFn | None = None,
  **kwargs,
) -> None:
  """``optimizer.update`` for one training step that serves SGD, Adam and Entropy-SGD alike.

  With a :func:`~entropy_optax.local_entropy` optimizer (:func:`~entropy_optax.entropy_sgd`,
  :func:`~entropy_optax.entropy_adam`...): one update, ``optimizer.update(model, grads,
  grad_fn=grad_fn)``. With a plain optax optimizer: one update per stacked mini-batch, so the L
  mini-batches of a step are all used (an epoch then has as many updates as with unstacked batches):
  ``grads`` (mini-batch 0), then ``grad_fn(params, k)`` at the new params for k = 1..L-1. BatchNorm
  running statistics are those of the caller's pass on mini-batch 0 (the later mini-batches' are
  discarded, as in the Langevin steps).

  Args:
    optimizer: the ``nnx.Optimizer``.
    model: its model.
    grads: the gradient at the model's parameters on mini-batch 0.
    grad_fn: from :func:`~entropy_optax.flax.nnx_grad_fn` (required by
      :func:`~entropy_optax.local_entropy`).
    **kwargs: further keyword arguments for ``optimizer.update``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> from entropy_optax.flax import nnx_grad_fn, nnx_update
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    >>> loss_fn = lambda model, batch: jnp.mean((model(batch[0]) - batch[1]) ** 2)
    >>> xs, ys = jnp.ones((3, 4, 2)), jnp.zeros((3, 4, 1))
    >>> grads = nnx.grad(loss_fn)(model, (xs[0], ys[0]))
    >>> nnx_update(optimizer, model, grads, grad_fn=nnx_grad_fn(model, loss_fn, (xs, ys)))
    >>> int(optimizer.step[...])  # three SGD updates, one per mini-batch
    3
  """
  if grad_fn is None or takes_grad_fn(optimizer):
    extra = {} if grad_fn is None else {"grad_fn": grad_fn}
    optimizer.update(model, grads, **extra, **kwargs)
    return
  optimizer.update(model, grads, **kwargs)
  for k in range(1, getattr(grad_fn, "num_batches", None) or 1):
    params = nnx.state(model, optimizer.wrt)
    pure_grads = grad_fn(nnx.as_pure(params), k)
    # optimizer.update filters grads by variable type: give the arrays their Variable types.
    typed = jax.tree.map(
      lambda v, g: v.replace(g), params, pure_grads, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )
    optimizer.update(model, typed, **kwargs)
