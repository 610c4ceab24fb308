"""Time to a target test accuracy, defined once for the main job and the sensitivity study.

The target of a comparison is ``TARGET_FRACTION`` (0.9) x the best final test accuracy (mean over
seeds) among the runs compared on one model; a run's time to target is the first evaluation at
which its mean test accuracy over seeds reaches the target, in effective epochs and in seconds
measured in the same run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from experiments.reporting import plots, summaries

TARGET_FRACTION = 0.9
"""The target is this fraction of the best compared run's final test accuracy."""


def accuracy_target(final_accuracies: Sequence[float]) -> float:
  """TARGET_FRACTION x the best of the compared runs' final mean test accuracies (those that
  are finite: a diverged run has none; NaN when no run has one).

  Examples:
    >>> round(accuracy_target([0.5, 0.8, float("nan")]), 2)
    0.72
  """
  finite = [a for a in final_accuracies if np.isfinite(a)]
  return TARGET_FRACTION * float(np.max(finite)) if finite else float("nan")


def time_to_target(
  accuracy: Sequence[float],
  effective_epochs: Sequence[float],
  seconds: Sequence[float],
  target: float,
) -> tuple[float, float]:
  """(effective epochs, seconds) at the first evaluation whose accuracy reaches ``target``.

  Args:
    accuracy: mean test accuracy over seeds at each evaluation, in order.
    effective_epochs: effective epochs at each evaluation.
    seconds: wall time at each evaluation (s since the run started).
    target: the accuracy to reach (same units as ``accuracy``).

  Returns:
    ``(effective_epochs, seconds)`` of that evaluation, ``(nan, nan)`` if none reaches it.

  Examples:
    >>> time_to_target([0.2, 0.6, 0.9], [1, 2, 3], [10.0, 20.0, 30.0], 0.5)
    (2.0, 20.0)
  """
  reached = np.nonzero(np.asarray(accuracy) >= target)[0]
  if not len(reached):
    return float("nan"), float("nan")
  first = int(reached[0])
  return float(effective_epochs[first]), float(seconds[first])


def run_time_to_target(
  records: Sequence[Mapping[str, Any]], target_accuracy_pct: float
) -> tuple[float, float]:
  """``time_to_target`` of a harness run's metrics records (accuracy in %, mean over seeds;
  seconds since the run started, compilation included)."""
  x, error = plots.error_curves(records)
  wall = {r["effective_epochs"]: r["wall_time"] for r in records if "val_error" in r}
  accuracy = 100 - np.nanmean(error, axis=0) if len(x) else []
  return time_to_target(accuracy, x, [wall[e] for e in x], target_accuracy_pct)


def comparison_times_to_target(
  results: Mapping[tuple[str, str], Mapping[str, Any]],
  records: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]],
) -> dict[tuple[str, str], dict[str, float]]:
  """Per (model, optimizer): the model's target (% accuracy) and the run's time to it.

  The seeds that diverged count for neither (their accuracy means nothing); a run whose every
  seed diverged has ``diverged_at_step`` (its first) instead of a time.
  """
  times = {}
  for model in dict.fromkeys(m for m, _ in results):
    keys = [k for k in results if k[0] == model]
    target = accuracy_target([100 - results[k]["test_error_mean"] for k in keys])
    for key in keys:
      diverged = {d["seed"]: d["step"] for d in results[key].get("diverged") or []}
      kept = [r for r in records[key] if r["seed"] not in diverged]
      epochs, seconds = run_time_to_target(kept, target)
      times[key] = {"target_accuracy": target, "effective_epochs": epochs, "seconds": seconds}
      if summaries.all_diverged(results[key]):
        times[key]["diverged_at_step"] = min(diverged.values())
  return times
