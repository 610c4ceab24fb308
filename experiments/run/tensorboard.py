"""TensorBoard events of a run: a view of its ``metrics.jsonl``, to watch runs live.

    tensorboard --logdir runs/

The records (``experiments.trainer.records``) stay the one source of truth; the events hold the
same numbers. Layout: ``<run>/tensorboard/seed_<seed>/events.out.tfevents.*``, one TensorBoard
run per seed. Each record becomes one event at its ``step`` (outer steps), holding a scalar per
number of the record under the tag ``tag(field)``: ``train/loss``, ``train/learning_rate``,
``train/effective_epochs``, ``langevin/gamma``, ``langevin/grad_norm`` (norm of grad f),
``langevin/entropy_grad_norm`` (norm of gamma (x - mu)), ``langevin/cosine``, ``eval/loss``,
``eval/error``, ... The event's wall time is the record's ``wall_time`` after the run's start.

Each seed's directory is also an HParams session whose hyper-parameters are the run's
configuration; the sessions of one configuration form one group (named by the run directory and
a hash of the configuration), which the HParams dashboard shows with the mean, min or max over
seeds of the last value of each scalar.

A run (re)opened rewrites its events from the records it keeps (``Events.rebuild``): a resumed
run, which drops the records after its checkpoint, continues the same curves with each step
once, and a run killed while writing an event leaves no cut record behind.

Written with TensorBoard's own pieces (its event and summary protos, ``scalar_pb``,
``hparams_pb`` and its record framing) into plain files, without importing TensorFlow: clu's
writers and ``tf.summary`` import TensorFlow (about 9 s and 0.5 GB in every run's process).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams.summary_v2 import hparams_pb
from tensorboard.plugins.scalar.summary_v2 import scalar_pb
from tensorboard.summary.writer.record_writer import RecordWriter

from entropy_optax import LangevinStats

EVENTS_DIR = "tensorboard"
EVENTS_GLOB = "events.out.tfevents.*"
# Record fields that are no curve: the step is the x axis, the seed names the TensorBoard run,
# the wall time is the event's, the outer epoch is effective_epochs / L.
NOT_SCALARS = ("step", "seed", "epoch", "wall_time")


def tag(field: str) -> str:
  """The scalar tag of a record field: ``eval/`` for an evaluation (``val_error``:
  ``eval/error``), ``langevin/`` for a ``LangevinStats`` field, ``train/`` for the others."""
  if field.startswith("val_"):
    return "eval/" + field.removeprefix("val_")
  if field in LangevinStats._fields:
    return "langevin/" + field.removeprefix("langevin_")
  return "train/" + field.removeprefix("train_")


def seed_dir(directory: str | os.PathLike, seed: int) -> pathlib.Path:
  """The TensorBoard run of one seed."""
  return pathlib.Path(directory) / f"seed_{seed}"


def hparams(config: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
  """A configuration as HParams values: numbers, booleans and strings as they are, anything
  else (None, a tuple) as its ``str``."""
  return {
    name: value if isinstance(value, (bool, int, float, str)) else str(value)
    for name, value in config.items()
  }


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


class Events:
  """The event files of one run's seeds (see the module docstring).

  Args:
    directory: where the seeds' directories go (``<run>/tensorboard``).
    seeds: the run's seeds.
    config: the run's configuration, written as HParams (``hparams``).
    start_time: the run's start as seconds since the epoch (a resumed run: now minus the last
      record's ``wall_time``); an event's wall time is ``start_time + record["wall_time"]``.
  """

  def __init__(
    self,
    directory: str | os.PathLike,
    seeds: Sequence[int],
    config: Mapping[str, Any],
    start_time: float,
  ):
    self.directory = pathlib.Path(directory)
    self.seeds = list(seeds)
    self.hparams = hparams(config)
    digest = hashlib.sha256(json.dumps(self.hparams, sort_keys=True).encode()).hexdigest()
    self.group = f"{self.directory.parent.name} {digest[:10]}"
    self.start_time = start_time
    self._writers: dict[int, RecordWriter] = {}

  def rebuild(self, records: Iterable[Mapping[str, Any]]) -> None:
    """Deletes the seeds' event files and writes new ones that hold ``records``."""
    self.close()
    name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
    for seed in self.seeds:
      path = seed_dir(self.directory, seed)
      path.mkdir(parents=True, exist_ok=True)
      for old in path.glob(EVENTS_GLOB):
        old.unlink()
      writer = RecordWriter(open(path / name, "wb"))  # closed by close()
      self._writers[seed] = writer
      for event in (
        event_pb2.Event(wall_time=self.start_time, file_version="brain.Event:2"),
        event_pb2.Event(
          wall_time=self.start_time,
          step=0,
          summary=hparams_pb(self.hparams, self.group, start_time_secs=self.start_time),
        ),
      ):
        writer.write(event.SerializeToString())
    self.write(records)

  def write(self, records: Iterable[Mapping[str, Any]]) -> None:
    """Appends one event per record (to its seed's file) and flushes the files."""
    for record in records:
      summary = summary_pb2.Summary()
      for field, value in record.items():
        if field not in NOT_SCALARS and _is_number(value):
          summary.value.extend(scalar_pb(tag(field), value).value)
      event = event_pb2.Event(
        wall_time=self.start_time + record["wall_time"], step=record["step"], summary=summary
      )
      self._writers[record["seed"]].write(event.SerializeToString())
    for writer in self._writers.values():
      writer.flush()

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()
    self._writers = {}
