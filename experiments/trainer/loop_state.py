"""The loop's state: a seed's weights, optimizer state, keys and carried state, how it starts,
what a checkpoint holds of it, and the replicas' average that Parle evaluates."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from entropy_optax import flax as eflax
from experiments.trainer.tasks import Task, carry_kwargs

REPLICA_AXIS = "replica"  # the named vmap axis of a seed's replicas (Parle)


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
  ``experiments.launch.components.make_task`` does for replicas); keys and optimizer state are the
  first replica's."""
  first = jax.tree.map(lambda a: a[0], state)
  mean = lambda tree: jax.tree.map(lambda a: jnp.mean(a, 0).astype(a.dtype), tree)
  return first.replace(params=mean(state.params), batch_stats=mean(state.batch_stats))
