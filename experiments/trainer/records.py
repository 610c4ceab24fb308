"""Metrics records of the loop: one JSON object per jitted call and seed (``metrics.jsonl``).

A record: ``step`` (outer steps done), ``seed``, ``epoch`` (outer epochs: step /
steps_per_epoch), ``effective_epochs`` (L x epoch), ``wall_time`` (s since the run started,
resumed runs included), ``train_loss`` (mean over the call), the ``LangevinStats`` fields of a
local-entropy optimizer (``gamma``: the last; the others: means), Parle's ``elastic_rho`` (the
last) and ``replica_spread`` (mean), and after an evaluation ``val_loss`` and ``val_error`` (a
fraction, on the test split); a seed that diverged has ``diverged_at_step`` in every record from
then on (``experiments.trainer.divergence``), and its evaluations are NaN.
``experiments.run.directory`` reads and writes them (a number that is not finite as null, read
back as NaN).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np


def _json_value(value: Any) -> Any:
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


def make(
  *,
  step: int,
  seeds: Iterable[int],
  steps_per_epoch: int,
  langevin_steps: int,
  wall_time: float,
  metrics: Mapping[str, np.ndarray],
  evaluated: Mapping[str, np.ndarray] | None,
  batched: bool,
) -> list[dict[str, Any]]:
  """One record per seed from a call's metrics (a trailing steps axis) and evaluation."""
  epoch = step / steps_per_epoch
  out = []
  for s, seed in enumerate(seeds):
    pick = (lambda a: a[s]) if batched else (lambda a: a)
    record = {
      "step": step,
      "seed": seed,
      "epoch": epoch,
      "effective_epochs": langevin_steps * epoch,
      "wall_time": wall_time,
    }
    for name, values in metrics.items():
      values = pick(np.asarray(values))  # (steps,)
      last = name in ("langevin_gamma", "elastic_rho")  # scoped: the value the call ended with
      record[name] = _json_value(values[-1] if last else values.mean())
    for name, value in (evaluated or {}).items():
      record[name] = _json_value(pick(np.asarray(value)))
    out.append(record)
  return out
