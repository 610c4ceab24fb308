"""gaussian_smoothing: the gradient of E f(x + σ eps), the baseline smoothing f itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from entropy_optax import _checks, _deprecation, _noise, _unroll
from entropy_optax._utils import canonical_key, is_concrete_number, to_chain

_GRAD_FN_HELP = (
  "gaussian_smoothing needs grad_fn, a function grad_fn(params, k) returning the loss "
  "gradient for sample k, passed as a keyword: "
  "tx.update(grads, opt_state, params, grad_fn=lambda p, k: jax.grad(loss)(p, batches[k]))."
)


class GaussianSmoothingState(NamedTuple):
  """State of :func:`~entropy_optax.gaussian_smoothing`.

  Attributes:
    smoothing_count: number of updates done so far (int32); σ is evaluated at it.
    smoothing_key: the PRNG key of the perturbations, split at every update.
  """

  smoothing_count: jax.Array
  smoothing_key: jax.Array


@_deprecation.renamed_keywords("noise_sampler")
def gaussian_smoothing(
  num_samples: int = 20,
  sigma: float | optax.Schedule = 0.01,
  *,
  key: jax.Array | int = 0,
  noise_distribution: _noise.NoiseDistribution = "gaussian",
  unroll: int | bool | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Replaces the gradient by the average of L gradients at x + σ N(0, I).

  The average is an unbiased estimate of the gradient of the Gaussian-smoothed loss
  f_sigma(x) = E f(x + σ eps), eps ~ N(0, I): smoothing f itself, where local entropy
  (:func:`~entropy_optax.local_entropy`) smooths exp(-f). With ``grad_fn`` the same contract and L
  the same number of gradient evaluations, it is the baseline that asks whether local entropy's
  choice of what to smooth matters (the two have the same width when σ^2 = T / γ, T =
  noise^2 / 2). Chain it with SGD or Adam like :func:`~entropy_optax.local_entropy`; it must come
  first and see raw gradients.

  ``update(updates, state, params, *, grad_fn, **extra_args)`` calls ``grad_fn(x + σ eps_k,
  k)`` for k = 0..L-1 (fresh eps_k each, a mini-batch each) and returns their mean in the dtype
  of ``params``. ``updates`` (the caller's gradient at x) is not used: it is not a sample of the
  smoothed gradient. So an update costs L gradient evaluations where ``local_entropy(L)`` costs
  L - 1 besides the caller's; a loop that evaluates at x anyway matches ``local_entropy(L)``'s
  cost with ``num_samples = L - 1``. Perturbations are drawn and summed in the chain dtype
  (at least float32), as the Langevin noise.

  Args:
    num_samples: L >= 1, the gradient evaluations averaged per update.
    sigma: the smoothing width σ >= 0, a float or a schedule of the update count.
    key: PRNG key or seed of the perturbations.
    noise_distribution: the distribution of the perturbations: "gaussian" (default: the kernel
      is then exactly Gaussian) or "irwin_hall" (cheaper; same mean and variance, a slightly
      different kernel). Called ``noise_sampler`` in 0.1.0 (still accepted,
      with a DeprecationWarning).
    unroll: ``lax.scan`` unrolling over the samples; None: as the Langevin chain.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, entropy_optax
    >>> grad_fn = lambda p, k: 2.0 * p  # f = |p|^2: the smoothed gradient is 2 p, exactly
    >>> tx = optax.chain(entropy_optax.gaussian_smoothing(10, 0.0), optax.sgd(0.1))
    >>> params = jnp.ones(2)
    >>> updates, state = tx.update(grad_fn(params, 0), tx.init(params), params, grad_fn=grad_fn)
    >>> print(updates)
    [-0.2 -0.2]

  References:
    Nesterov, Spokoiny, "Random Gradient-Free Minimization of Convex Functions", 2017
    (Gaussian smoothing); Chaudhari et al., "Entropy-SGD", ICLR 2017 (the comparison).
  """
  if (
    not isinstance(num_samples, (int, np.integer))
    or isinstance(num_samples, bool)
    or num_samples < 1
  ):
    raise ValueError(f"num_samples must be a Python int >= 1, got {num_samples!r}.")
  if is_concrete_number(sigma) and not sigma >= 0:
    raise ValueError(f"sigma must be >= 0 (or an optax schedule), got {sigma}.")
  _noise.check_distribution(noise_distribution)

  def init_fn(params):
    del params
    return GaussianSmoothingState(
      smoothing_count=jnp.zeros([], jnp.int32), smoothing_key=canonical_key(key)
    )

  def update_fn(updates, state, params=None, *, grad_fn: Callable | None = None, **extra_args):
    del updates, extra_args  # The gradient at x is no sample; the extras are for the chain.
    if grad_fn is None:
      raise TypeError(_GRAD_FN_HELP)
    if params is None:
      raise TypeError(
        "gaussian_smoothing needs params: tx.update(grads, opt_state, params, grad_fn=...)."
      )
    sigma_t = jnp.asarray(sigma(state.smoothing_count) if callable(sigma) else sigma, jnp.float32)
    next_key, samples_key = jax.random.split(state.smoothing_key)
    x = to_chain(params)

    def sample_gradient(total, inputs):
      k, sample_key = inputs
      eps = _noise.tree_noise(sample_key, x, noise_distribution)
      point = jax.tree.map(lambda a, e, p: (a + sigma_t * e).astype(p.dtype), x, eps, params)
      grads = grad_fn(point, k)
      _checks.check_gradient_tree(grads, params)
      return jax.tree.map(lambda t, g: t + g.astype(t.dtype), total, grads), None

    step = unroll
    if step is None:
      step = _unroll.default_unroll(num_samples, lambda: grad_fn(params, jnp.int32(0)))
    zeros = jax.tree.map(jnp.zeros_like, x)
    total, _ = jax.lax.scan(
      sample_gradient,
      zeros,
      (jnp.arange(num_samples, dtype=jnp.int32), jax.random.split(samples_key, num_samples)),
      unroll=step,
    )
    new_updates = jax.tree.map(lambda t, p: (t / num_samples).astype(p.dtype), total, params)
    # As local_entropy: a non-finite estimate is passed on, count and key stay, so that an
    # optax.apply_if_finite after this transformation skips the step.
    finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(t)) for t in jax.tree.leaves(total)]))
    new_state = GaussianSmoothingState(
      smoothing_count=jnp.where(
        finite, optax.safe_increment(state.smoothing_count), state.smoothing_count
      ),
      smoothing_key=jnp.where(finite, next_key, state.smoothing_key),
    )
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
