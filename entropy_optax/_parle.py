"""Parle: n replicas of Entropy-SGD coupled elastically to their average (an Optax alias)."""

# No ``from __future__ import annotations``: optax's schedule tests look for the object
# ``optax.ScalarOrSchedule`` in the annotation of ``learning_rate``, not a string.

import math

import jax
import optax

from entropy_optax import _elastic, _noise, _shared_args
from entropy_optax._alias import _outer_weight_decay
from entropy_optax._transform import local_entropy
from entropy_optax._utils import canonical_key, is_concrete_number, is_static_zero


@_shared_args.with_chain_args
def parle(
  learning_rate: optax.ScalarOrSchedule,
  *,
  rho: optax.ScalarOrSchedule,
  num_langevin_steps: int = 20,
  gamma: optax.ScalarOrSchedule = 0.03,
  langevin_lr: float = 0.1,
  noise: float = 1e-4,
  alpha: float = 0.75,
  momentum: float = 0.9,
  nesterov: bool = True,
  langevin_momentum: float = 0.0,
  langevin_nesterov: bool = True,
  weight_decay: float = 0.0,
  gamma_max: float | None = None,
  rho_max: float | None = None,
  center: _elastic.Center = "params",
  axis_name: _elastic.AxisName = "replica",
  key: jax.Array | int = 0,
  independent_noise: bool = True,
  noise_distribution: _noise.NoiseDistribution = "irwin_hall",
  unroll: int | bool | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Parle: Entropy-SGD on each of n replicas, each pulled elastically towards their average.

  Each replica xᵃ (one per index of ``axis_name``) does, per update::

    zᵃ  = the Langevin mean of local_entropy, L steps started at xᵃ on its own mini-batches
    gᵃ  = (xᵃ − zᵃ) + ρ_t (xᵃ − x̄),    x̄ = the mean of the xᵃ over the replicas
    xᵃ ← xᵃ − η momentum(gᵃ + wd xᵃ)

  that is ``optax.chain(local_entropy(...), elastic_coupling(rho, ...), sgd(...))``
  (:func:`~entropy_optax.local_entropy`, :func:`~entropy_optax.elastic_coupling`): the
  arguments shared with :func:`~entropy_optax.entropy_sgd` mean the same there, ``gamma`` and
  ``rho`` may be schedules of the update count (the paper scopes both upwards, e.g.
  ``exponential_scoping(gamma0, 0.5 / steps_per_epoch)`` as the authors' code does) and
  ``gamma_max``, ``rho_max`` cap them (that code: 1 and 10). One update costs each replica the
  L gradient evaluations of Entropy-SGD and all of them one all-reduce of the parameters.
  Evaluate x̄, as the paper does (re-estimate BatchNorm statistics there). :doc:`/parle` has
  the guide.

  Run ``init`` and ``update`` inside ``jax.vmap(..., axis_name=axis_name)`` (replicas on one
  device) or ``jax.shard_map`` over a mesh axis of that name (a replica per device); a tuple
  names several axes.

  Reductions. With ``axis_name=None`` (one replica), or with ρ = 0 and
  ``independent_noise=False``, each replica's updates are those of
  :func:`~entropy_optax.entropy_sgd` with the same arguments **and the same**
  ``langevin_nesterov``: pass it to both, since the defaults differ (True here; None in
  :func:`~entropy_optax.entropy_sgd`, which follows ``nesterov``). With ρ = 0 and
  ``independent_noise=True`` each replica is Entropy-SGD with its own noise key. L = 1 with
  α = 1, η' = 1 and ε = 0 (γ then does nothing: the chain's only step is taken at x' = x)
  gives gᵃ = ∇f(xᵃ) + ρ (xᵃ − x̄), synchronous Elastic-Averaging SGD whose center is the
  replicas' average. ``rho=math.inf`` replaces the elastic force by
  :func:`~entropy_optax.replica_average` after the SGD step: all replicas hold x̄ after every
  update (their average step).

  Args:
    learning_rate: the outer step size η, a float or an optax schedule.
    rho: the coupling ρ >= 0, a float or a schedule of the update count; ``math.inf``: the
      hard coupling. Without momentum, η ρ < 1 contracts each replica's distance to x̄. The
      authors' ``parle_mpi.py`` multiplies its ``--rho`` by L n: pass that product.
    .. chain-args:: num_langevin_steps gamma langevin_lr noise alpha
    momentum: the outer SGD's momentum (0 for none).
    nesterov: the outer momentum's form: Nesterov (True) or heavy-ball (False), as
      :func:`~entropy_optax.entropy_sgd`'s ``nesterov``.
    .. chain-args:: langevin_momentum
    langevin_nesterov: the Nesterov form of ``langevin_momentum`` (no effect while it is 0, the
      default). True by default, whatever ``nesterov`` is.
    weight_decay: L2 coefficient wd, inside the chain and on the outer gradient, as
      :func:`~entropy_optax.entropy_sgd`'s.
    gamma_max: caps γ (None: no cap).
    rho_max: caps ρ (None: no cap).
    center: ``"params"`` (x̄ averages the xᵃ, the paper's text) or ``"langevin_mean"`` (it
      averages the zᵃ, as both authors' codes do); see
      :func:`~entropy_optax.elastic_coupling`.
    axis_name: the replicas' named axis (a name or a tuple of names); None: one replica
      (:func:`~entropy_optax.entropy_sgd`, with zero :class:`~entropy_optax.ElasticStats`).
    key: the PRNG key, or an int seed, of the Langevin noise.
    independent_noise: fold each replica's index on ``axis_name`` into ``key`` at ``init``, so
      that the replicas draw independent noise; False: every replica uses ``key`` as given
      (pass distinct keys yourself, or keep replicas with equal keys and data identical).
    .. chain-args:: noise_distribution unroll

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state holds a
    :class:`~entropy_optax.LocalEntropyState` and an
    :class:`~entropy_optax.ElasticCouplingState` (``optax.tree.get(state, "elastic_stats")``).

  Examples:
    >>> import jax, jax.numpy as jnp, optax, entropy_optax
    >>> loss = lambda p, target: jnp.sum((p - target) ** 2)
    >>> tx = entropy_optax.parle(0.5, rho=1.0, num_langevin_steps=5, gamma=1.0, momentum=0.0)
    >>> def step(params, state, target):  # one replica, its own data (target)
    ...   grad_fn = lambda p, k: jax.grad(loss)(p, target)
    ...   updates, state = tx.update(grad_fn(params, 0), state, params, grad_fn=grad_fn)
    ...   return optax.apply_updates(params, updates), state
    >>> params = jnp.zeros((2, 1))  # two replicas
    >>> targets = jnp.array([[1.0], [3.0]])
    >>> state = jax.vmap(tx.init, axis_name="replica")(params)
    >>> for _ in range(100):
    ...   params, state = jax.vmap(step, axis_name="replica")(params, state, targets)
    >>> print(params.round(2))  # each alone would go to its target, 1 or 3
    [[1.65]
     [2.35]]

  References:
    Chaudhari, Baldassi, Zecchina, Soatto, Talwalkar and Oberman, "Parle: parallelizing
    stochastic gradient descent", 2017 (https://arxiv.org/abs/1707.00424).
  """
  local = local_entropy(
    num_langevin_steps,
    _elastic.capped(gamma, gamma_max),
    langevin_lr,
    noise,
    alpha,
    langevin_momentum=langevin_momentum,
    langevin_nesterov=langevin_nesterov,
    weight_decay=weight_decay,
    key=key,
    noise_distribution=noise_distribution,
    unroll=unroll,
  )
  outer = optax.chain(
    _outer_weight_decay(weight_decay),
    optax.sgd(
      learning_rate, momentum=None if is_static_zero(momentum) else momentum, nesterov=nesterov
    ),
  )
  if is_concrete_number(rho) and rho == math.inf:
    tx = optax.chain(local, outer, _elastic.replica_average(axis_name))
  else:
    tx = optax.chain(
      local,
      _elastic.elastic_coupling(rho, axis_name=axis_name, rho_max=rho_max, center=center),
      outer,
    )

  def init_fn(params):
    state = tx.init(params)
    if independent_noise and axis_name is not None:
      _elastic.num_replicas(axis_name)  # the clear error outside the axis
      replica_key = jax.random.fold_in(canonical_key(key), jax.lax.axis_index(axis_name))
      state = optax.tree.set(state, langevin_key=replica_key)
    return state

  return optax.GradientTransformationExtraArgs(init_fn, tx.update)
