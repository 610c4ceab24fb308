"""SIGINT and SIGTERM at any moment of a command: one line, exit 128 + signal, nothing half-written.

Left to Python, SIGINT raises ``KeyboardInterrupt`` wherever the main thread happens to be:
inside an import, inside a callback that jax's C++ code makes (where it is swallowed and the
command runs on, or the process crashes later), between writing a file and renaming it into
place; SIGTERM ends the process without a word. While ``deferred()`` holds (the scripts enter
it first thing, before their slow imports: ``defer_if_main``), either signal only records a
request, which the command acts on at its next safe point, ``check``: after the imports,
before each run trains, between the runs of a job and after the last write. Inside the
training loop ``experiments.trainer.preemption.StopOnSignal`` takes a pending request over
and stops after the call in flight, with a checkpoint.

The request stops the command with ``Stopped`` (a ``KeyboardInterrupt``), whose message is the
line to print and ``exit_code`` 128 + the signal (130 for SIGINT, 143 for SIGTERM). A second
signal stops at once: one line, then ``os._exit``. Every file is written to a temporary name
and renamed into place, so even then no file is half-written; the run directory's lock names
a process that has ended, which the next command takes over.

With several processes (``jax.distributed``) ``check`` leaves the request to the training
loop, where the processes agree on it after the same call.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
  """A signal stopped the command; the message is its one line, ``exit_code`` 128 + signal."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum


class _State:
  depth = 0  # how many deferred() blocks are open
  pending: int | None = None  # the first signal's number
  previous: dict[int, object] = {}


def _handle(signum: int, frame) -> None:
  del frame
  if _State.pending is not None:  # the second: at once (os._exit skips nothing half-written)
    name = signal.Signals(signum).name
    os.write(
      2,
      f"{name} again: stopped at once; every file written is whole (continue with --resume "
      "if the run had started)\n".encode(),
    )
    os._exit(128 + signum)
  _State.pending = signum


def _enter() -> bool:
  if threading.current_thread() is not threading.main_thread():
    return False  # handlers can only be set from the main thread
  if _State.depth == 0:
    _State.pending = None
    _State.previous = {s: signal.signal(s, _handle) for s in SIGNALS}
  _State.depth += 1
  return True


def _exit() -> None:
  _State.depth -= 1
  if _State.depth == 0:
    for signum, handler in _State.previous.items():
      signal.signal(signum, handler)
    _State.pending = None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
  """SIGINT and SIGTERM record a request (``pending``) while the block runs; nested blocks
  share it; the outermost restores the previous handlers and forgets the request. Outside the
  main thread (where handlers cannot be set) it does nothing."""
  entered = _enter()
  try:
    yield
  finally:
    if entered:
      _exit()


def defer_if_main(module_name: str) -> None:
  """Defers the signals for the rest of the process (as ``deferred()``, never left) when
  ``module_name`` is ``"__main__"``: a script calls it before its slow imports, so that a
  signal during them waits for ``check``."""
  if module_name == "__main__":
    _enter()


def pending() -> int | None:
  """The signal requested while ``deferred()`` holds (None: none)."""
  return _State.pending


def request(signum: int) -> None:
  """Records ``signum`` as requested (a signal the training loop received but did not act on)
  when ``deferred()`` holds."""
  if _State.depth and _State.pending is None:
    _State.pending = signum


def _other_processes() -> bool:
  jax = sys.modules.get("jax")
  return jax is not None and jax.distributed.is_initialized() and jax.process_count() > 1


def check(where: str, then: str) -> None:
  """Stops the command if a signal was requested: raises ``Stopped`` with the line
  ``"SIGNAME: stopped {where}; {then}"``.

  Args:
    where: what the command had done, e.g. ``"before runs/x started training"``.
    then: what the user can do next, e.g. ``"continue the job with --resume"``.
  """
  if _State.pending is not None and not _other_processes():
    signum = _State.pending
    raise Stopped(f"{signal.Signals(signum).name}: stopped {where}; {then}", signum)
