"""What a training problem adds to the loop (``Task``), and the defaults it starts from: the
cross-entropy loss and the two data orders.

``Task`` holds, as hashable functions:

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
  (``experiments/trainer/bptt.py`` states the policy). Evaluation (``steps.evaluate``) starts
  from ``init_carry`` and carries it through the test batches in order.
* ``carry_reset(step, num_examples, batch_size)``: whether outer step ``step`` starts from
  ``init_carry`` instead of the carried state (the first step of each pass over a text).
* ``clip_norm``: clip every gradient evaluation (step 0's and each Langevin step's) to this
  global norm before the optimizer sees it; 0: none.
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


def carry_kwargs(task: Task, example_x) -> dict[str, Any]:
  """The model's ``carry`` argument for ``example_x`` (none without ``Task.init_carry``)."""
  return {"carry": task.init_carry(example_x.shape[0])} if task.init_carry else {}
