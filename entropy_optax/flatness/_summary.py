"""The numbers the paper quotes about a spectrum."""

from __future__ import annotations

import numpy as np
from jax.flatten_util import ravel_pytree

from entropy_optax.flatness._slq import SpectralDensity


def as_numpy_values(values) -> np.ndarray:
  """Eigenvalues (an array or any pytree of arrays) as one float64 NumPy vector."""
  if isinstance(values, SpectralDensity):
    raise TypeError("Expected eigenvalues (an array or pytree), got a SpectralDensity.")
  return np.asarray(ravel_pytree(values)[0], dtype=np.float64)


def spectrum_summary(
  eigenvalues, *, thresholds: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
) -> dict[str, float]:
  r"""The numbers the paper quotes about a spectrum, as a dict of floats.

  For eigenvalues ``lambda_1..lambda_n`` (or a Fisher diagonal):
  ``count`` = n, ``max_eigenvalue`` = max lambda (largest positive),
  ``min_eigenvalue`` = min lambda (most negative; positive if none is),
  ``frac_negative`` = #{lambda < 0} / n and, per threshold t,
  ``frac_abs_below_{t:.0e}`` = ``#{|lambda| < t} / n`` (the paper: ~94% below
  1e-4 for small-LeNet, Fig. 1).

  Args:
    eigenvalues: an array, or any pytree of arrays (raveled), e.g. the output
      of `hessian_eigenvalues` or `fisher_diagonal`.
    thresholds: the absolute thresholds t.

  Returns:
    A dict with the keys above, values Python floats (``count`` an int).

  Examples:
    >>> import numpy as np
    >>> from entropy_optax import flatness
    >>> s = flatness.spectrum_summary(np.array([-0.5, 0.0, 5e-4, 2.0]))
    >>> s["frac_abs_below_1e-03"], s["min_eigenvalue"], s["count"]
    (0.5, -0.5, 4)

  References:
    Chaudhari et al., 2017. Entropy-SGD, ICLR 2017, Sec. 1 and 5.1.
  """
  values = as_numpy_values(eigenvalues)
  if values.size == 0:
    raise ValueError("spectrum_summary needs at least one eigenvalue.")
  summary: dict[str, float] = {
    "count": int(values.size),
    "max_eigenvalue": float(values.max()),
    "min_eigenvalue": float(values.min()),
    "frac_negative": float(np.mean(values < 0)),
  }
  for t in thresholds:
    summary[f"frac_abs_below_{t:.0e}"] = float(np.mean(np.abs(values) < t))
  return summary
