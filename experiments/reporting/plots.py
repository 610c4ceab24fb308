"""Plots of runs: an evaluated metric (by default the test error) against effective epochs, the
paper's Figs. 4-5."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def error_curves(
  records: Sequence[Mapping[str, Any]], key: str = "val_error", scale: float = 100.0
) -> tuple[np.ndarray, np.ndarray]:
  """Effective epochs (k,) and ``scale`` x ``key`` (seeds, k) of the evaluated records (by
  default the test error in %)."""
  evaluated = [r for r in records if key in r]
  seeds = sorted({r["seed"] for r in evaluated})
  x = np.array(sorted({r["effective_epochs"] for r in evaluated}))
  y = np.full((len(seeds), len(x)), np.nan)
  for r in evaluated:
    y[seeds.index(r["seed"]), np.searchsorted(x, r["effective_epochs"])] = scale * r[key]
  return x, y


def plot_error(
  panels: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
  path: str | os.PathLike,
  *,
  title: str | None = None,
  key: str = "val_error",
  scale: float = 100.0,
  ylabel: str = "test error (%)",
) -> None:
  """Test error (%) against effective epochs: one panel per entry of ``panels`` ({panel
  title: {line label: metrics records}}), each line the mean over seeds, their range shaded.
  ``key``, ``scale``, ``ylabel``: another evaluated metric (e.g. ``val_loss``)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
  for ax, (panel, runs) in zip(axes[0], panels.items()):
    for label, records in runs.items():
      x, y = error_curves(records, key, scale)
      kept = ~np.isnan(y).all(0)  # evaluations after every seed diverged: NaN
      x, y = x[kept], y[:, kept]
      if not len(x):
        continue
      (line,) = ax.plot(x, np.nanmean(y, axis=0), marker=".", label=label)
      if len(y) > 1:
        ax.fill_between(
          x, np.nanmin(y, axis=0), np.nanmax(y, axis=0), alpha=0.2, color=line.get_color()
        )
    ax.set(title=panel, xlabel="effective epochs", ylabel=ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # a run that diverged before evaluating has no line
      ax.legend()
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
