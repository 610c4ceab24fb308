"""What the training loop writes into its run directory as it goes: ``RunFiles``.

config.json (the run and the devices it ran on, with their history across resumes),
metrics.jsonl, the TensorBoard events and the checkpoints, through the readers, writers and the
one resumability check of ``experiments.run.directory``. Process 0 alone writes the files;
every process takes part in the checkpoints. A write the disk refuses stops the run with one
line saying which checkpoint is intact.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import pathlib
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax

import entropy_optax
from experiments.run import checkpoints as ckpt_lib
from experiments.run import directory, distributed, kept_records, processes, saved_config
from experiments.run import tensorboard as tensorboard_lib
from experiments.run.checkpoints import CheckpointError
from experiments.run.schema import RunConfig


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


# The packages whose versions decide a run's numbers, recorded in config.json: the same code
# in two environments can round differently and end a 100-epoch run a few tenths apart.
_NUMERIC_PACKAGES = ("jax", "jaxlib", "numpy", "optax", "flax", "mnist1d")


def _package_versions() -> dict[str, str | None]:
  def version(name):
    try:
      return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      return None

  return {name: version(name) for name in _NUMERIC_PACKAGES}


# The newest checkpoints kept: 2 leaves one to fall back to when the newest is damaged.
KEEP_CHECKPOINTS = 2


class RunFiles:
  """config.json, metrics.jsonl, the checkpoints and the TensorBoard events of a run directory
  (the events are rewritten from the records kept on opening, then appended with them).

  Args:
    workdir: the run directory.
    config: the run (``experiments.run.schema.RunConfig``): a resumed run must be the same.
    run_info: what config.json holds: ``config`` (the run as a dict) and facts about it.
    seeds: the run's seeds (the TensorBoard runs).
    checkpoints: whether the run saves checkpoints.
    tensorboard: whether to write TensorBoard events.
    log: where a fallback to an older checkpoint is reported.
  """

  def __init__(
    self,
    workdir,
    config: RunConfig,
    run_info: dict[str, Any],
    *,
    seeds: Sequence[int],
    checkpoints: bool,
    tensorboard: bool,
    log,
  ):
    self.workdir = pathlib.Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.config, self.run_info, self.log = config, run_info, log
    self.seeds, self.tensorboard = list(seeds), tensorboard
    self.writer = distributed.is_writer()
    self.config_path = self.workdir / directory.CONFIG_FILE
    self.records_path = self.workdir / directory.METRICS_FILE
    self.failed = False  # a write failed (the disk): closing may fail too
    self.checkpoints = ckpt_lib.Checkpoints(self.workdir, KEEP_CHECKPOINTS) if checkpoints else None
    self.events: tensorboard_lib.Events | None = None
    self.kept: list[dict[str, Any]] = []  # the run's records so far (kept_records' copies)

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
      saved_config.check_resumable(self.config_path, self.config)
      step = self.checkpoints.agreed_latest_good(self.log)
    if resume is True and step is None:
      raise CheckpointError(
        f"{self.workdir} has no checkpoint: there is nothing to resume; "
        "drop --resume to start the run."
      )
    if step is not None:
      restored = self.checkpoints.restore(step, state)
      previous = kept_records.records_up_to(
        self.workdir,
        step,
        seeds=self.seeds,
        steps_per_call=self.run_info["schedule"]["steps_per_call"],
        log=self.log if self.writer else lambda line: None,
      )
    self.kept = list(previous)
    info = dict(
      self.run_info,
      code_version=_code_version(),
      jax=jax.__version__,
      entropy_optax=entropy_optax.__version__,
      packages=_package_versions(),
      device_history=_device_history(self.config_path, step, self.run_info.get("devices")),
    )
    try:
      if self.writer:
        directory.write_json(self.config_path, info)
        directory.rewrite_records(self.records_path, previous)
      if self.tensorboard and self.writer:
        self.events = tensorboard_lib.Events(
          self.workdir / tensorboard_lib.EVENTS_DIR,
          self.seeds,
          self.run_info["config"],
          start_time=time.time() - (previous[-1]["wall_time"] if previous else 0.0),
        )
        self.events.rebuild(previous)
    except OSError as e:
      what = f"{directory.CONFIG_FILE}, {directory.METRICS_FILE} and the TensorBoard events"
      raise self.disk_error(what, e) from None
    return restored, previous

  def write(self, step: int, records, checkpoint: dict[str, Any] | None) -> None:
    """Appends a call's ``records`` and their events (process 0); saves ``checkpoint`` (a
    state dict) when given (every process).

    Raises:
      WorkdirError: the disk refused a write (full, read-only, the directory gone); the run
        stops there, its last complete checkpoint intact (``disk_error``).
      ProcessError: another process's write failed (with several processes, a write that one
        of them cannot do stops them all after the same call).
    """
    what, error = f"the records of step {step}", None
    try:
      if self.writer:
        directory.append_records(self.records_path, records)
      if self.events is not None:
        what = f"the TensorBoard events of step {step}"
        self.events.write(records)
    except OSError as e:
      error = self.disk_error(what, e)
    self.failed = error is not None
    processes.stop_together(error)  # process 0 alone writes them: every process stops
    self.kept += records
    if checkpoint is None or self.checkpoints is None:
      return
    what = f"the checkpoint of step {step}"
    try:
      self.checkpoints.save(step, checkpoint)
    except OSError as e:
      self.failed = True
      error = self.disk_error(what, e)
      raise (processes.alone(error) if processes.is_alone(e) else error) from None
    try:
      if self.writer:  # its records, should metrics.jsonl be damaged later
        kept_records.write(self.workdir, step, self.kept, keep=self.checkpoints.steps())
    except OSError as e:
      error = self.disk_error(f"the records kept with {what}", e)
    self.failed = error is not None
    processes.stop_together(error)

  def disk_error(self, what: str, error: OSError) -> directory.WorkdirError:
    """The one line that stops a run whose directory refused ``what``: why, and what is kept."""
    if not self.workdir.is_dir():
      return directory.WorkdirError(
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
    return directory.WorkdirError(
      f"cannot write {what} in {self.workdir} ({error.strerror or error}); the run stopped; {kept}."
    )

  def close(self, error: BaseException | None = None) -> None:
    """Closes the files; ``error``: the one that stops the run, if any. A process stopped
    alone (``processes.is_alone``) skips the steps that wait for the other processes."""
    if processes.is_alone(error):
      if self.events is not None:
        with contextlib.suppress(Exception):  # the error that stopped the run is the one to report
          self.events.close()
      return
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
    saved = directory.read_json(config_path).get("device_history", [])
    history = [h for h in saved if h["from_step"] < step]
  return [*history, {"from_step": step or 0, **dict(devices or {})}]
