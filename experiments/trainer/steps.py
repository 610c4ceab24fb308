"""One training step, one evaluation, the data order: the pure functions the loop jits.

``Task`` holds what a training problem adds to the loop, as hashable functions:

* ``loss_fn(logits, labels)``: the mean training loss (default: cross entropy).
* ``batch_indices(data_key, first_batch, num_batches, num_examples, batch_size)``: the example
  indices of mini-batches ``first_batch ..`` (default: a fresh shuffle of every data pass). A
  language model with truncated BPTT passes one that walks the sequence in order.
* ``init_carry(batch_size)``: a state carried from step to step (e.g. an LSTM's hidden state
  for stateful truncated BPTT), kept in ``LoopState.carry``, vmapped over seeds and
  checkpointed.
  The model is then called as ``model.apply(variables, x, carry=carry, train=...)`` and returns
  ``(logits, new_carry)``. Step 0 (at x) starts from the carried state and its final state is
  carried, as its BatchNorm statistics are kept; Langevin steps k >= 1 start from that final
  state (the one that describes x) and their final states are discarded
  (``experiments/trainer/bptt.py`` states the policy). Evaluation starts from ``init_carry`` and
  carries it through the test batches in order.
* ``carry_reset(step, num_examples, batch_size)``: whether outer step ``step`` starts from
  ``init_carry`` instead of the carried state (the first step of each pass over a text).
* ``clip_norm``: clip every gradient evaluation (step 0's and each Langevin step's) to this
  global norm before the optimizer sees it; 0: none.
* ``before_eval(state, train_x, train_y)``: runs (jitted) before every evaluation and returns
  the state to evaluate, e.g. BatchNorm statistics re-estimated at the final weights.

Logits with a time axis, (batch, time, classes) against labels (batch, time), are scored per
token by ``evaluate``: targets < 0 are padding, and the loss is in nats per scored token.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from entropy_optax import flax as eflax

REPLICA_AXIS = "replica"  # the named vmap axis of a seed's replicas (Parle)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross entropy with integer labels, computed in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()


def shuffled_batch_indices(
  data_key: jax.Array, first_batch: jax.Array, num_batches: int, num_examples: int, batch_size: int
) -> jax.Array:
  """Example indices of mini-batches ``first_batch .. first_batch + num_batches - 1``.

  Mini-batch b is the (b mod n)-th slice of the permutation of data pass b div n, with
  n = num_examples // batch_size (the last incomplete slice of each pass is dropped). Only the
  permutations of the few passes these batches touch are computed.

  Returns:
    int32 array (num_batches, batch_size).
  """
  per_pass = num_examples // batch_size
  num_passes = (num_batches - 1) // per_pass + 2  # static bound on the passes touched
  first_pass = first_batch // per_pass
  passes = first_pass + jnp.arange(num_passes)
  perms = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(data_key, e), num_examples))(
    passes
  )
  perms = perms[:, : per_pass * batch_size].reshape(num_passes, per_pass, batch_size)
  b = first_batch + jnp.arange(num_batches)
  return perms[b // per_pass - first_pass, b % per_pass].astype(jnp.int32)


def replacement_batch_indices(
  data_key: jax.Array, first_batch: jax.Array, num_batches: int, num_examples: int, batch_size: int
) -> jax.Array:
  """Example indices of mini-batches ``first_batch ..``, each drawn uniformly with replacement.

  As the authors' codes draw them (Lua ``torch.Tensor(bs):random(1, N)``, the port's
  ``sampler_t``); mini-batch b depends only on (data_key, b), so a resumed run draws the same.

  Returns:
    int32 array (num_batches, batch_size).
  """
  b = first_batch + jnp.arange(num_batches)
  return jax.vmap(
    lambda i: jax.random.randint(
      jax.random.fold_in(data_key, i), (batch_size,), 0, num_examples, jnp.int32
    )
  )(b)


@dataclasses.dataclass(frozen=True)
class Task:
  """The loss and the extension points of the loop (see the module docstring)."""

  loss_fn: Callable[[jax.Array, jax.Array], jax.Array] = cross_entropy
  batch_indices: Callable[..., jax.Array] = shuffled_batch_indices
  init_carry: Callable[[int], Any] | None = None
  before_eval: Callable[..., Any] | None = None
  carry_reset: Callable[[jax.Array, int, int], jax.Array] | None = None
  clip_norm: float = 0.0


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


class LoopState(eflax.TrainState):
  """``entropy_optax.flax.TrainState`` plus the data order's key and a carried state.

  Attributes:
    data_key: raw uint32 key of the data order (``Task.batch_indices``).
    carry: what ``Task.init_carry`` makes (None without it).
  """

  data_key: jax.Array | None = None
  carry: Any = None


def state_dict(state: LoopState) -> dict[str, Any]:
  """The arrays of a state that a checkpoint holds."""
  return {
    "step": state.step,
    "params": state.params,
    "batch_stats": state.batch_stats,
    "opt_state": state.opt_state,
    "key": state.key,
    "data_key": state.data_key,
    "carry": state.carry,
  }


def init_state(
  model,
  make_tx: Callable[[jax.Array], Any],
  task: Task,
  example_x: jax.Array,
  seed: jax.Array,
  batch_size: int = 1,
  replicas: int = 1,
) -> LoopState:
  """The state of one seed: parameters, optimizer (with this seed's noise key), keys, and the
  carry of ``batch_size`` sequences (with ``Task.init_carry``).

  ``replicas`` > 1 (Parle, data-parallel SGD): that many replicas on a leading axis, built under
  ``jax.vmap(..., axis_name=REPLICA_AXIS)``, with the same initial weights and each its own
  dropout, data-order and noise keys (the seed's keys with the replica index folded in).
  """
  if replicas > 1:
    one = lambda r: _init_one(model, make_tx, task, example_x, seed, batch_size, r)
    return jax.vmap(one, axis_name=REPLICA_AXIS)(jnp.arange(replicas))
  return _init_one(model, make_tx, task, example_x, seed, batch_size, None)


def _init_one(model, make_tx, task, example_x, seed, batch_size, replica) -> LoopState:
  init_key, dropout_key, data_key, noise_key = jax.random.split(jax.random.PRNGKey(seed), 4)
  if replica is not None:
    dropout_key, data_key, noise_key = (
      jax.random.fold_in(k, replica) for k in (dropout_key, data_key, noise_key)
    )
  variables = model.init(
    {"params": init_key, "dropout": init_key},
    example_x,
    train=False,
    **carry_kwargs(task, example_x),
  )
  # The optimizer is built for this seed through its public ``key`` argument: under vmap
  # every seed gets its own Langevin noise.
  tx = make_tx(noise_key)
  state = LoopState.create(
    apply_fn=model.apply,
    params=variables["params"],
    batch_stats=variables.get("batch_stats"),
    tx=tx,
    key=dropout_key,
    data_key=data_key,
    carry=task.init_carry(batch_size) if task.init_carry else None,
  )
  # A strongly typed int32 step: the scan carry keeps one type.
  return state.replace(step=jnp.zeros([], jnp.int32))


def replica_mean(state: LoopState) -> LoopState:
  """The state of the replicas' average x-bar (leading replica axis removed), as Parle is
  evaluated: the average weights, and BatchNorm statistics averaged (re-estimate them at x-bar:
  ``experiments.run.components.make_task`` does for replicas); keys and optimizer state are the
  first replica's."""
  first = jax.tree.map(lambda a: a[0], state)
  mean = lambda tree: jax.tree.map(lambda a: jnp.mean(a, 0).astype(a.dtype), tree)
  return first.replace(params=mean(state.params), batch_stats=mean(state.batch_stats))


def carry_kwargs(task: Task, example_x) -> dict[str, Any]:
  """The model's ``carry`` argument for ``example_x`` (none without ``Task.init_carry``)."""
  return {"carry": task.init_carry(example_x.shape[0])} if task.init_carry else {}


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
  fresh_batches: bool = True,
  reset_carry: jax.Array | bool = False,
) -> tuple[LoopState, dict[str, jax.Array]]:
  """One outer step on the mini-batches ``xs[k], ys[k]`` (leading axis: L, or 1).

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
  if fresh_batches:
    grad_fn = eflax.make_grad_fn(langevin_loss, (xs, ys), key=key, has_aux=True)
  else:
    grad_fn = eflax.make_grad_fn(
      langevin_loss, (xs[0], ys[0]), key=key, has_aux=True, shared_batch=True
    )
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
