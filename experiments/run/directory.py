"""A run directory: its files, the policy that protects them, and the resume decision.

A run directory holds ``config.json`` (the run's config and facts about the machine),
``metrics.jsonl`` (one record per jitted call and seed), ``checkpoints/`` and their checksums
(``experiments.run.checkpoints``), ``tensorboard/`` (the records as TensorBoard events,
``experiments.run.tensorboard``), ``results.json`` and a plot; a job of several runs holds
``grid.json`` and one run directory per run. This module is the one place that names these
files, reads and writes them, and decides whether a directory is a run to resume:

* ``writing``: one writer per run (a lock file naming the host, process and start time; a
  second writer is refused, the lock of a dead process taken over) and ``prepare``: never
  overwrite a run by accident, never delete what is not one;
* ``RunFiles``: what the training loop writes (config.json, records, checkpoints, events) and
  the one resumability check (``check_resumable``: the saved run is this one);
* ``read_records`` / ``append_records`` / ``rewrite_records``: ``metrics.jsonl``; a last line
  cut by a kill is dropped on reading, never a crash;
* ``read_json`` / ``write_json``: the other JSON files, written atomically; ``read_results``:
  a results.json.
* Every file is strict JSON (``to_json``): a number that is not finite is written as null,
  which ``read_records`` and ``read_results`` read back as NaN.

With several processes (``experiments.run.distributed``) process 0 alone prepares, locks and
writes the directory; every process takes part in the checkpoints' saves and restores, and
process 0's verdict on which checkpoint is good holds for all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import pathlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

import entropy_optax
from experiments.run import checkpoints as ckpt_lib
from experiments.run import distributed, schema
from experiments.run import tensorboard as tensorboard_lib
from experiments.run.checkpoints import CheckpointError
from experiments.run.schema import ConfigError, RunConfig

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"

RESULTS_FILE = "results.json"
GRID_FILE = "grid.json"
LOCK_FILE = "writer.lock"
# Files that mark a directory as a run (or a grid of runs) that --overwrite may replace.
RUN_MARKERS = (CONFIG_FILE, METRICS_FILE, RESULTS_FILE, GRID_FILE, "checkpoints")


class RunExistsError(RuntimeError):
  """The run directory holds a run and neither --resume nor --overwrite was given."""


class WorkdirError(OSError):
  """The run directory cannot be used (unwritable, not a run, nothing to resume)."""


class RunLockedError(WorkdirError):
  """Another live process is writing the run directory."""


def is_run_dir(path: pathlib.Path) -> bool:
  return any((path / name).exists() for name in RUN_MARKERS)


@dataclasses.dataclass(frozen=True)
class Holder:
  """Who writes a run: the lock file's content."""

  host: str
  pid: int
  started: str  # UTC, ISO 8601
  process_start: str | None = None  # /proc's start time of pid: tells a reused pid apart

  def describe(self) -> str:
    return f"process {self.pid} on {self.host} (since {self.started})"

  def alive(self) -> bool | None:
    """Whether the process still runs (None: on another host, it cannot be told)."""
    if self.host != socket.gethostname():
      return None
    try:
      os.kill(self.pid, 0)
    except ProcessLookupError:
      return False
    except PermissionError:  # it exists, under another user
      return True
    return self.process_start is None or self.process_start == _process_start(self.pid)


def _process_start(pid: int) -> str | None:
  try:  # field 22 of /proc/PID/stat, after the command name in brackets
    return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _this_process() -> Holder:
  now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
  return Holder(socket.gethostname(), os.getpid(), now, _process_start(os.getpid()))


def read_holder(path: pathlib.Path) -> Holder | None:
  """The holder of ``path``'s lock (None: no lock; an unreadable one counts as a dead holder)."""
  lock = pathlib.Path(path) / LOCK_FILE
  try:
    return Holder(**json.loads(lock.read_text()))
  except FileNotFoundError:
    return None
  except (OSError, ValueError, TypeError):
    return Holder("?", -1, "?")


def _refuse_if_held(path: pathlib.Path) -> Holder | None:
  """Raises ``RunLockedError`` if a live process holds ``path``; returns a dead holder."""
  holder = read_holder(path)
  if holder is None or holder.pid == os.getpid() and holder.host == socket.gethostname():
    return None
  alive = holder.alive() if holder.pid >= 0 else False
  if alive is False:
    return holder
  where = "" if alive else f" (on another host: if it has ended, delete {path / LOCK_FILE})"
  raise RunLockedError(
    f"{path} is being written by {holder.describe()}{where}; wait for it to end or stop it, "
    "or choose another --workdir (nothing was changed)."
  )


def _lock(path: pathlib.Path, stale: Holder | None, log: Callable[[str], None]) -> Holder:
  lock = path / LOCK_FILE
  if stale is not None:  # one taker wins the rename; another then meets the new lock
    with contextlib.suppress(FileNotFoundError):
      os.replace(lock, path / f"{LOCK_FILE}.stale")
      (path / f"{LOCK_FILE}.stale").unlink()
      log(f"{path}: took over the lock of {stale.describe()}, which is no longer running.")
  me = _this_process()
  try:
    fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    _refuse_if_held(path)  # raises if a live process took it meanwhile
    raise RunLockedError(f"{path}: another process took the lock meanwhile; try again.") from None
  with os.fdopen(fd, "w") as f:
    f.write(json.dumps(dataclasses.asdict(me)) + "\n")
  return me


def _unlock(path: pathlib.Path, me: Holder) -> None:
  if read_holder(path) == me:
    (path / LOCK_FILE).unlink(missing_ok=True)


@contextlib.contextmanager
def writing(
  workdir: str | os.PathLike,
  *,
  resume: bool,
  overwrite: bool,
  log: Callable[[str], None] = print,
) -> Iterator[bool]:
  """Holds ``workdir`` as its one writer while the block runs; yields whether it holds a run
  to resume (``prepare``).

  A run written by another live process is refused (``RunLockedError`` naming it), before
  anything else is checked or changed; the lock of a process that is no longer running is
  taken over, with a line to ``log``. With several processes, process 0 does this; the
  others learn its answer.
  """
  path = pathlib.Path(workdir)
  held: list[Holder] = []

  def claim() -> bool:
    stale = _refuse_if_held(path)
    resuming = prepare(path, resume=resume, overwrite=overwrite)
    held.append(_lock(path, stale, log))
    return resuming

  resuming = distributed.writer_decides(claim)
  try:
    yield bool(resuming)
  finally:
    if held:
      _unlock(path, held[0])


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

  A line that does not parse (cut by a kill while being written) ends the records. A null is a
  number that was not finite (``to_json``) and is read as NaN.
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
      records.append(_nan_for_null(json.loads(line)))
    except json.JSONDecodeError:
      break
  return records


def _lines(records: Iterable[Mapping[str, Any]]) -> str:
  return "".join(to_json(r) + "\n" for r in records)


def append_records(path: pathlib.Path, records: Iterable[Mapping[str, Any]]) -> None:
  with open(path, "a") as f:
    f.write(_lines(records))


def rewrite_records(path: pathlib.Path, records: Iterable[Mapping[str, Any]]) -> None:
  """Replaces the file atomically (a resumed run keeps the records up to its checkpoint)."""
  ckpt_lib.atomic_write(path, _lines(records))


# Config fields that change the trajectory: a resumed run must use the values it was saved with.
_TRAJECTORY_FIELDS = (
  "batch_size",
  "langevin_steps",
  "fresh_batches",
  "seed",
  "num_seeds",
  "step_runner",
)


def _code_version() -> str | None:
  try:
    return (
      subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        cwd=pathlib.Path(__file__).parent,
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
      ).stdout.strip()
      or None
    )
  except (OSError, subprocess.SubprocessError):
    return None


class RunFiles:
  """config.json, metrics.jsonl, the checkpoints and the TensorBoard events of a run directory
  (the events are rewritten from the records kept on opening, then appended with them)."""

  def __init__(self, workdir, config, run_info: dict[str, Any], log):
    self.workdir = pathlib.Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.config, self.run_info, self.log = config, run_info, log
    self.writer = distributed.is_writer()
    self.config_path = self.workdir / CONFIG_FILE
    self.records_path = self.workdir / METRICS_FILE
    self.failed = False  # a write failed (the disk): closing may fail too
    self.checkpoints = (
      ckpt_lib.Checkpoints(self.workdir, config.keep_checkpoints)
      if config.checkpoint_every_steps
      else None
    )
    self.events: tensorboard_lib.Events | None = None

  def open(self, state: dict[str, Any], resume: bool | None):
    """Opens the run as ``resume`` says (None: resume if there is a checkpoint); writes
    config.json.

    Args:
      state: the loop's state as a dict of arrays (the template a checkpoint restores into).
      resume: True: a checkpoint must exist; False: none may exist; None: either.

    Returns:
      ``(restored, previous)``: the restored state dict (None when starting afresh) and the
      records up to its step.
    """
    available = self.checkpoints.steps() if self.checkpoints is not None else []
    if resume is False and available:
      raise CheckpointError(
        f"{self.workdir} has checkpoints {available}: resume the run "
        "with --resume, or start afresh with --overwrite."
      )
    previous: list[dict[str, Any]] = []
    step, restored = None, None
    if resume is not False and available:
      check_resumable(self.config_path, self.run_info)
      step = self.checkpoints.agreed_latest_good(self.log)
    if resume is True and step is None:
      raise CheckpointError(
        f"{self.workdir} has no checkpoint: there is nothing to resume; "
        "drop --resume to start the run."
      )
    if step is not None:
      restored = self.checkpoints.restore(step, state)
      previous = [r for r in read_records(self.records_path) if r["step"] <= step]
    info = dict(
      self.run_info,
      code_version=_code_version(),
      jax=jax.__version__,
      entropy_optax=entropy_optax.__version__,
      device_history=_device_history(self.config_path, step, self.run_info.get("devices")),
    )
    try:
      if self.writer:
        write_json(self.config_path, info)
        rewrite_records(self.records_path, previous)
      if self.config.tensorboard and self.writer:
        self.events = tensorboard_lib.Events(
          self.workdir / tensorboard_lib.EVENTS_DIR,
          self.config.seeds,
          self.run_info["metadata"].get("experiment") or self.run_info["config"],
          start_time=time.time() - (previous[-1]["wall_time"] if previous else 0.0),
        )
        self.events.rebuild(previous)
    except OSError as e:
      what = f"{CONFIG_FILE}, {METRICS_FILE} and the TensorBoard events"
      raise self.disk_error(what, e) from None
    return restored, previous

  def write(self, step: int, records, checkpoint: dict[str, Any] | None) -> None:
    """Appends a call's ``records`` and their events (process 0); saves ``checkpoint`` (a
    state dict) when given (every process).

    Raises:
      WorkdirError: the disk refused a write (full, read-only, the directory gone); the run
        stops there, its last complete checkpoint intact (``disk_error``).
    """
    what = f"the records of step {step}"
    try:
      if self.writer:
        append_records(self.records_path, records)
      if self.events is not None:
        what = f"the TensorBoard events of step {step}"
        self.events.write(records)
      if checkpoint is not None and self.checkpoints is not None:
        what = f"the checkpoint of step {step}"
        self.checkpoints.save(step, checkpoint)
    except OSError as e:
      self.failed = True
      raise self.disk_error(what, e) from None

  def disk_error(self, what: str, error: OSError) -> WorkdirError:
    """The one line that stops a run whose directory refused ``what``: why, and what is kept."""
    if not self.workdir.is_dir():
      return WorkdirError(
        f"cannot write {what}: the run directory {self.workdir} no longer exists; the run "
        "stopped (its files went with the directory)."
      )
    complete = (
      sorted(int(p.stem) for p in self.checkpoints.checksums.glob("*.json"))
      if (self.checkpoints is not None and self.checkpoints.checksums.is_dir())
      else []
    )
    kept = (
      f"the checkpoint of step {complete[-1]} is intact: free space or make {self.workdir} "
      "writable, then continue the run with --resume"
      if complete
      else "no checkpoint was complete yet: --resume will start the run afresh"
    )
    return WorkdirError(
      f"cannot write {what} in {self.workdir} ({error.strerror or error}); the run stopped; {kept}."
    )

  def close(self) -> None:
    distributed.barrier("run files closed")  # process 0's last records are written
    try:
      if self.events is not None:
        self.events.close()
      if self.checkpoints is not None:
        self.checkpoints.close()
    except Exception:  # after a failed write: its error is the one to report
      if not self.failed:
        raise


def _device_history(
  config_path: pathlib.Path, step: int | None, devices: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
  """Which mesh trained which steps: the saved history up to the restored ``step``, and this
  session's devices from ``step`` (a run may be resumed on other devices)."""
  history = []
  if step is not None and config_path.exists():
    saved = read_json(config_path).get("device_history", [])
    history = [h for h in saved if h["from_step"] < step]
  return [*history, {"from_step": step or 0, **dict(devices or {})}]


def check_resumable(config_path: pathlib.Path, run_info: dict[str, Any]) -> None:
  """The one resumability check: the run saved in ``config_path`` is the run ``run_info``
  describes (its trajectory fields and its metadata, which holds the experiment's config).

  Raises:
    CheckpointError: config.json is missing or describes another run.
  """
  if not config_path.exists():
    raise CheckpointError(
      f"{config_path} is missing: the checkpoints beside it cannot be "
      "checked against this run; start afresh with --overwrite."
    )
  saved = json.loads(config_path.read_text())
  diffs = [
    f"{name}: saved {saved['config'].get(name)!r}, now {run_info['config'][name]!r}"
    for name in _TRAJECTORY_FIELDS
    if saved["config"].get(name) != run_info["config"][name]
  ]
  if saved.get("metadata", {}) != json.loads(to_json(run_info["metadata"])):
    diffs.append("the run's configuration differs")
  if diffs:
    raise CheckpointError(
      "the checkpoints in this run directory are from another run ("
      + "; ".join(diffs)
      + "): use another --workdir."
    )


def saved_config(
  workdir: pathlib.Path, explicit: Mapping[str, Any], prefix: str = ""
) -> RunConfig | None:
  """The config a run in ``workdir`` was started with (None if it never started): what a
  resumed run continues with, the options given explicitly checked against it.

  Raises:
    ConfigError: an option given explicitly (``explicit``) differs from the saved value.
  """
  path = pathlib.Path(workdir) / CONFIG_FILE
  if not path.exists():
    return None
  experiment = read_json(path).get("metadata", {}).get("experiment")
  if experiment is None:
    raise ConfigError(
      f"{workdir} holds a run that these scripts did not start; choose another --workdir."
    )
  saved = schema.from_json(experiment)
  differ = [
    f"--{prefix}{schema.option(k)[2:]} {v} (saved: {getattr(saved, k)})"
    for k, v in dict(explicit).items()
    if getattr(saved, k) != v
  ]
  if differ:
    raise ConfigError(
      f"{workdir} was started with another configuration: {'; '.join(differ)}. "
      "Drop these options to resume it, or start a new run (--overwrite or "
      "another --workdir)."
    )
  return saved
