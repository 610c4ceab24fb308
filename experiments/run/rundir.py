"""The run-directory policy: never overwrite a run by accident, never delete what is not one.

A run directory holds ``config.json``, ``metrics.jsonl``, ``checkpoints/`` (and their
checksums), ``results.json`` and a plot; a grid of runs holds ``grid.json`` and one run
directory per run.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Any

from experiments.run.schema import ConfigError

RESULTS_FILE = "results.json"
GRID_FILE = "grid.json"
# Files that mark a directory as a run (or a grid of runs) that --overwrite may replace.
RUN_MARKERS = ("config.json", "metrics.jsonl", RESULTS_FILE, GRID_FILE, "checkpoints")


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
  existing = path.is_dir() and any(path.iterdir())
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
    shutil.rmtree(path)
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / ".write_test"
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise WorkdirError(
      f"cannot write the run directory {path} ({e.strerror or e}); pass "
      "--workdir a writable directory."
    ) from e
  return False


def read_json(path: str | os.PathLike) -> Any:
  return json.loads(pathlib.Path(path).read_text())


def write_json(path: str | os.PathLike, value: Any) -> None:
  """Writes ``value`` atomically (a temporary file renamed into place)."""
  tmp = pathlib.Path(str(path) + ".tmp")
  tmp.write_text(json.dumps(value, indent=1, default=str) + "\n")
  os.replace(tmp, path)
