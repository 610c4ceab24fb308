"""Flatness diagnostics: the Hessian eigenspectrum at a solution.

Sec. 5.1 of the Entropy-SGD paper measures how flat the minima found by an
optimizer are: the exact Hessian eigenspectrum for networks of ~50k weights
(Figs. 1 and 3: ~94% of the eigenvalues have ``|λ| < 1e-4``, a long positive
tail, a short negative one) and, for a 1.6M-weight All-CNN-BN, the diagonal of
the empirical Fisher taken from Adam's second moments. This package computes
the same quantities for any JAX model, and the matrix-free estimates
(Lanczos, stochastic Lanczos quadrature, Hutchinson) that scale further.

Conventions shared by every function:

* ``loss_fn(params, batch) -> scalar`` is the mean loss over one batch. It
  may be any function, a closure or a lambda: the arrays (``jax.Array``) it
  closes over, its defaults, the arguments of a ``functools.partial`` or
  ``jax.tree_util.Partial`` and the ``self`` of a bound method are passed to
  the jitted code as traced arguments, and its code and other captured values
  key the compilation. So a closure over another model state (BatchNorm
  statistics, another seed's weights) of the same shapes reuses the compiled
  program, without ``__eq__``/``__hash__`` on the loss; NumPy arrays and
  Python numbers it captures stay constants.
* ``batches`` is either a ``list`` of batches (or an iterator such as a
  generator, or an iterable data loader, which is read to the end), or one
  pytree whose leaves all carry a leading axis that indexes the batches
  ("stacked"). A ``tuple`` or ``dict`` is read as a stacked pytree, since a
  batch is often an ``(x, y)`` tuple itself. Batches are stacked on the
  device, so they must share shapes.
* The Hessian analysed is that of the mean of the per-batch losses,
  ``H = (1/B) sum_b Hess loss_fn(params, batch_b)``; with batches of equal
  size that is the Hessian of the mean loss over all the examples. Batches are
  visited one at a time inside a ``jax.lax.scan``, so memory holds one batch's
  activations, not all of them.
* On XLA:CPU, for a loss that convolves, each batch's Hessian-vector product is
  instead a loop-free compiled program that the Lanczos, SLQ, Hutchinson and
  dense loops call through ``jax.pure_callback``: inside an XLA loop the CPU
  runtime misses its fast convolution kernels (a LeNet's product over 1000
  images took about 5 s in a loop and 1.3 s outside one). These functions are
  then not differentiable; under ``jax.vmap`` over the vectors they still compute
  a chunk together, over the parameters one element at a time.
* Parameters are flattened with ``jax.flatten_util.ravel_pytree`` and the
  analysis runs in at least float32 (``eigvalsh`` has no bfloat16 kernel).

The matrix-free functions (:func:`~entropy_optax.flatness.lanczos_extremes`,
:func:`~entropy_optax.flatness.spectral_density`) need the optional dependency ``matfree``
(the ``[flatness]`` extra); :func:`~entropy_optax.flatness.plot_spectrum` needs
``matplotlib``, imported by it only. The guide: :doc:`/flatness`.

References:
  Chaudhari et al., 2017. Entropy-SGD: Biasing Gradient Descent Into Wide
  Valleys. ICLR 2017, Sec. 5.1, Figs. 1 and 3.
  Ghorbani, Krishnan & Xiao, 2019. An Investigation into Neural Net
  Optimization via Hessian Eigenvalue Density. ICML 2019.
"""

# One module per job: _inputs (batches, parameters, keys), _loss (the loss as a jit argument),
# _hvp (Hessian-vector products), _exact (dense spectrum), _lanczos (extreme eigenvalues), _slq
# (spectral density), _hutchinson (trace), _perturb (the loss under random perturbations, the
# local entropy), _fisher (Fisher diagonals), _summary (the paper's statistics), _plot
# (histograms).

from entropy_optax.flatness import _inputs
from entropy_optax.flatness._exact import hessian_eigenvalues
from entropy_optax.flatness._fisher import fisher_diagonal, fisher_diagonal_from_adam
from entropy_optax.flatness._hutchinson import TraceEstimate, hutchinson_trace
from entropy_optax.flatness._hvp import hvp
from entropy_optax.flatness._lanczos import Extremes, lanczos_extremes
from entropy_optax.flatness._perturb import PerturbationProfile, local_entropy, perturbation_profile
from entropy_optax.flatness._plot import plot_spectrum
from entropy_optax.flatness._slq import SpectralDensity, gaussian_density, spectral_density
from entropy_optax.flatness._summary import spectrum_summary

#: The loss every flatness tool takes, ``loss_fn(params, batch)``, which returns a scalar
#: array (the mean loss over one batch).
LossFn = _inputs.LossFn

__all__ = [
  "Extremes",
  "SpectralDensity",
  "LossFn",
  "PerturbationProfile",
  "TraceEstimate",
  "fisher_diagonal",
  "fisher_diagonal_from_adam",
  "gaussian_density",
  "hessian_eigenvalues",
  "hutchinson_trace",
  "hvp",
  "lanczos_extremes",
  "local_entropy",
  "perturbation_profile",
  "plot_spectrum",
  "spectral_density",
  "spectrum_summary",
]
