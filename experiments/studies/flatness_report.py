"""The flatness experiment's report: the statistics side by side (Markdown) and the spectra's
histograms."""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from entropy_optax import flatness
from experiments.studies.flatness_analysis import THRESHOLDS

# Markdown rows; a "|" inside a cell is escaped.
ROWS = (
  [
    ("test error (%)", "test_error", "{:.2f}"),
    ("training loss", "loss", "{:.4f}"),
    ("weights", "count", "{:d}"),
    ("norm of the weights", "weight_norm", "{:.4g}"),
  ]
  + [(f"fraction \\|λ\\| < {t:.0e}", f"frac_abs_below_{t:.0e}", "{:.3f}") for t in THRESHOLDS]
  + [
    ("fraction λ < 0", "frac_negative", "{:.3f}"),
    ("largest λ", "max_eigenvalue", "{:.4g}"),
    ("most negative λ", "min_eigenvalue", "{:.4g}"),
  ]
)


def table(columns: dict[str, dict[str, Any]]) -> str:
  """The statistics side by side, one column per run (and seed)."""
  lines = ["| statistic | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
  for label, key, fmt in ROWS:
    lines.append(f"| {label} | " + " | ".join(fmt.format(c[key]) for c in columns.values()) + " |")
  return "\n".join(lines)


def array_table(columns: dict[str, dict[str, Any]]) -> str:
  """Each weight array's curvature side by side (``--per-array``): the largest eigenvalue of its
  Hessian block, its norm, and eigenvalue x norm², one row per array."""
  names = list(next(iter(columns.values()))["per_array"])
  lines = [
    "| array | " + " | ".join(f"{run}: λ max / norm / λ·norm²" for run in columns) + " |",
    "|---|" + "---|" * len(columns),
  ]
  for name in names:
    cells = []
    for c in columns.values():
      a = c["per_array"][name]
      cells.append(
        f"{a['max_eigenvalue']:.4g} / {a['norm']:.4g} / {a['eigenvalue_times_norm2']:.4g}"
      )
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(spectra: dict[str, Any], path: pathlib.Path, title: str) -> None:
  """Histograms of the spectra: everything (log counts), and the bulk around zero."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  flatness.plot_spectrum(spectra, left, title="all eigenvalues")
  values = [np.asarray(s.nodes if hasattr(s, "nodes") else s).ravel() for s in spectra.values()]
  scale = max(float(np.percentile(np.abs(v), 90)) for v in values) or 1e-3
  flatness.plot_spectrum(
    spectra,
    right,
    value_range=(-scale, scale),
    title=f"the bulk: |λ| < {scale:.2g} (90th percentile of |λ|)",
  )
  for ax in (left, right):
    ax.set_xlabel("eigenvalue")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


WHAT = {
  "exact": "Hessian eigenvalues (exact)",
  "lanczos": "Hessian spectrum (Lanczos extremes, SLQ fractions)",
  "fisher": "diagonal of the per-example empirical Fisher at the final point",
  "adam-fisher": "Adam's second moment along the trajectory (the paper's Fisher proxy)",
}
