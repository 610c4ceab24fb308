"""Histograms of Hessian spectra, like Figs. 1 and 3 of the paper (the one matplotlib user)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from entropy_optax.flatness._slq import SpectralDensity
from entropy_optax.flatness._summary import as_numpy_values


def plot_spectrum(
  spectra,
  ax=None,
  *,
  bins: int = 100,
  value_range: tuple[float, float] | None = None,
  log: bool = True,
  sigma: float | None = None,
  title: str | None = None,
):
  """Histogram of Hessian eigenvalues, like the paper's figures 1 and 3.

  Draws one step histogram (eigenvalue counts per bin, log-scale counts by
  default) per spectrum, on shared bins so that spectra compare bin by bin.
  A `SpectralDensity` is drawn as a line: its smoothed density times ``n``
  times the bin width, i.e. the expected count per bin, in the same units.

  Args:
    spectra: eigenvalues (array, or pytree such as a Fisher diagonal), a
      `SpectralDensity`, or a mapping ``{label: either}`` to compare several,
      e.g. ``{"SGD": ev_sgd, "Entropy-SGD": ev_esgd}``. A mapping is always
      read as labelled spectra.
    ax: matplotlib Axes to draw on; a new figure's Axes by default.
    bins: number of bins.
    value_range: ``(low, high)`` eigenvalue range of the bins; default all
      values. Narrow it to zoom on the bulk near zero, as the paper's central
      panel does; values outside are not counted.
    log: log-scale counts (the paper's choice: the peak at zero dwarfs the
      tails).
    sigma: kernel width for `SpectralDensity` curves; default 1.5 bin widths.
    title: optional Axes title.

  Returns:
    The matplotlib Axes; ``ax.patches`` holds one histogram per eigenvalue
    spectrum and ``ax.lines`` one curve per `SpectralDensity`.

  Examples:
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from entropy_optax import flatness
    >>> rng = np.random.default_rng(0)
    >>> ax = flatness.plot_spectrum({"SGD": rng.normal(size=500),
    ...                              "Entropy-SGD": 0.1 * rng.normal(size=500)})
    >>> len(ax.patches)
    2

  References:
    Chaudhari et al., 2017. Entropy-SGD, ICLR 2017, Figs. 1 and 3.
  """
  try:
    import matplotlib.pyplot as plt  # Here only: importing the package needs no matplotlib.
  except ImportError as e:
    raise ImportError(
      "plot_spectrum needs matplotlib: `pip install matplotlib` (or "
      "`pip install entropy_optax[flatness]`)."
    ) from e

  if isinstance(spectra, Mapping):
    labelled = list(spectra.items())
  else:
    labelled = [(None, spectra)]
  if not labelled:
    raise ValueError("plot_spectrum got an empty mapping of spectra.")

  prepared = [
    (label, s if isinstance(s, SpectralDensity) else as_numpy_values(s)) for label, s in labelled
  ]
  if value_range is None:
    lows, highs = [], []
    for _, s in prepared:
      v = np.asarray(s.nodes) if isinstance(s, SpectralDensity) else s
      lows.append(v.min())
      highs.append(v.max())
    low, high = float(min(lows)), float(max(highs))
    if low == high:
      low, high = low - 0.5, high + 0.5
  else:
    low, high = map(float, value_range)
  edges = np.linspace(low, high, bins + 1)
  width = edges[1] - edges[0]

  if ax is None:
    _, ax = plt.subplots()
  for label, s in prepared:
    if isinstance(s, SpectralDensity):
      grid = np.linspace(low, high, 10 * bins)
      kernel = 1.5 * width if sigma is None else sigma
      counts = np.asarray(s.density(grid, kernel)) * s.num_params * width
      ax.plot(grid, counts, label=label)
    else:
      ax.hist(s, bins=edges, histtype="step", label=label)
  if log:
    ax.set_yscale("log")
  ax.set_xlabel("eigenvalue")
  ax.set_ylabel("count per bin")
  if title is not None:
    ax.set_title(title)
  if any(label is not None for label, _ in prepared):
    ax.legend()
  return ax
