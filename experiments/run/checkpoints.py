"""Checkpoints of a run: orbax, plus a checksum of every file, verified before each restore.

``Checkpoints(workdir)`` keeps the state under ``workdir/checkpoints/<step>`` (orbax writes a
step to a temporary directory and renames it when complete) and, once a step is complete, the
SHA-256 of each of its files in ``workdir/checkpoints.sha256/<step>.json``; the oldest kept
step is deleted only after that, so that a kill at any moment of a save leaves the ``keep``
steps before it verified. A step counts only when its checksums are there and match the
files: data garbled on disk is never restored (it would restore silently: orbax does not verify
the bytes), and an unreadable step is never handed to orbax (whose failures print asyncio
tracebacks). ``latest_good`` falls back to the
newest step that verifies and sets the bad ones aside.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from experiments.run import distributed, processes

CHECKPOINT_DIR = "checkpoints"
CHECKSUM_DIR = "checkpoints.sha256"


class CheckpointError(RuntimeError):
  """A checkpoint to resume from is missing, corrupt or does not match the run."""


def _file_digests(step_dir: pathlib.Path) -> dict[str, str]:
  digests = {}
  for path in sorted(step_dir.rglob("*")):
    if path.is_file():
      h = hashlib.sha256()
      with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          h.update(block)
      digests[str(path.relative_to(step_dir))] = h.hexdigest()
  return digests


def atomic_write(path: pathlib.Path, text: str) -> None:
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def os_error_code(error: BaseException) -> int | None:
  """The errno behind ``error`` (an ``OSError`` in its chain, or the ``os_error_code`` that
  tensorstore writes into orbax's messages), None if it is not a disk error."""
  while error is not None:
    if isinstance(error, OSError) and error.errno:
      return error.errno
    found = re.search(r"os_error_code='?(\d+)", str(error))
    if found:
      return int(found.group(1))
    error = error.__cause__ or error.__context__
  return None


class _ReportedDiskErrors(logging.Filter):
  """Drops orbax's log records of a disk error in ``directory`` (tracebacks from its writer
  threads, asyncio's "Task exception was never retrieved" of the same writes, whose exception
  is a disk error, and the "Event loop is closed" of writes that end after orbax closed its
  loop): the run reports that error in one line (``Checkpoints.save`` raises it as an
  ``OSError``)."""

  def __init__(self, directory: pathlib.Path):
    super().__init__()
    self.directory = str(directory)

  def filter(self, record: logging.LogRecord) -> bool:
    text = record.getMessage()
    if "os_error_code" in text and self.directory in text:
      return False
    error = record.exc_info[1] if record.exc_info else None
    return not _after_a_failed_write(error)


def _after_a_failed_write(error: BaseException | None) -> bool:
  """Whether ``error`` is what orbax's and tensorstore's background writes raise once a save
  has failed on the disk: the disk error itself, "Event loop is closed" (a write that ends
  after orbax closed its event loop) or "cannot schedule new futures after interpreter
  shutdown" (one still going as the process exits). The save's own error is reported."""
  if error is None:
    return False
  if isinstance(error, RuntimeError) and (
    "Event loop is closed" in str(error) or "after interpreter shutdown" in str(error)
  ):
    return True
  return os_error_code(error) is not None


def _quiet_unraisable(unraisable) -> None:
  """``sys.unraisablehook`` without the errors of ``_after_a_failed_write`` (from tensorstore's
  callbacks)."""
  if not _after_a_failed_write(unraisable.exc_value):
    _DEFAULT_HOOKS[0](unraisable)


def _quiet_thread_error(args) -> None:
  """``threading.excepthook`` without the errors of ``_after_a_failed_write`` (from orbax's
  writer threads)."""
  if not _after_a_failed_write(args.exc_value):
    _DEFAULT_HOOKS[1](args)


_DEFAULT_HOOKS = (sys.unraisablehook, threading.excepthook)


class Checkpoints:
  """orbax checkpoints of a state under ``workdir/checkpoints``, verified by checksums."""

  def __init__(self, workdir: str | os.PathLike, keep: int = 2):
    workdir = pathlib.Path(workdir).absolute()
    self.directory = workdir / CHECKPOINT_DIR
    self.checksums = workdir / CHECKSUM_DIR
    self.keep = keep
    self.manager = self._manager()
    quiet = _ReportedDiskErrors(self.directory)
    for name in ("absl", "asyncio", "concurrent.futures"):
      logging.getLogger(name).addFilter(quiet)
    if (sys.unraisablehook, threading.excepthook) == _DEFAULT_HOOKS:
      sys.unraisablehook, threading.excepthook = _quiet_unraisable, _quiet_thread_error

  def _manager(self) -> ocp.CheckpointManager:
    # Synchronous saves: the state buffers are donated to the next jitted call. No max_to_keep:
    # orbax would delete the oldest step as soon as the newest is complete, before its checksums
    # are written (``save`` deletes it once they are).
    options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(
      self.directory, options=options, item_handlers=ocp.StandardCheckpointHandler()
    )

  def steps(self) -> list[int]:
    """Every complete step orbax sees, verified or not."""
    return sorted(self.manager.all_steps())

  def save(self, step: int, state_dict: dict[str, Any]) -> None:
    """Saves ``state_dict`` as step ``step`` (every process writes its shards), then its
    checksums (process 0; a step without them is never restored); the steps older than the
    newest ``keep`` are deleted only once the checksums are written.

    Raises:
      OSError: the disk refused a write (full, read-only, the directory gone), with its errno;
        orbax's wrappers of such errors (tensorstore's ``ValueError``) are turned into one.
        With several processes, a refused checksum write raises on every process (the
        others raise ``processes.ProcessError``); a write refused inside orbax's collective
        save is marked ``processes.alone``.
    """
    try:
      self.manager.save(step, args=ocp.args.StandardSave(state_dict))
      self.manager.wait_until_finished()
    except Exception as e:  # orbax reports a disk error as a ValueError from tensorstore
      # The other processes may wait inside orbax's collective writes: this one stops alone.
      code = os_error_code(e)
      if code is None:
        processes.alone(e)
        raise
      error = OSError(code, os.strerror(code), str(self.directory / str(step)))
      raise processes.alone(error) from e
    distributed.barrier(f"checkpoint {step} saved")
    error = None
    try:
      self._write_checksums(step)
    except OSError as e:  # process 0 alone writes them: the others must hear of it
      error = e
    processes.stop_together(error)
    for old in self.steps()[: -self.keep]:  # every process: orbax's delete is collective
      self.manager.delete(old)
    if distributed.is_writer():
      kept = {str(s) for s in self.steps()}
      for path in self.checksums.glob("*.json"):
        if path.stem not in kept:
          path.unlink(missing_ok=True)

  def _write_checksums(self, step: int) -> None:
    if distributed.is_writer():
      self.checksums.mkdir(parents=True, exist_ok=True)
      digests = _file_digests(self.directory / str(step))
      atomic_write(self.checksums / f"{step}.json", json.dumps(digests, indent=0) + "\n")

  def problem(self, step: int) -> str | None:
    """Why step ``step`` cannot be restored (None if its files match their checksums)."""
    saved = self.checksums / f"{step}.json"
    if not saved.exists():
      return "it has no checksum (its save did not finish)"
    try:
      expected = json.loads(saved.read_text())
    except (OSError, ValueError):
      return "its checksum file is unreadable"
    actual = _file_digests(self.directory / str(step))
    bad = sorted(n for n in set(expected) | set(actual) if expected.get(n) != actual.get(n))
    return f"its files do not match their checksums ({', '.join(bad[:3])})" if bad else None

  def latest_good(self, log: Callable[[str], None] = print) -> int | None:
    """The newest step that verifies; newer bad steps are set aside (and logged)."""
    steps = self.steps()
    for step in reversed(steps):
      problem = self.problem(step)
      if problem is None:
        self.set_aside_after(step)
        return step
      log(
        f"checkpoint {self.directory / str(step)} is unusable: {problem}; falling back to "
        "an older one."
      )
    if steps:
      raise CheckpointError(
        f"every checkpoint in {self.directory} is unusable (corrupt or unfinished: steps "
        f"{steps}); nothing to resume from: start afresh with --overwrite (which deletes "
        "this run) or another --workdir."
      )
    return None

  def agreed_latest_good(self, log: Callable[[str], None] = print) -> int | None:
    """``latest_good`` decided by process 0 (which alone sets bad steps aside) and agreed by
    every process: they all restore the same step, or all fail."""
    if distributed.process_count() == 1:
      return self.latest_good(log)
    step = distributed.writer_decides(lambda: self.latest_good(log))
    self.manager.reload()  # process 0 may have moved bad steps aside
    return step

  def restore(self, step: int, target: dict[str, Any]) -> dict[str, Any]:
    """The state dict saved at ``step``, verified; ``target`` gives the structure, shapes and
    shardings (arrays or ``jax.ShapeDtypeStruct``), or None for the saved arrays as numpy."""
    problem = self.problem(step) if step in self.steps() else "it does not exist"
    if problem is not None:
      raise CheckpointError(
        f"checkpoint {self.directory / str(step)} cannot be restored: {problem}."
      )
    try:
      if target is None:  # onto this process's first device, whatever devices saved it
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        saved = self.manager.item_metadata(step)
        target = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved
        )
        restored = jax.device_get(self.manager.restore(step, args=ocp.args.StandardRestore(target)))
      else:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax raises many types for files that do not fit this run
      raise CheckpointError(
        f"checkpoint {self.directory / str(step)} does not fit this run "
        f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); resume it with the "
        "options it was started with, or start afresh with --overwrite."
      ) from None
    restored = restored.get("default", restored) if isinstance(restored, dict) else restored
    if int(np.max(np.asarray(restored["step"]))) != step:
      raise CheckpointError(
        f"checkpoint {self.directory / str(step)} holds step {restored['step']}, not {step}."
      )
    return restored

  def set_aside_after(self, step: int) -> None:
    """Moves checkpoints newer than ``step`` out of the way (never deletes them)."""
    newer = [s for s in self.steps() if s > step]
    if not newer:
      return
    aside = self.directory.parent / f"{CHECKPOINT_DIR}_set_aside_{time.time_ns()}"
    aside.mkdir(parents=True, exist_ok=True)
    for s in newer:
      shutil.move(str(self.directory / str(s)), str(aside / str(s)))
      (self.checksums / f"{s}.json").unlink(missing_ok=True)
    self.manager.close()
    self.manager = self._manager()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

  def __enter__(self) -> Checkpoints:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
