"""Entropy-SGD and Entropy-Adam: local entropy chained with an outer optimizer."""

# No ``from __future__ import annotations``: optax's schedule tests look for the object
# ``optax.ScalarOrSchedule`` in the annotation of ``learning_rate``, not a string.

from typing import Any

import jax
import jax.numpy as jnp
import optax

from entropy_optax import _deprecation, _noise, _sghmc, _shared_args, _transform
from entropy_optax._utils import is_concrete_number, is_static_zero


def _outer(
  mask: Any | None, *transforms: optax.GradientTransformation
) -> optax.GradientTransformation:
  # With a mask, the outer optimizer too acts on the selected leaves only; the others'
  # gradients pass through unchanged, as optax.masked passes them.
  outer = optax.chain(*transforms)
  return outer if mask is None else optax.masked(outer, mask)


def _outer_weight_decay(weight_decay: float) -> optax.GradientTransformation:
  # The authors' PyTorch port adds wd x to the outer gradient x - mu, before the outer momentum
  # (their Lua code, which ran the paper, has no outer weight decay).
  # A traced weight_decay (optax.inject_hyperparams) keeps the term.
  if is_static_zero(weight_decay):
    return optax.identity()
  if not is_concrete_number(weight_decay):
    # inject_hyperparams makes it a float64 array under jax_enable_x64: float32, so that it does
    # not promote float32 updates (and the outer momentum's state) to float64.
    weight_decay = jnp.asarray(weight_decay, jnp.float32)
  return optax.add_decayed_weights(weight_decay)


@_deprecation.renamed_keywords("noise_sampler")
@_shared_args.with_chain_args
def entropy_sgd(
  learning_rate: optax.ScalarOrSchedule,
  *,
  num_langevin_steps: int = 20,
  gamma: optax.ScalarOrSchedule = 0.03,
  langevin_lr: float = 0.1,
  noise: float = 1e-4,
  alpha: float = 0.75,
  momentum: float = 0.9,
  nesterov: bool = True,
  langevin_momentum: float = 0.0,
  langevin_nesterov: bool | None = None,
  weight_decay: float = 0.0,
  scale_by_gamma: bool = False,
  key: jax.Array | int = 0,
  noise_distribution: _noise.NoiseDistribution = "irwin_hall",
  unroll: int | bool | None = None,
  mask: Any | None = None,
  sampler: _sghmc.Sampler = "sgld",
  friction: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Entropy-SGD: the local-entropy gradient followed by SGD with Nesterov momentum.

  ``optax.chain(local_entropy(...), add_decayed_weights(weight_decay), sgd(...))``: the outer
  step is x ← x − η (x − μ + wd x) through the momentum, Alg. 1 line 7 with the factor γ
  dropped as in the paper's practice (``scale_by_gamma`` keeps it); the chain is
  :func:`~entropy_optax.local_entropy`'s, which says how ``update`` takes ``grad_fn``.
  ``weight_decay`` applies inside the Langevin chain (to the raw gradient) and to the outer
  gradient, as the authors' PyTorch port does; their Lua code, which produced the paper's
  numbers, has neither outer momentum nor outer weight decay
  (:func:`~entropy_optax.authors_entropy_sgd` runs either code exactly).

  Args:
    learning_rate: the outer step size η, a float or an optax schedule.
    .. chain-args:: num_langevin_steps gamma langevin_lr noise alpha
    momentum: the outer SGD's momentum (0 for none).
    nesterov: the outer momentum's form, as ``optax.sgd``'s ``nesterov``: Nesterov (True, the
      default, as in the paper and the authors' codes) or heavy-ball (False: flax's examples'
      ``optax.sgd(lr, momentum)``); see :ref:`two-nesterovs`.
    .. chain-args:: langevin_momentum
    langevin_nesterov: the Nesterov form of ``langevin_momentum`` (no effect while it is 0, the
      default). None (the default) follows ``nesterov``, as 0.1.0's single ``nesterov`` did;
      ``nesterov=False`` with a Langevin momentum then warns: pass ``langevin_nesterov`` to
      choose.
    weight_decay: L2 coefficient wd, added inside the chain (wd x') and to the outer gradient
      (wd x) before the momentum.
    .. chain-args:: scale_by_gamma key noise_distribution unroll
    mask: Entropy-SGD on part of the model (None: all of it): the leaves selected, as
      :func:`~entropy_optax.local_entropy`'s ``mask``, for the chain and the outer SGD; the
      other leaves' gradients pass through unchanged, for an optimizer after it
      (``optax.masked`` / ``optax.partition``) to treat.
    .. chain-args:: sampler friction

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state holds a
    :class:`~entropy_optax.LocalEntropyState`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, entropy_optax
    >>> loss = lambda p: jnp.sum((p - 1.0) ** 2)
    >>> tx = entropy_optax.entropy_sgd(0.5, num_langevin_steps=5, gamma=1.0)
    >>> params = jnp.zeros(2); state = tx.init(params)
    >>> for _ in range(50):
    ...   grads = jax.grad(loss)(params)
    ...   updates, state = tx.update(grads, state, params, grad_fn=lambda p, k: jax.grad(loss)(p))
    ...   params = optax.apply_updates(params, updates)
    >>> print(params.round(2))
    [1. 1.]

  References:
    Chaudhari et al., "Entropy-SGD: Biasing Gradient Descent Into Wide Valleys", ICLR 2017.
  """
  langevin_nesterov = _deprecation.entropy_sgd_langevin_nesterov(
    nesterov, langevin_nesterov, langevin_momentum
  )
  return optax.chain(
    _transform.from_arguments(locals()),
    _outer(
      mask,
      _outer_weight_decay(weight_decay),
      optax.sgd(
        learning_rate, momentum=None if is_static_zero(momentum) else momentum, nesterov=nesterov
      ),
    ),
  )


@_deprecation.renamed_keywords("noise_sampler")
@_shared_args.with_chain_args
def entropy_adam(
  learning_rate: optax.ScalarOrSchedule,
  *,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  num_langevin_steps: int = 20,
  gamma: optax.ScalarOrSchedule = 0.03,
  langevin_lr: float = 0.1,
  noise: float = 1e-4,
  alpha: float = 0.75,
  langevin_nesterov: bool = True,
  langevin_momentum: float = 0.0,
  weight_decay: float = 0.0,
  scale_by_gamma: bool = False,
  key: jax.Array | int = 0,
  noise_distribution: _noise.NoiseDistribution = "irwin_hall",
  unroll: int | bool | None = None,
  mask: Any | None = None,
  sampler: _sghmc.Sampler = "sgld",
  friction: float | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Entropy-Adam: the local-entropy gradient followed by Adam.

  ``optax.chain(local_entropy(...), add_decayed_weights(weight_decay), adam(...))``, as
  :func:`~entropy_optax.entropy_sgd` with Adam as the outer optimizer. The paper's char-LSTM
  used Entropy-Adam with β1 = 0.5 (pass ``b1=0.5``); the default keeps Adam's usual 0.9. Adam
  has no Nesterov form, so there is no ``nesterov`` (:ref:`two-nesterovs`).

  Args:
    learning_rate: Adam's step size, a float or an optax schedule.
    b1: Adam's decay rate of the first moment.
    b2: Adam's decay rate of the second moment.
    eps: Adam's term added to the denominator.
    .. chain-args:: num_langevin_steps gamma langevin_lr noise alpha
    langevin_nesterov: the Nesterov form of ``langevin_momentum`` (no effect while it is 0, the
      default).
    .. chain-args:: langevin_momentum
    weight_decay: L2 coefficient wd, added inside the chain (wd x') and to the outer gradient
      (wd x) before Adam.
    .. chain-args:: scale_by_gamma key noise_distribution unroll
    mask: Entropy-Adam on part of the model (None: all of it), as
      :func:`~entropy_optax.entropy_sgd`'s ``mask``.
    .. chain-args:: sampler friction

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state holds a
    :class:`~entropy_optax.LocalEntropyState`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, entropy_optax
    >>> loss = lambda p: jnp.sum((p - 1.0) ** 2)
    >>> tx = entropy_optax.entropy_adam(0.1, b1=0.5, num_langevin_steps=5, gamma=1.0)
    >>> params = jnp.zeros(2); state = tx.init(params)
    >>> grad_fn = lambda p, k: jax.grad(loss)(p)
    >>> for _ in range(100):
    ...   updates, state = tx.update(grad_fn(params, 0), state, params, grad_fn=grad_fn)
    ...   params = optax.apply_updates(params, updates)
    >>> print(params.round(1))
    [1. 1.]

  References:
    Chaudhari et al., "Entropy-SGD: Biasing Gradient Descent Into Wide Valleys", ICLR 2017.
  """
  return optax.chain(
    _transform.from_arguments(locals()),
    _outer(
      mask, _outer_weight_decay(weight_decay), optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
    ),
  )
