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
  ``(logits, new_carry)``; the carry of Langevin step 0 (at x) is kept, as its BatchNorm
  statistics are. Evaluation starts from ``init_carry`` and carries it through the test batches
  in order.
* ``before_eval(state, train_x, train_y)``: runs (jitted) before every evaluation and returns
  the state to evaluate, e.g. BatchNorm statistics re-estimated at the final weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from entropy_optax import flax as eflax


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
) -> LoopState:
  """The state of one seed: parameters, optimizer (with this seed's noise key), keys, and the
  carry of ``batch_size`` sequences (with ``Task.init_carry``)."""
  init_key, dropout_key, data_key, noise_key = jax.random.split(jax.random.PRNGKey(seed), 4)
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


def train_step(
  state: LoopState, xs: jax.Array, ys: jax.Array, *, task: Task = Task(), fresh_batches: bool = True
) -> tuple[LoopState, dict[str, jax.Array]]:
  """One outer step on the mini-batches ``xs[k], ys[k]`` (leading axis: L, or 1).

  The gradient at x on mini-batch 0 (the training forward pass, whose BatchNorm statistics and
  carry are kept) is Langevin step 0; ``grad_fn`` serves steps 1..L-1 (``entropy_optax.flax``).

  Returns:
    ``(state, metrics)``: metrics has the train loss at x and, for a local-entropy optimizer,
    the fields of ``LangevinStats``.
  """
  key = state.step_key()

  def loss(params, batch, k):
    logits, batch_stats, carry = _forward(state, params, batch[0], k, True, state.carry)
    return task.loss_fn(logits, batch[1]), (batch_stats, carry)

  (value, (batch_stats, carry)), grads = jax.value_and_grad(loss, has_aux=True)(
    state.params, (xs[0], ys[0]), key
  )
  if fresh_batches:
    grad_fn = eflax.make_grad_fn(loss, (xs, ys), key=key, has_aux=True)
  else:
    grad_fn = eflax.make_grad_fn(loss, (xs[0], ys[0]), key=key, has_aux=True, shared_batch=True)
  state = state.apply_gradients(grads=grads, grad_fn=grad_fn, batch_stats=batch_stats, carry=carry)
  metrics = {"train_loss": value.astype(jnp.float32)}
  if has_langevin_stats(state.opt_state):
    metrics.update(optax.tree.get(state.opt_state, "langevin_stats")._asdict())
  return state, metrics


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
  ``shard`` places each input batch (data parallelism).
  """
  num_batches = x.shape[0] // batch_size
  carry0 = task.init_carry(batch_size) if task.init_carry else None

  def body(carry, i):
    sums, model_carry = carry
    xb, yb, wb = (
      jax.lax.dynamic_slice_in_dim(a, i * batch_size, batch_size) for a in (x, y, weights)
    )
    logits, _, model_carry = _forward(state, state.params, shard(xb), None, False, model_carry)
    logits = logits.astype(jnp.float32)
    losses = jax.vmap(task.loss_fn)(logits[:, None], yb[:, None])
    errors = (jnp.argmax(logits, -1) != yb).astype(jnp.float32)
    return ((sums[0] + jnp.sum(wb * losses), sums[1] + jnp.sum(wb * errors)), model_carry), None

  zero = jnp.zeros([], jnp.float32)
  ((loss_sum, error_sum), _), _ = jax.lax.scan(
    body, ((zero, zero), carry0), jnp.arange(num_batches)
  )
  total = jnp.sum(weights)
  return {"val_loss": loss_sum / total, "val_error": error_sum / total}
