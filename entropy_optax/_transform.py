"""local_entropy: the Entropy-SGD gradient estimate as an Optax gradient transformation."""

# No ``from __future__ import annotations``: optax (and its schedule tests) inspects the
# annotation of ``gamma`` for the object ``optax.ScalarOrSchedule``, not a string.

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from entropy_optax import (
  _auto_scope,
  _batches,
  _deprecation,
  _langevin,
  _masking,
  _noise,
  _sghmc,
  _shared_args,
  _stats,
)
from entropy_optax._config import ChainConfig
from entropy_optax._utils import canonical_key, chain_dtype, to_chain

_GRAD_FN_HELP = (
  "local_entropy needs grad_fn, a function grad_fn(params, k) returning the loss gradient "
  "for Langevin step k, passed as a keyword: "
  "tx.update(grads, opt_state, params, grad_fn=lambda p, k: jax.grad(loss)(p, batches[k])). "
  "With Flax: Linen's flax.training.train_state.TrainState.apply_gradients drops grad_fn, "
  "so build the state from entropy_optax.flax.TrainState (subclass it instead of flax's for "
  "extra fields) and call state.apply_gradients(grads=grads, "
  "grad_fn=entropy_optax.flax.make_grad_fn(...)); NNX: optimizer.update(model, grads, "
  "grad_fn=entropy_optax.flax.nnx_grad_fn(...))."
)


class LocalEntropyState(NamedTuple):
  """State of :func:`~entropy_optax.local_entropy`.

  The fields are prefixed ``langevin_`` so that ``optax.tree.get(opt_state, name)`` finds one
  value beside optax's own states (Adam's ``mu`` and ``count``, ``add_noise``'s ``rng_key``).
  0.1.0 named them ``count``, ``rng_key`` and ``mu`` (:doc:`/migration`).

  Attributes:
    langevin_count: number of updates done so far (int32); γ is evaluated at it.
    langevin_key: the PRNG key of the Langevin noise, split at every update.
    langevin_mu: the Langevin mean ⟨x'⟩ of the last update, in the chain dtype (at least
      float32); x before the first update (zeros when ``init`` got shapes only,
      ``jax.ShapeDtypeStruct``); ``optax.MaskedNode`` at the leaves a ``mask`` leaves out.
    langevin_stats: :class:`~entropy_optax.LangevinStats` of the last update (diagnostics;
      zeros before the first).
    langevin_scope: the state of an :func:`~entropy_optax.auto_scoping` γ
      (:class:`~entropy_optax.AutoScopingState`); empty, ``()``, for a number or a schedule.

  Examples:
    >>> import jax.numpy as jnp, optax, entropy_optax
    >>> tx = entropy_optax.local_entropy(5, 0.1)
    >>> state = tx.init(jnp.ones(2))
    >>> print(type(state).__name__, optax.tree.get(state, "langevin_count"))
    LocalEntropyState 0
  """

  langevin_count: jax.Array
  langevin_key: jax.Array
  langevin_mu: optax.Updates
  langevin_stats: _stats.LangevinStats
  langevin_scope: Any = ()


def _initial_mean(params: Any) -> Any:
  """x in the chain dtype; zeros of that dtype (and sharding) for shape-only leaves."""

  def leaf(p):
    if isinstance(p, jax.ShapeDtypeStruct):
      return jnp.zeros_like(p, dtype=chain_dtype(p.dtype))
    return to_chain(p)

  return jax.tree.map(leaf, params)


@_deprecation.renamed_keywords("nesterov", "noise_sampler")
@_shared_args.with_chain_args
def local_entropy(
  num_langevin_steps: int = 20,
  gamma: optax.ScalarOrSchedule = 0.03,
  langevin_lr: float = 0.1,
  noise: float = 1e-4,
  alpha: float = 0.75,
  *,
  langevin_momentum: float = 0.0,
  langevin_nesterov: bool = True,
  weight_decay: float = 0.0,
  weight_decay_at: str = "before_momentum",
  scale_by_gamma: bool = False,
  key: jax.Array | int = 0,
  noise_distribution: _noise.NoiseDistribution = "irwin_hall",
  unroll: int | bool | None = None,
  mask: Any | Callable[[Any], Any] | None = None,
  sampler: _sghmc.Sampler = "sgld",
  friction: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Replaces the gradient by the local-entropy gradient x − ⟨x'⟩, estimated by Langevin steps.

  The negative local entropy

  .. math::

     -F(x, \γ) = -\log \int
     \exp\big(-f(x') - \tfrac{\γ}{2} \lVert x - x' \rVert^2\big)\, dx'

  is a smoothed loss whose minima lie in wide valleys of f; its gradient is γ (x − ⟨x'⟩), with
  ⟨x'⟩ the mean of the local Gibbs measure, estimated by L Langevin steps started at x (see
  :func:`~entropy_optax.langevin_mean` for the exact step). The update returned is x − μ (both
  authors' codes and the paper's practice drop the factor γ, Sec. 4.3), or γ (x − μ) with
  ``scale_by_gamma``. Follow it with any optimizer in an ``optax.chain``: SGD gives Entropy-SGD
  (:func:`~entropy_optax.entropy_sgd`), Adam gives Entropy-Adam
  (:func:`~entropy_optax.entropy_adam`).

  ``update(updates, state, params, *, grad_fn, **extra_args)`` takes as ``updates`` the
  gradient ∇f(x) the caller has just computed at x (on mini-batch 0), uses it for the first
  Langevin step (taken at x' = x), and calls ``grad_fn(x_prime, k)`` for k = 1..L−1: one update
  costs exactly the L gradient evaluations of the method, and the caller keeps the loss and
  model state (BatchNorm statistics) of its own evaluation at x for logging. It must therefore
  be the first member of a chain, fed raw gradients. Other keyword arguments are ignored (they
  are for other members of the chain), but ``run_langevin``: a bool scalar; where False, the
  chain is skipped (under ``lax.cond``: no ``grad_fn`` call), the updates are zero and the state
  is unchanged. :class:`~entropy_optax.MultiSteps` passes it.

  Composition (:doc:`/optax` has examples). Gradient accumulation:
  :class:`~entropy_optax.MultiSteps` runs the chain once per emitted update, from the averaged
  micro-batch gradient. Part of a model: ``mask`` selects the leaves the chain moves;
  ``grad_fn`` always gets whole parameters, the other leaves held at x, whose incoming gradients
  pass through unchanged (as ``optax.masked`` passes them), for an ``optax.partition`` after it
  to treat. Inside ``optax.masked`` / ``optax.partition`` it raises instead: ``grad_fn`` would
  see a model with holes. Complex parameters: SGLD on ℝ²ⁿ (noise in the real and imaginary
  parts); ``grad_fn`` returns gradients in optax's convention, the conjugate of ``jax.grad``'s,
  like the updates.

  Non-finite values: ``optax.apply_if_finite`` checks the gradients it receives, so wrapped
  around the whole chain it skips a step whose gradient at x is non-finite. A chain that
  diverges inside (a non-finite gradient at a later Langevin step) returns non-finite updates
  and leaves this transformation's count, key and stats unchanged (μ is reset to x); put
  ``optax.apply_if_finite`` around the outer optimizer,
  ``optax.chain(local_entropy(...), optax.apply_if_finite(optax.sgd(...), 5))``, to skip both
  kinds of step with params unchanged.

  Args:
    .. chain-args:: num_langevin_steps gamma langevin_lr noise alpha langevin_momentum
    langevin_nesterov: Nesterov form of ``langevin_momentum`` (heavy-ball if False). Called
      ``nesterov`` in 0.1.0 (still accepted, with a DeprecationWarning; see :doc:`/migration`).
    weight_decay: L2 added inside the chain (wd x').
    weight_decay_at: ``"before_momentum"`` (wd x' joins the raw gradient, as in the authors'
      PyTorch port) or ``"after_momentum"`` (it joins the coupling, as in the authors' Lua code;
      not with ``sampler="sghmc"``, which has no momentum buffer).
    .. chain-args:: scale_by_gamma key noise_distribution unroll
    mask: which leaves the chain moves (None: all): Python bools in a tree like params (or a
      prefix of it), or a function of params returning one, as ``optax.masked`` takes; at least
      one leaf. Under ``optax.inject_hyperparams`` name a function ``mask`` in ``static_args``:
      that wrapper calls other functions as schedules, with the step count instead of params.
    .. chain-args:: sampler friction

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import entropy_optax
    >>> loss = lambda p: jnp.sum(p ** 2)
    >>> tx = optax.chain(entropy_optax.local_entropy(5, 0.1, 0.1, 1e-4, 0.75), optax.sgd(1.0))
    >>> params = jnp.ones(3)
    >>> state = tx.init(params)
    >>> grads = jax.grad(loss)(params)
    >>> updates, state = tx.update(grads, state, params, grad_fn=lambda p, k: jax.grad(loss)(p))
    >>> params = optax.apply_updates(params, updates)

    Entropy-SGD on the head only, the backbone frozen (``grad_fn`` sees both):

    >>> params = {"backbone": jnp.ones(2), "head": jnp.ones(3)}
    >>> labels = {"backbone": "frozen", "head": "entropy"}
    >>> tx = optax.chain(
    ...     entropy_optax.local_entropy(5, 0.1, mask={"backbone": False, "head": True}),
    ...     optax.partition({"entropy": optax.sgd(1.0), "frozen": optax.set_to_zero()}, labels))
    >>> loss = lambda p: jnp.sum(p["backbone"] ** 2) * jnp.sum(p["head"] ** 2)
    >>> grad_fn = lambda p, k: jax.grad(loss)(p)
    >>> state = tx.init(params)
    >>> updates, state = tx.update(grad_fn(params, 0), state, params, grad_fn=grad_fn)
    >>> print(updates["backbone"], bool(jnp.all(updates["head"] < 0)))
    [0. 0.] True

  References:
    Chaudhari et al., "Entropy-SGD: Biasing Gradient Descent Into Wide Valleys", ICLR 2017
    (https://arxiv.org/abs/1611.01838).
  """
  return from_arguments(locals())


def from_arguments(arguments: Mapping[str, Any]) -> optax.GradientTransformationExtraArgs:
  """local_entropy from a factory's arguments (its ``locals()``), picked by name.

  :func:`~entropy_optax.local_entropy`, :func:`~entropy_optax.entropy_sgd` and
  :func:`~entropy_optax.entropy_adam` list every keyword in their signatures
  (``optax.inject_hyperparams`` and the docs read them) and pass them on here, once; the chain's
  hyper-parameters become one ``ChainConfig``, checked once, when the transformation is built.
  """
  config = ChainConfig.from_arguments(arguments)
  key, mask, scale_by_gamma = arguments["key"], arguments["mask"], arguments["scale_by_gamma"]

  def init_fn(params):
    _masking.reject_masked_nodes(params)
    selection = _masking.Selection.of(mask, params)
    return LocalEntropyState(
      langevin_count=jnp.zeros([], jnp.int32),
      langevin_key=canonical_key(key),
      langevin_mu=selection.in_state(_initial_mean(selection.part(params)), params),
      langevin_stats=_stats.empty_stats(),
      langevin_scope=_auto_scope.initial_state(config.gamma),
    )

  def step(updates, state, params, grad_fn):
    selection = _masking.Selection.of(mask, params)
    chain_params = selection.part(params)
    next_key, chain_key = jax.random.split(state.langevin_key)
    mu, stats = _langevin.run_chain(
      selection.part_grad_fn(grad_fn, params),
      chain_params,
      chain_key,
      config,
      gamma=_auto_scope.gamma_at(config, state.langevin_scope, state.langevin_count),
      grad_at_params=selection.gradient_part(updates, params),
    )
    factor = stats.langevin_gamma if scale_by_gamma else 1.0
    moved = jax.tree.map(
      lambda p, m: (factor * (p.astype(m.dtype) - m)).astype(p.dtype), chain_params, mu
    )
    # A chain that diverged (a non-finite gradient at some step k) leaves count, key and stats as
    # they were, so that an optax.apply_if_finite after this transformation skips the whole step;
    # the non-finite updates themselves are passed on, never hidden. mu is reset to the chain's
    # start x rather than kept: keeping the previous mu would hold one more parameter-sized
    # buffer through the whole chain, and the next update never reads it.
    finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(m)) for m in jax.tree.leaves(mu)]))
    if_finite = lambda new, old: optax.tree.where(finite, new, old)
    new_state = LocalEntropyState(
      langevin_count=if_finite(optax.safe_increment(state.langevin_count), state.langevin_count),
      langevin_key=if_finite(next_key, state.langevin_key),
      langevin_mu=selection.in_state(if_finite(mu, to_chain(chain_params)), params),
      langevin_stats=if_finite(stats, state.langevin_stats),
      langevin_scope=if_finite(
        _auto_scope.next_state(config, state.langevin_scope, state.langevin_count, stats),
        state.langevin_scope,
      ),
    )
    return selection.with_part(updates, moved), new_state

  def skip(updates, state, params):
    """The update of a chain that stayed at x (μ = x): zero where it moves; state unchanged."""
    selection = _masking.Selection.of(mask, params)
    zeros = jax.tree.map(jnp.zeros_like, selection.part(params))
    return selection.with_part(updates, zeros), state

  def update_fn(
    updates,
    state,
    params=None,
    *,
    grad_fn: Callable | None = None,
    run_langevin: bool | jax.Array | None = None,
    **extra_args,
  ):
    del extra_args  # Meant for the other members of a chain.
    if grad_fn is None:
      raise TypeError(_GRAD_FN_HELP)
    if params is None:
      raise TypeError(
        "local_entropy needs params: tx.update(grads, opt_state, params, grad_fn=...)."
      )
    # Builders in entropy_optax.flax record how many mini-batches grad_fn holds (static).
    _batches.check_num_batches(getattr(grad_fn, "num_batches", None), config.num_langevin_steps)
    _masking.reject_masked_nodes(params)
    if run_langevin is None or run_langevin is True:
      return step(updates, state, params, grad_fn)
    if run_langevin is False:
      return skip(updates, state, params)
    return jax.lax.cond(run_langevin, lambda *a: step(*a, grad_fn), skip, updates, state, params)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
