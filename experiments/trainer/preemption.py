"""SIGTERM and SIGINT: a checkpoint at the next call boundary, then a clean exit.

Preemptible machines send SIGTERM and give a grace period before they go away; Ctrl-C sends
SIGINT. While the loop trains, ``StopOnSignal`` turns either into a request: the call in flight
(its steps are already dispatched to the device) finishes, its records are written, a
checkpoint of that step is saved, and the loop raises ``Interrupted``, whose message says how
to continue (``--resume``). No step is lost, and as the checkpoint falls on a call boundary the
resumed run makes the same calls as an uninterrupted one: it ends bit for bit where that one
does (on CPU). A second signal stops at once (``KeyboardInterrupt``), even in the middle of a
save: orbax writes a step to a temporary directory first and the checksums come last, so a
resume never restores that step (``experiments.run.checkpoints``) and falls back to the one
before. With several processes a signal that reached one of them stops them all after the same
call (``StopOnSignal.agree``): they save that checkpoint together.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

from experiments.run import signals

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(signals.Stopped):
  """The loop stopped at a signal after saving what it could; ``exit_code`` = 128 + signal."""


class StopOnSignal:
  """SIGINT and SIGTERM handlers that record the first signal and raise at the second.

  ``install()`` and ``restore()`` bracket the loop; handlers can only be set from the main
  thread, elsewhere the signals keep their handlers (and ``requested`` stays None).
  """

  def __init__(self, log: Callable[[str], None] = print):
    self.log = log
    self.requested: int | None = None  # the first signal's number
    self._previous: dict[int, object] = {}

  def install(self) -> None:
    """Sets the handlers; a signal the command received before the loop
    (``experiments.run.signals.pending``) counts as this one's first."""
    if threading.current_thread() is not threading.main_thread():
      return
    for signum in SIGNALS:
      self._previous[signum] = signal.signal(signum, self._handle)
    if signals.pending() is not None and self.requested is None:
      self._handle(signals.pending(), None)

  def restore(self) -> None:
    """Puts the previous handlers back; a signal the loop did not act on (every seed had
    diverged) stays requested for the command (``experiments.run.signals.request``)."""
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()
    if self.requested is not None:
      signals.request(self.requested)

  def _handle(self, signum: int, frame) -> None:
    del frame
    if self.requested is not None:
      raise KeyboardInterrupt  # the second signal: stop now
    self.requested = signum
    self.log(
      f"{signal.Signals(signum).name}: saving a checkpoint when the steps in flight are done "
      "(send it again to stop at once)"
    )

  def agree(self, largest: Callable[[int], int]) -> bool:
    """Whether to stop now, the same answer on every process of the run: ``largest`` gives the
    largest of the processes' first signal numbers (0: none; ``distributed.largest``), so a
    signal that reached one process stops all of them after the same call, which they then
    checkpoint together. A signal that arrives after this call counts at the next one."""
    signum = largest(self.requested or 0)
    if signum and self.requested is None:
      self.requested = signum
      self.log(
        f"{signal.Signals(signum).name} reached another process of the run: saving a "
        "checkpoint when the steps in flight are done"
      )
    return signum != 0

  def message(self, where: str, step: int, saved: bool) -> str:
    """The line that ends an interrupted run."""
    name = signal.Signals(self.requested).name if self.requested else "signal"
    if saved:
      return (
        f"{name}: {where} stopped at step {step}, checkpoint saved; continue the run with --resume"
      )
    return (
      f"{name}: {where} stopped at step {step} without a checkpoint (it keeps none: "
      "--checkpoint-every-evals 0); --resume would start it afresh"
    )
