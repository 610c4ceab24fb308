"""The diagonal of the empirical Fisher: from per-example gradients, or from Adam's state."""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

from entropy_optax.flatness import _inputs
from entropy_optax.flatness._loss import LossTree


@functools.partial(jax.jit, static_argnames=("num_batches", "per_example", "centered"))
def _fisher_diagonal(loss_fn, params, batches, num_batches, per_example, centered):
  if per_example:
    example_grad = jax.grad(loss_fn)
  else:
    # A batch of one: the example keeps its leading axis.
    def example_grad(p, example):
      return jax.grad(loss_fn)(p, jax.tree.map(lambda a: a[None], example))

  per_batch_grads = jax.vmap(example_grad, in_axes=(None, 0))
  zeros = optax.tree.zeros_like(params)

  def accumulate(carry, batch):
    sum_g, sum_g2, count = carry
    grads = per_batch_grads(params, batch)
    sum_g = jax.tree.map(lambda s, g: s + jnp.sum(g, axis=0), sum_g, grads)
    sum_g2 = jax.tree.map(lambda s, g: s + jnp.sum(g**2, axis=0), sum_g2, grads)
    return (sum_g, sum_g2, count + jax.tree.leaves(grads)[0].shape[0]), None

  (sum_g, sum_g2, count), _ = jax.lax.scan(
    accumulate, (zeros, zeros, 0), batches, length=num_batches
  )
  mean_g2 = optax.tree.scale(1.0 / count, sum_g2)
  if not centered:
    return mean_g2
  mean_g = optax.tree.scale(1.0 / count, sum_g)
  return jax.tree.map(lambda m2, m: m2 - m**2, mean_g2, mean_g)


def fisher_diagonal(
  loss_fn: _inputs.LossFn,
  params,
  batches,
  *,
  per_example: bool = False,
  centered: bool = False,
):
  r"""Diagonal of the empirical Fisher: the mean squared per-example gradient.

  .. math::
    \operatorname{diag} F = \frac{1}{N} \sum_{i=1}^{N} \big(\nabla_x \ell(x; \xi_i)\big)^2
    \quad\text{or, with centered=True,}\quad
    \frac{1}{N} \sum_i g_i^2 - \Big(\frac{1}{N} \sum_i g_i\Big)^2,

  over all ``N`` examples of all batches (squares elementwise). For a
  negative log-likelihood at a minimum the Fisher approximates the Hessian,
  and the paper used its diagonal as a proxy for the Hessian eigenvalues of
  All-CNN-BN (Sec. 5.1, Fig. 3c; its formula is the centered one, which
  differs by the squared mean gradient, ~0 at a minimum).

  Per-example gradients are vmapped within a batch; batches are scanned.
  With the default ``per_example=False``, each example is fed to
  ``loss_fn`` as a batch of one (leading axis kept), so ``loss_fn`` must not
  mix examples (batch norm in training mode does). Use the mean, not the
  sum, over the batch in ``loss_fn``: the gradient of a batch of one is then
  the per-example gradient.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``, the mean loss of one batch;
      with ``per_example=True``, ``loss_fn(params, example) -> scalar`` on one
      example without a batch axis.
    params: the parameters (any pytree).
    batches: a list of batches, or a stacked pytree (leading axis = batch);
      every leaf of a batch has the examples on its leading axis.
    per_example: whether ``loss_fn`` takes a single unbatched example.
    centered: subtract the squared mean gradient (the paper's
      ``E[g^2] - (E g)^2``).

  Returns:
    A pytree like ``params`` with the diagonal.

  Examples:
    >>> import jax.numpy as jnp
    >>> from entropy_optax import flatness
    >>> loss = lambda w, batch: jnp.mean(0.5 * (batch[0] * w - batch[1]) ** 2)
    >>> xs, ys = jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 0.0]])
    >>> flatness.fisher_diagonal(loss, 1.0, (xs, ys))  # mean(x^4 w^2)
    Array(8.5, dtype=float32)

  References:
    Chaudhari et al., 2017. Entropy-SGD, ICLR 2017, Sec. 5.1.
    Kunstner, Balles & Hennig, 2019. Limitations of the empirical Fisher
    approximation for natural gradient descent. NeurIPS 2019.
  """
  stacked, num_batches = _inputs.stack_batches(batches)
  return _fisher_diagonal(LossTree.of(loss_fn), params, stacked, num_batches, per_example, centered)


def fisher_diagonal_from_adam(
  opt_state: optax.OptState,
  *,
  b2: float | None = None,
  centered: bool = False,
  b1: float | None = None,
):
  r"""The paper's All-CNN-BN Fisher proxy: Adam's second moment ``nu``.

  Adam keeps ``nu_t = b2 nu_{t-1} + (1 - b2) g_t^2``, an exponential moving
  average of the squared **minibatch** gradients along the trajectory (not of
  per-example gradients at one point, unlike `fisher_diagonal`), and
  ``mu_t``, the same EMA of ``g_t`` with ``b1``. This returns

  .. math::
    \hat\nu = \frac{\nu_t}{1 - b_2^t}
    \quad\text{or, with centered=True,}\quad
    \hat\nu - \hat\μ^2, \qquad \hat\μ = \frac{\mu_t}{1 - b_1^t},

  the latter being the paper's ``diag(I) = E(g^2) - (E g)^2``. Minibatch
  gradients have variance ~1/batch size of per-example ones, so the scale
  differs from `fisher_diagonal`; the shape of the spectrum is what Fig. 3c
  compares. Without ``b2`` (resp. ``b1``) no bias correction is applied,
  which matters only for the first ~``1/(1 - b2)`` steps.

  The Adam state is the one node of ``opt_state`` that holds ``mu``, ``nu``
  and ``count`` together (optax's ``ScaleByAdamState``, also used by
  ``adamw``/``nadam``/``amsgrad``; or a dict with those keys, as a checkpoint
  restored without a target gives), and the bias correction uses that node's
  own ``count``: a learning-rate schedule, ``inject_hyperparams`` or any other
  transformation of the chain may keep counts of its own, and parameters may
  have any names.

  Args:
    opt_state: an optax state containing exactly one Adam state.
    b2: Adam's ``b2``, for bias correction with that state's ``count``.
    centered: subtract the squared first moment ``mu``.
    b1: Adam's ``b1``, for bias correction of ``mu`` (with ``centered``).

  Returns:
    A pytree like the parameters with the diagonal estimate.

  Raises:
    ValueError: if ``opt_state`` holds no Adam state (the message lists the
      state types it found) or several (it lists where they are).

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> from entropy_optax import flatness
    >>> opt = optax.adam(1e-3, b2=0.9)
    >>> state = opt.init(jnp.zeros(2))
    >>> _, state = opt.update(jnp.array([1.0, 3.0]), state)
    >>> print(*(f"{v:.2f}" for v in flatness.fisher_diagonal_from_adam(state)))
    0.10 0.90
    >>> fisher = flatness.fisher_diagonal_from_adam(state, b2=0.9)  # g^2
    >>> print(*(f"{v:.2f}" for v in fisher))
    1.00 9.00
    >>> scheduled = optax.adam(optax.exponential_decay(1e-3, 10, 0.5), b2=0.9)
    >>> state = scheduled.init(jnp.zeros(2))  # the schedule keeps a second count
    >>> _, state = scheduled.update(jnp.array([1.0, 3.0]), state)
    >>> print(*(f"{v:.2f}" for v in flatness.fisher_diagonal_from_adam(state, b2=0.9)))
    1.00 9.00

  References:
    Chaudhari et al., 2017. Entropy-SGD, ICLR 2017, Sec. 5.1 (All-CNN-BN).
    Kingma & Ba, 2015. Adam: A Method for Stochastic Optimization. ICLR.
  """
  adam = _the_adam_state(opt_state)

  def corrected(moment, decay):
    if decay is None:
      return moment
    return optax.tree.bias_correction(moment, decay, adam["count"])

  second = corrected(adam["nu"], b2)
  if not centered:
    return second
  first = corrected(adam["mu"], b1)
  return jax.tree.map(lambda s, m: s - m**2, second, first)


_ADAM_FIELDS = ("count", "mu", "nu")


def _fields(node) -> dict | None:
  """``{count, mu, nu}`` of an Adam-state node (a NamedTuple or a dict), else None."""
  if isinstance(node, Mapping):
    names = node.keys()
    get = node.__getitem__
  elif isinstance(node, tuple) and hasattr(node, "_fields"):
    names = node._fields
    get = functools.partial(getattr, node)
  else:
    return None
  if not set(_ADAM_FIELDS) <= set(names):
    return None
  return {name: get(name) for name in _ADAM_FIELDS}


def _the_adam_state(opt_state) -> dict:
  """The moments and count of the one Adam state inside ``opt_state``.

  Walks the state down to the first nodes that hold ``count``, ``mu`` and ``nu`` together, so
  neither the counts of other transformations (schedules, ``inject_hyperparams``) nor
  parameters named ``nu`` or ``count`` inside the moments can be mistaken for Adam's.
  """
  found = jax.tree_util.tree_flatten_with_path(
    opt_state, is_leaf=lambda node: _fields(node) is not None
  )[0]
  adam = [(path, _fields(node)) for path, node in found if _fields(node) is not None]
  if not adam:
    kinds = ", ".join(sorted(_state_types(opt_state))) or "no NamedTuple state"
    raise ValueError(
      "opt_state holds no Adam state (a node with 'count', 'mu' and 'nu', such as optax's "
      f"ScaleByAdamState); it holds {kinds}. Pass the "
      "state of an optax Adam-family optimizer (adam, adamw, nadam, amsgrad, ...)."
    )
  if len(adam) > 1:
    where = ", ".join(jax.tree_util.keystr(path) or "opt_state" for path, _ in adam)
    raise ValueError(
      f"opt_state holds {len(adam)} Adam states (at {where}): pass the sub-state of the one "
      "you want."
    )
  return adam[0][1]


def _state_types(node) -> set[str]:
  """The names of the NamedTuple states inside an optax state, for error messages."""
  if isinstance(node, Mapping):
    children = node.values()
  elif isinstance(node, (list, tuple)):
    children = node
  else:
    return set()
  names = {type(node).__name__} if hasattr(node, "_fields") else set()
  return names.union(*(_state_types(child) for child in children))
