"""The files of one training run: config.json, metrics.jsonl and the checkpoints.

``RunFiles`` opens a run directory for ``experiments.trainer.loop.train``: it restores the newest
good checkpoint when resuming (after checking that the saved run is this one), writes
config.json with the code's version, and appends records and checkpoints as the loop goes.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
from typing import Any

import jax

import entropy_optax
from experiments.run import checkpoints as ckpt_lib
from experiments.run import records as records_lib
from experiments.run.checkpoints import CheckpointError
from experiments.trainer import steps as steps_lib
from experiments.trainer.steps import LoopState

CONFIG_FILE = "config.json"
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
  """config.json, metrics.jsonl and the checkpoints of a run directory."""

  def __init__(self, workdir, config, run_info: dict[str, Any], log):
    self.workdir = pathlib.Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.config, self.run_info, self.log = config, run_info, log
    self.config_path = self.workdir / CONFIG_FILE
    self.records_path = self.workdir / records_lib.METRICS_FILE
    self.checkpoints = (
      ckpt_lib.Checkpoints(self.workdir, config.keep_checkpoints)
      if config.checkpoint_every_steps
      else None
    )

  def open(self, state: LoopState, resume: bool | None):
    """Restores the newest good checkpoint (as ``resume`` says); writes config.json."""
    available = self.checkpoints.steps() if self.checkpoints is not None else []
    if resume is False and available:
      raise CheckpointError(
        f"{self.workdir} has checkpoints {available}: resume the run "
        "with --resume, or start afresh with --overwrite."
      )
    previous: list[dict[str, Any]] = []
    step = None
    if resume is not False and available:
      _check_resumable(self.config_path, self.run_info)
      step = self.checkpoints.latest_good(self.log)
    if resume is True and step is None:
      raise CheckpointError(
        f"{self.workdir} has no checkpoint: there is nothing to resume; "
        "drop --resume to start the run."
      )
    if step is not None:
      restored = self.checkpoints.restore(step, steps_lib.state_dict(state))
      state = state.replace(**restored)
      previous = [r for r in records_lib.read(self.records_path) if r["step"] <= step]
    info = dict(
      self.run_info,
      code_version=_code_version(),
      jax=jax.__version__,
      entropy_optax=entropy_optax.__version__,
    )
    ckpt_lib._atomic_write(self.config_path, json.dumps(info, indent=1, default=str) + "\n")
    records_lib.rewrite(self.records_path, previous)
    return state, previous

  def write(self, step: int, state: LoopState, made, checkpoint: bool) -> None:
    records_lib.append(self.records_path, made)
    if checkpoint and self.checkpoints is not None:
      self.checkpoints.save(step, steps_lib.state_dict(state))

  def close(self) -> None:
    if self.checkpoints is not None:
      self.checkpoints.close()


def _check_resumable(config_path: pathlib.Path, run_info: dict[str, Any]) -> None:
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
  if saved.get("metadata", {}) != json.loads(json.dumps(run_info["metadata"], default=str)):
    diffs.append("the run's configuration differs")
  if diffs:
    raise CheckpointError(
      "the checkpoints in this run directory are from another run ("
      + "; ".join(diffs)
      + "): use another --workdir."
    )
