"""The loss under random perturbations of growing radius at one final point, and the local
entropy read from it: measured with ``entropy_optax.flatness.perturbation_profile``, reported as
a Markdown table and a figure (loss against radius, one curve per run).

Two kinds of radius: relative (a fraction of each weight array's norm, so that the
scale-invariant weights feeding a BatchNorm are moved as much as any other) and absolute (a
Euclidean length in the flat weight space; the paper's local entropy
``log E exp(-f(x + r d))``, with ``r = sqrt(n / gamma)``, is read on these spheres).
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from entropy_optax import flatness

KINDS = {"relative": "relative radius (fraction of each weight array's norm)", "absolute": "radius"}


def measure(loss_fn, params, batches, radii_by_kind: dict[str, tuple[float, ...]], samples: int):
  """``{kind: {radii, mean, std, local_entropy}}`` (JSON lists) for each kind with radii; the
  directions are drawn from one fixed key, so the runs of one model share them."""
  out = {}
  for kind, radii in radii_by_kind.items():
    if not radii:
      continue
    profile = flatness.perturbation_profile(
      loss_fn, params, batches, radii, num_samples=samples, key=0, relative=kind == "relative"
    )
    losses = np.asarray(profile.losses, np.float64)
    out[kind] = {
      "radii": [float(r) for r in radii],
      "mean": losses.mean(axis=1).tolist(),
      "std": losses.std(axis=1, ddof=1).tolist() if samples > 1 else [0.0] * len(radii),
      "local_entropy": np.asarray(flatness.local_entropy(profile), np.float64).tolist(),
    }
  return out


def table(columns: dict[str, dict[str, Any]]) -> str:
  """Mean loss ± std over the directions, and the local entropy, per radius and run."""
  lines = []
  kinds = [k for k in KINDS if any(k in c.get("perturbation", {}) for c in columns.values())]
  for kind in kinds:
    lines += [
      f"| {kind} radius | "
      + " | ".join(f"{n}: loss" for n in columns)
      + " | "
      + " | ".join(f"{n}: local entropy" for n in columns)
      + " |",
      "|---|" + "---|" * (2 * len(columns)),
    ]
    first = next(iter(columns.values()))["perturbation"][kind]
    for i, r in enumerate(first["radii"]):
      cells = [
        f"{c['perturbation'][kind]['mean'][i]:.4f} ± {c['perturbation'][kind]['std'][i]:.4f}"
        for c in columns.values()
      ] + [f"{c['perturbation'][kind]['local_entropy'][i]:.4f}" for c in columns.values()]
      lines.append(f"| {r:g} | " + " | ".join(cells) + " |")
    lines.append("")
  return "\n".join(lines)


def plot(columns: dict[str, dict[str, Any]], path: pathlib.Path, title: str) -> None:
  """Mean training loss against radius (band: ± one std over the directions), per kind."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  kinds = [k for k in KINDS if any(k in c.get("perturbation", {}) for c in columns.values())]
  fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4), squeeze=False)
  for ax, kind in zip(axes[0], kinds):
    for label, c in columns.items():
      p = c["perturbation"][kind]
      r, mean, std = (np.asarray(p[k]) for k in ("radii", "mean", "std"))
      (line,) = ax.plot(r, mean, marker="o", label=label)
      ax.fill_between(r, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xlabel(KINDS[kind])
    ax.set_ylabel("training loss at x + r d")
    ax.set_yscale("log")
    ax.legend()
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
