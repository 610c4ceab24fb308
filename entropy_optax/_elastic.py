"""The elastic coupling of replicas to their average (Parle, Elastic-Averaging SGD).

:func:`~entropy_optax.elastic_coupling` adds the elastic force ρ (xᵃ - x̄) to each replica's
update and :func:`~entropy_optax.replica_average` is its hard limit (:func:`~entropy_optax.parle`
chains them with local entropy). The replicas live on a named axis: ``jax.vmap(..., axis_name=...)``
on one device, ``jax.shard_map`` over a mesh axis on several; x̄ is a ``jax.lax.pmean`` over that
axis.
"""

# No ``from __future__ import annotations``: optax's schedule tests look for the object
# ``optax.ScalarOrSchedule`` in the annotations, not a string.

import math
from collections.abc import Hashable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from entropy_optax._stats import tree_norm
from entropy_optax._utils import is_concrete_number, to_chain

AxisName = Hashable | tuple[Hashable, ...] | None
Center = Literal["params", "langevin_mean"]
CENTERS = ("params", "langevin_mean")


class ElasticStats(NamedTuple):
  """Diagnostics of one coupling step, free: computed from xᵃ - x̄, which the step needs.

  All fields are float32 scalars; the names do not repeat other states' fields, so that
  ``optax.tree.get(opt_state, name)`` finds one value.

  Attributes:
    elastic_rho: the coupling ρ used for this step (inf for
      :func:`~entropy_optax.replica_average`).
    distance_to_center: the norm of xᵃ - x̄, this replica's distance to the average.
    replica_spread: the root mean square of ``distance_to_center`` over the replicas (equal on
      every replica): how far apart the replicas are.
  """

  elastic_rho: jax.Array
  distance_to_center: jax.Array
  replica_spread: jax.Array


class ElasticCouplingState(NamedTuple):
  """State of :func:`~entropy_optax.elastic_coupling` and :func:`~entropy_optax.replica_average`.

  Attributes:
    elastic_count: number of updates done so far (int32); ρ is evaluated at it.
    elastic_stats: :class:`~entropy_optax.ElasticStats` of the last update (zeros before the first).
  """

  elastic_count: jax.Array
  elastic_stats: ElasticStats


def _empty_state() -> ElasticCouplingState:
  zero = jnp.zeros([], jnp.float32)
  return ElasticCouplingState(jnp.zeros([], jnp.int32), ElasticStats(zero, zero, zero))


def num_replicas(axis_name: AxisName) -> int:
  """The number of replicas on ``axis_name`` (1 for None), or a ValueError saying the fix."""
  if axis_name is None:
    return 1
  try:
    return jax.lax.axis_size(axis_name)
  except NameError:
    raise ValueError(
      f"Parle's replicas live on the named axis {axis_name!r}, which is not bound here: run "
      f"init and update inside jax.vmap(..., axis_name={axis_name!r}) or jax.shard_map over a "
      f"mesh axis {axis_name!r}, or pass axis_name=None for one replica (no coupling)."
    ) from None


def _center(tree: Any, axis_name: AxisName) -> Any:
  """x̄, the replicas' average of ``tree`` (in the chain dtype, at least float32)."""
  num_replicas(axis_name)  # the clear error outside the axis
  return jax.lax.pmean(to_chain(tree), axis_name)


def _stats(rho: Any, offset: Any, axis_name: AxisName) -> ElasticStats:
  distance = tree_norm(offset)
  spread = distance if axis_name is None else jnp.sqrt(jax.lax.pmean(distance**2, axis_name))
  return ElasticStats(jnp.asarray(rho, jnp.float32), distance, spread)


def _check_rho(rho: Any, name: str = "rho") -> None:
  if is_concrete_number(rho) and rho == math.inf:
    raise ValueError(
      f"{name} = inf is the hard coupling: chain replica_average after the optimizer instead "
      "(entropy_optax.parle(rho=math.inf) does)."
    )
  if is_concrete_number(rho) and not 0 <= rho < math.inf:
    raise ValueError(f"{name} must be finite and >= 0 (or an optax schedule), got {rho}.")


def elastic_coupling(
  rho: optax.ScalarOrSchedule,
  *,
  axis_name: AxisName = "replica",
  rho_max: float | None = None,
  center: Center = "params",
) -> optax.GradientTransformationExtraArgs:
  """Adds the elastic force ρ (xᵃ - x̄) pulling each replica xᵃ to the replicas' average.

  The update uᵃ of replica a becomes uᵃ + rho_t (xᵃ - x̄), with x̄ the average over
  ``axis_name`` (a ``jax.lax.pmean``: one all-reduce of the parameters per update). It is the
  gradient of ρ/2 times the squared distance of xᵃ to x̄, the coupling of Elastic-Averaging
  SGD (Zhang et al. 2015); placed before an optimizer, the force goes through its momentum, as
  both of the Parle authors' codes do. Zero for one replica. ``update`` needs ``params``; other
  keyword arguments are ignored (they are for other members of a chain).

  Each replica drifts from the others at the rate of its own updates and is pulled back at rate
  learning_rate * ρ per step (without momentum): 0 < learning_rate * ρ < 1 shrinks its
  distance to x̄ monotonically, and the step diverges beyond 2.
  :func:`~entropy_optax.replica_average` is the hard limit (ρ -> infinity).

  Args:
    rho: the coupling ρ >= 0, a float or a schedule of the update count (t = 0 first).
    axis_name: the named axis of the replicas (a tuple for several, e.g. a mesh axis and a
      vmapped one); None: one replica, no coupling.
    rho_max: caps rho_t (the authors' Parle code caps it at 10); None: no cap.
    center: what x̄ averages: "params", the replicas xᵃ (the paper's text, Elastic-Averaging
      SGD), or "langevin_mean", the replicas' Langevin means zᵃ = xᵃ - uᵃ (both authors'
      codes; valid where the incoming update is :func:`~entropy_optax.local_entropy`'s x - μ).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is an
    :class:`~entropy_optax.ElasticCouplingState`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, entropy_optax
    >>> tx = optax.chain(entropy_optax.elastic_coupling(0.5), optax.sgd(1.0))
    >>> def step(x):  # x: one replica; zero gradients, so only the coupling moves it
    ...   updates, _ = tx.update(jnp.zeros_like(x), tx.init(x), x)
    ...   return optax.apply_updates(x, updates)
    >>> print(jax.vmap(step, axis_name="replica")(jnp.array([[0.0], [4.0]])))
    [[1.]
     [3.]]

  References:
    Chaudhari et al., "Parle: parallelizing stochastic gradient descent", 2017
    (https://arxiv.org/abs/1707.00424); Zhang, Choromanska and LeCun, "Deep learning with
    Elastic Averaging SGD", NeurIPS 2015.
  """
  if not callable(rho):
    _check_rho(rho)
  if rho_max is not None:
    _check_rho(rho_max, "rho_max")
  if center not in CENTERS:
    raise ValueError(f"center must be one of {CENTERS}, got {center!r}.")

  def init_fn(params):
    del params
    return _empty_state()

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args  # Meant for the other members of a chain.
    if params is None:
      raise TypeError("elastic_coupling needs params: tx.update(grads, opt_state, params).")
    rho_t = rho(state.elastic_count) if callable(rho) else rho
    if rho_max is not None:
      rho_t = jnp.minimum(rho_t, rho_max)
    x = to_chain(params)
    if axis_name is None:
      offset = jax.tree.map(jnp.zeros_like, x)
    else:
      source = x if center == "params" else jax.tree.map(lambda p, u: p - u, x, to_chain(updates))
      offset = jax.tree.map(lambda p, c: p - c, x, _center(source, axis_name))
    rho_f32 = jnp.asarray(rho_t, jnp.float32)
    new_updates = jax.tree.map(
      lambda u, d: (u + (rho_f32 * d).astype(u.dtype)).astype(u.dtype), updates, offset
    )
    new_state = ElasticCouplingState(
      optax.safe_increment(state.elastic_count), _stats(rho_t, offset, axis_name)
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def replica_average(axis_name: AxisName = "replica") -> optax.GradientTransformationExtraArgs:
  """The hard coupling: every replica moves to the average of the replicas' next iterates.

  The last member of a chain (it takes parameter updates, not gradients): uᵃ becomes
  mean_b(x^b + u^b) - xᵃ, so that all replicas hold the same parameters after every update,
  whatever their keys and data (the ρ -> infinity limit of
  :func:`~entropy_optax.elastic_coupling`; from equal starting points, data-parallel training with
  an n times larger batch, each replica keeping its own optimizer state). Its
  :class:`~entropy_optax.ElasticStats` measure xᵃ + uᵃ before the averaging, with ``elastic_rho``
  = inf.

  Args:
    axis_name: the named axis of the replicas; None: one replica (the identity).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is an
    :class:`~entropy_optax.ElasticCouplingState`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, entropy_optax
    >>> tx = optax.chain(optax.sgd(1.0), entropy_optax.replica_average())
    >>> def step(x, grad):  # each replica its own gradient; all end at the average step
    ...   updates, _ = tx.update(grad, tx.init(x), x)
    ...   return optax.apply_updates(x, updates)
    >>> print(jax.vmap(step, axis_name="replica")(jnp.zeros((2, 1)), jnp.array([[1.0], [3.0]])))
    [[-2.]
     [-2.]]
  """

  def init_fn(params):
    del params
    return _empty_state()

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise TypeError("replica_average needs params: tx.update(updates, opt_state, params).")
    if axis_name is None:
      offset, new_updates = jax.tree.map(jnp.zeros_like, to_chain(params)), updates
    else:
      nxt = jax.tree.map(lambda p, u: p + u, to_chain(params), to_chain(updates))
      center = _center(nxt, axis_name)
      offset = jax.tree.map(lambda n, c: n - c, nxt, center)
      new_updates = jax.tree.map(
        lambda c, p, u: (c - p).astype(u.dtype), center, to_chain(params), updates
      )
    new_state = ElasticCouplingState(
      optax.safe_increment(state.elastic_count), _stats(math.inf, offset, axis_name)
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def capped(value: optax.ScalarOrSchedule, cap: float | None) -> optax.ScalarOrSchedule:
  """``value`` (a float or a schedule) capped at ``cap`` (None: unchanged)."""
  if cap is None:
    return value
  if callable(value):
    return lambda count: jnp.minimum(value(count), cap)
  return min(value, cap) if is_concrete_number(value) else jnp.minimum(value, cap)
