"""One writer per run directory: a lock file naming the host, the process and its start time.

``writing(workdir, ...)`` holds the directory while a run writes it and makes it ready
(``experiments.run.directory.prepare``): a second live writer is refused in one line naming
the holder, the lock of a process that has ended is taken over with a line saying so. With
several processes, process 0 takes the lock and the others learn its answer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import pathlib
import socket
from collections.abc import Callable, Iterator

from experiments.run import distributed
from experiments.run.directory import LOCK_FILE, WorkdirError, prepare


class RunLockedError(WorkdirError):
  """Another live process is writing the run directory."""


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
  except OSError as e:  # a read-only directory or disk, a full disk
    raise WorkdirError(
      f"cannot write the run directory {path} ({e.strerror or e}); make it writable or free "
      "space (nothing was changed)."
    ) from None
  try:
    with os.fdopen(fd, "w") as f:
      f.write(json.dumps(dataclasses.asdict(me)) + "\n")
  except OSError as e:
    lock.unlink(missing_ok=True)
    raise WorkdirError(
      f"cannot write the run directory {path} ({e.strerror or e}); free space or make it "
      "writable (nothing was changed)."
    ) from None
  return me


def _unlock(path: pathlib.Path, me: Holder) -> None:
  """Removes our lock; a directory that became read-only or vanished keeps it (a later writer
  takes over the lock of a process that has ended), and the run's own error is the one told."""
  if read_holder(path) == me:
    with contextlib.suppress(OSError):
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
