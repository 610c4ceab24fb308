"""Metrics records: ``metrics.jsonl``, one JSON object per jitted call and seed.

One writer (``append``, ``rewrite``) and one reader (``read``): a last line cut by a kill is
dropped on reading, never a crash. ``make`` turns a call's device metrics into records.

A record: ``step`` (outer steps done), ``seed``, ``epoch`` (outer epochs: step /
steps_per_epoch), ``effective_epochs`` (L x epoch), ``wall_time`` (s since the run started,
resumed runs included), ``train_loss`` (mean over the call), the ``LangevinStats`` fields of a
local-entropy optimizer (``gamma``: the last; the others: means), Parle's ``elastic_rho`` (the
last) and ``replica_spread`` (mean), and after an evaluation
``val_loss`` and ``val_error`` (a fraction, on the test split).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

METRICS_FILE = "metrics.jsonl"


def read(path: str | os.PathLike) -> list[dict[str, Any]]:
  """The records in ``path`` (a directory's ``metrics.jsonl`` or the file); [] if absent.

  A line that does not parse (cut by a kill while being written) ends the records.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    path = path / METRICS_FILE
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      break
  return records


def _lines(records: Iterable[Mapping[str, Any]]) -> str:
  return "".join(json.dumps(r) + "\n" for r in records)


def append(path: pathlib.Path, records: Iterable[Mapping[str, Any]]) -> None:
  with open(path, "a") as f:
    f.write(_lines(records))


def rewrite(path: pathlib.Path, records: Iterable[Mapping[str, Any]]) -> None:
  """Replaces the file atomically (a resumed run keeps the records up to its checkpoint)."""
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "w") as f:
    f.write(_lines(records))
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


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
