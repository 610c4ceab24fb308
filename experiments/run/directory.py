"""A run directory: its files, the policy that protects them, and the resume decision.

A run directory holds ``config.json`` (the run's config and facts about the machine),
``metrics.jsonl`` (one record per jitted call and seed), ``checkpoints/`` and their checksums
(``experiments.run.checkpoints``), ``tensorboard/`` (the records as TensorBoard events,
``experiments.run.tensorboard``), ``results.json`` and a plot; a job of several runs holds
``grid.json`` and one run directory per run. This module is the one place that names these
files, reads and writes them, and decides whether a directory is a run to resume:

* ``prepare``: never overwrite a run by accident, never delete what is not one (one writer
  at a time: ``experiments.run.writer_lock.writing`` calls it under the lock);
* the config a run saved, read back and checked: ``experiments.run.saved_config``
  (``experiments.run.run_files``: what the loop writes as it goes);
* ``read_records`` / ``append_records`` / ``rewrite_records``: ``metrics.jsonl``; a line cut
  by a kill is left out on reading, never a crash (``experiments.run.kept_records``: the
  copy kept with each checkpoint);
* ``read_json`` / ``write_json``: the other JSON files, written atomically; ``read_results``:
  a results.json.
* Every file is strict JSON (``to_json``): a number that is not finite is written as null,
  which ``read_records`` and ``read_results`` read back as NaN.

With several processes (``experiments.run.distributed``) process 0 alone prepares, locks and
writes the directory; every process takes part in the checkpoints' saves and restores, and
process 0's verdict on which checkpoint is good holds for all.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from experiments.run import checkpoints as ckpt_lib
from experiments.run.schema import ConfigError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"

RESULTS_FILE = "results.json"
PLOT_FILE = "error.png"  # a run's test error against effective epochs
SUMMARY_FILE = "summary.md"  # a job's table of its runs
GRID_FILE = "grid.json"
LOCK_FILE = "writer.lock"
# Files that mark a directory as a run (or a grid of runs) that --overwrite may replace.
RUN_MARKERS = (CONFIG_FILE, METRICS_FILE, RESULTS_FILE, GRID_FILE, "checkpoints")


class RunExistsError(RuntimeError):
  """The run directory holds a run and neither --resume nor --overwrite was given."""


class WorkdirError(OSError):
  """The run directory cannot be used (unwritable, not a run, nothing to resume)."""


def is_run_dir(path: pathlib.Path) -> bool:
  return any((path / name).exists() for name in RUN_MARKERS)


def prepare(workdir: str | os.PathLike, *, resume: bool, overwrite: bool) -> bool:
  """Makes ``workdir`` ready; returns whether it holds a run to resume.

  Raises:
    ConfigError: both ``resume`` and ``overwrite``.
    RunExistsError: ``workdir`` holds a run and neither ``resume`` nor ``overwrite`` is set.
    WorkdirError: ``workdir`` cannot be written, ``overwrite`` would delete a directory that
      is not a run, or ``resume`` finds no run to resume.
  """
  if resume and overwrite:
    raise ConfigError("--resume and --overwrite exclude each other: pick one.")
  path = pathlib.Path(workdir)
  existing = path.is_dir() and any(p.name != LOCK_FILE for p in path.iterdir())
  if resume:
    if not (existing and is_run_dir(path)):
      raise WorkdirError(
        f"{path} holds no run: there is nothing to resume; drop --resume to "
        "start the run there, or pass the --workdir of the run to resume."
      )
    return True
  if existing:
    if not is_run_dir(path):
      raise WorkdirError(
        f"{path} is a non-empty directory that holds no run; choose another "
        "--workdir (nothing was deleted)."
      )
    if not overwrite:
      raise RunExistsError(
        f"{path} already holds a run; pass --resume to continue it, "
        "--overwrite to replace it, or choose another --workdir."
      )
    _probe_writable(path, "nothing was deleted")  # a read-only run is never half deleted
    try:
      shutil.rmtree(path)
    except OSError as e:
      raise WorkdirError(
        f"cannot delete the run in {path} for --overwrite ({e.strerror or e}); make it "
        "writable, then run the command again (some of its files may be gone)."
      ) from None
  _probe_writable(path, "pass --workdir a writable directory")
  return False


def _probe_writable(path: pathlib.Path, hint: str) -> None:
  """Creates ``path`` if absent and writes and deletes a file in it.

  Raises:
    WorkdirError: it cannot be written (read-only, full, not a directory), with ``hint``.
  """
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / ".write_test"
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise WorkdirError(
      f"cannot write the run directory {path} ({e.strerror or e}); {hint}."
    ) from None


# Fields of results.json whose null means "none", not a number that was not finite.
_NULLABLE_RESULTS = ("paper",)


def to_json(value: Any, indent: int | None = None) -> str:
  """``value`` as strict JSON: a number that is not finite (NaN, infinity: a diverged run's
  loss) becomes null, as JavaScript's ``JSON.stringify`` writes it, so that strict parsers
  (``jq``, JavaScript, Go, serde) read every file a run writes; numpy scalars and arrays become
  numbers and lists; other objects (paths) their ``str``."""
  return json.dumps(_jsonable(value), indent=indent, allow_nan=False)


def _jsonable(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, np.bool_):
    return bool(value)
  if value is None or isinstance(value, (str, bool)):
    return value
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  if hasattr(value, "__array__"):  # numpy and jax arrays
    return _jsonable(np.asarray(value).tolist())
  return str(value)


def _nan_for_null(value: Any, keep: tuple[str, ...] = ()) -> Any:
  """``value`` read from JSON with every null NaN (but in the fields ``keep``)."""
  if isinstance(value, dict):
    return {k: v if k in keep else _nan_for_null(v, keep) for k, v in value.items()}
  if isinstance(value, list):
    return [_nan_for_null(v, keep) for v in value]
  return float("nan") if value is None else value


def read_json(path: str | os.PathLike) -> Any:
  """A JSON file as written (null stays None: config.json's options that are unset)."""
  return json.loads(pathlib.Path(path).read_text())


def read_results(path: str | os.PathLike) -> Any:
  """A results.json (a run's or a job's): its nulls, numbers that were not finite, are NaN."""
  return _nan_for_null(read_json(path), _NULLABLE_RESULTS)


def write_json(path: str | os.PathLike, value: Any) -> None:
  """Writes ``value`` as strict JSON (``to_json``), atomically (a temporary file renamed into
  place)."""
  ckpt_lib.atomic_write(pathlib.Path(path), to_json(value, indent=1) + "\n")


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
  """The records in ``path`` (a directory's ``metrics.jsonl`` or the file); [] if absent.

  A line that does not parse (cut by a kill or a full disk while being written) is left out,
  never a crash (``experiments.run.kept_records`` tells a resumed run which records are gone
  and restores them from the copy kept with its checkpoint). A null is a number that was not
  finite (``to_json``) and is read as NaN.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    path = path / METRICS_FILE
  if not path.exists():
    return []
  return parse_records(path.read_text())[0]


def parse_records(text: str) -> tuple[list[dict[str, Any]], list[int]]:
  """The records of a metrics.jsonl's ``text``, and the numbers (from 1) of its lines that do
  not parse."""
  records, bad = [], []
  for number, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      bad.append(number)
      continue
    if isinstance(record, dict):
      records.append(_nan_for_null(record))
    else:
      bad.append(number)
  return records, bad


def records_text(records: Iterable[Mapping[str, Any]]) -> str:
  """``records`` as metrics.jsonl's lines."""
  return "".join(to_json(r) + "\n" for r in records)


def append_records(path: pathlib.Path, records: Iterable[Mapping[str, Any]]) -> None:
  with open(path, "a") as f:
    f.write(records_text(records))


def rewrite_records(path: pathlib.Path, records: Iterable[Mapping[str, Any]]) -> None:
  """Replaces the file atomically (a resumed run keeps the records up to its checkpoint)."""
  ckpt_lib.atomic_write(path, records_text(records))
