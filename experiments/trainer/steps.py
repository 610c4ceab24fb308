"""One training step and one evaluation: the pure functions the loop jits.

The loop's extension points (loss, data order, carried state, gradient clipping, a hook before
evaluation) are the fields of ``tasks.Task``; the state they step is ``loop_state.LoopState``.
Logits with a time axis, (batch, time, classes) against labels (batch, time), are scored per
token by ``evaluate``: targets < 0 are padding, and the loss is in nats per scored token.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from entropy_optax import flax as eflax
from experiments.trainer.loop_state import LoopState
from experiments.trainer.tasks import Task


def clip_by_global_norm(grads: Any, max_norm: float) -> Any:
  """``grads`` scaled by min(1, max_norm / |grads|) (unchanged when max_norm is 0).

  Examples:
    >>> import jax.numpy as jnp
    >>> from experiments.trainer.steps import clip_by_global_norm
    >>> clip_by_global_norm({"a": jnp.array([3.0]), "b": jnp.array([4.0])}, 1.0)["b"].tolist()
    [0.8...]
  """
  if not max_norm:
    return grads
  norm = optax.tree.norm(grads)
  scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, jnp.finfo(jnp.float32).tiny))
  return jax.tree.map(lambda g: (g * scale).astype(g.dtype), grads)


def _forward(state: LoopState, params, x, key, train: bool, carry=None):
  """Logits, new batch_stats (or None) and new carry (or None) of the model."""
  variables = {"params": params}
  kwargs: dict[str, Any] = {} if carry is None else {"carry": carry}
  if train:
    kwargs["rngs"] = {"dropout": key}
  if state.batch_stats is not None:
    variables["batch_stats"] = state.batch_stats
    if train:
      out, updates = state.apply_fn(variables, x, train=True, mutable=["batch_stats"], **kwargs)
      logits, new_carry = out if carry is not None else (out, None)
      return logits, updates["batch_stats"], new_carry
  out = state.apply_fn(variables, x, train=train, **kwargs)
  logits, new_carry = out if carry is not None else (out, None)
  return logits, state.batch_stats if not train else None, new_carry


def has_langevin_stats(opt_state: Any) -> bool:
  return bool(optax.tree.get_all_with_path(opt_state, "langevin_stats"))


def has_elastic_stats(opt_state: Any) -> bool:
  return bool(optax.tree.get_all_with_path(opt_state, "elastic_stats"))


def train_step(
  state: LoopState,
  xs: jax.Array,
  ys: jax.Array,
  *,
  task: Task = Task(),
  reset_carry: jax.Array | bool = False,
) -> tuple[LoopState, dict[str, jax.Array]]:
  """One outer step on the L mini-batches ``xs[k], ys[k]`` (leading axis: L).

  The gradient at x on mini-batch 0 (the training forward pass, whose BatchNorm statistics and
  final carry are kept) is Langevin step 0; ``grad_fn`` serves steps 1..L-1
  (``entropy_optax.flax``) and starts them from the carry step 0 ends with. With
  ``reset_carry`` step 0 starts from ``task.init_carry`` instead of ``state.carry``. Every
  gradient evaluation is clipped to ``task.clip_norm``.

  Returns:
    ``(state, metrics)``: metrics has the train loss at x and, for a local-entropy optimizer,
    the fields of ``LangevinStats``; with replicas coupled (``entropy_optax.ElasticStats``),
    ``elastic_rho`` and ``replica_spread``.
  """
  key = state.step_key()
  carry = state.carry
  if carry is not None and task.init_carry is not None:
    fresh = task.init_carry(xs.shape[1])
    carry = jax.tree.map(lambda c, z: jnp.where(reset_carry, z.astype(c.dtype), c), carry, fresh)

  def loss(params, batch, k, start):
    logits, batch_stats, final = _forward(state, params, batch[0], k, True, start)
    return task.loss_fn(logits, batch[1]), (batch_stats, final)

  (value, (batch_stats, carry)), grads = jax.value_and_grad(loss, has_aux=True)(
    state.params, (xs[0], ys[0]), key, carry
  )
  grads = clip_by_global_norm(grads, task.clip_norm)
  langevin_loss = lambda params, batch, k: loss(params, batch, k, carry)  # noqa: E731
  grad_fn = eflax.make_grad_fn(langevin_loss, (xs, ys), key=key, has_aux=True)
  if task.clip_norm:
    grad_fn = _clipped(grad_fn, task.clip_norm)
  state = state.apply_gradients(grads=grads, grad_fn=grad_fn, batch_stats=batch_stats, carry=carry)
  metrics = {"train_loss": value.astype(jnp.float32)}
  if has_langevin_stats(state.opt_state):
    metrics.update(optax.tree.get(state.opt_state, "langevin_stats")._asdict())
  if has_elastic_stats(state.opt_state):  # Parle's coupling, data-parallel replicas
    elastic = optax.tree.get(state.opt_state, "elastic_stats")
    metrics.update(elastic_rho=elastic.elastic_rho, replica_spread=elastic.replica_spread)
  return state, metrics


def _clipped(grad_fn, max_norm: float):
  """``grad_fn`` whose every gradient is clipped to ``max_norm`` (keeps ``num_batches``)."""

  def clipped(params, k):
    return clip_by_global_norm(grad_fn(params, k), max_norm)

  clipped.num_batches = grad_fn.num_batches
  return clipped


def evaluate(
  state: LoopState,
  x: jax.Array,
  y: jax.Array,
  weights: jax.Array,
  batch_size: int,
  task: Task = Task(),
  shard: Callable[[jax.Array], jax.Array] = lambda a: a,
) -> dict[str, jax.Array]:
  """Loss and error of the model in evaluation mode (running statistics, no dropout).

  ``x``, ``y`` are padded to a multiple of ``batch_size``; ``weights`` is 1 on real examples;
  ``shard`` places each input batch (data parallelism). For a language model (``y`` of shape
  (examples, time)) the loss and error are per scored token (targets >= 0), and ``val_bits``
  and ``val_perplexity`` = exp(``val_loss``) come with them.
  """
  num_batches = x.shape[0] // batch_size
  carry0 = task.init_carry(batch_size) if task.init_carry else None

  def scores(logits, yb, wb):
    """Sums of loss and error, and the number of scored examples (or tokens)."""
    if logits.ndim == 3:  # (batch, time, classes): per token, targets < 0 not scored
      mask = (yb >= 0) & (wb[:, None] > 0)
      nll = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(yb, 0))
      wrong = jnp.argmax(logits, -1) != yb
      return (jnp.sum(jnp.where(mask, nll, 0.0)), jnp.sum(mask & wrong), jnp.sum(mask))
    losses = jax.vmap(task.loss_fn)(logits[:, None], yb[:, None])
    errors = (jnp.argmax(logits, -1) != yb).astype(jnp.float32)
    return jnp.sum(wb * losses), jnp.sum(wb * errors), jnp.sum(wb)

  def body(carry, i):
    sums, model_carry = carry
    xb, yb, wb = (
      jax.lax.dynamic_slice_in_dim(a, i * batch_size, batch_size) for a in (x, y, weights)
    )
    logits, _, model_carry = _forward(state, state.params, shard(xb), None, False, model_carry)
    new = scores(logits.astype(jnp.float32), yb, wb)
    return (tuple(a + b.astype(jnp.float32) for a, b in zip(sums, new)), model_carry), None

  zero = jnp.zeros([], jnp.float32)
  ((loss_sum, error_sum, total), _), _ = jax.lax.scan(
    body, ((zero, zero, zero), carry0), jnp.arange(num_batches)
  )
  metrics = {"val_loss": loss_sum / total, "val_error": error_sum / total}
  if y.ndim == 2:  # a language model: the loss is nats per token
    metrics["val_bits"] = metrics["val_loss"] / math.log(2.0)
    metrics["val_perplexity"] = jnp.exp(metrics["val_loss"])
  return metrics
