"""Tests of the TensorBoard events (experiments/run/tensorboard.py): read back with TensorBoard's
own reader (``EventAccumulator``), they hold exactly the records of ``metrics.jsonl``, each step
once, also after a kill and a resume; the HParams are the run's configuration.

The real kill (SIGKILL of ``python -m experiments.mnist1d``) and ``--resume`` is
tests/test_experiments.py::test_killed_job_resumes_to_the_same_result, which checks its events
with ``assert_events_match``.
"""

from __future__ import annotations

import pathlib

import numpy as np
import optax
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.util import tensor_util

import entropy_optax
from experiments.run import directory, distributed
from experiments.run import tensorboard as tb
from experiments.trainer import loop
from tests import test_training as t

# Runs of the harness end to end: CI runs them, `pytest -m "not slow"` leaves them out.
pytestmark = pytest.mark.slow

SEEDS = [0, 1]
# Drops at updates 15 and 25: the recorded learning rate changes between records.
SCHEDULE = optax.piecewise_constant_schedule(0.5, {15: 0.1, 25: 0.1})


def read_events(run: pathlib.Path) -> dict[int, dict[str, list[tuple[int, float]]]]:
  """Per seed, per tag: the (step, value) of the scalars in the run's event files."""
  out = {}
  for seed_dir in sorted((run / tb.EVENTS_DIR).glob("seed_*")):
    acc = EventAccumulator(str(seed_dir), size_guidance={"tensors": 0})
    acc.Reload()
    out[int(seed_dir.name.removeprefix("seed_"))] = {
      name: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(name)]
      for name in acc.Tags()["tensors"]
      if acc.SummaryMetadata(name).plugin_data.plugin_name == scalar_metadata.PLUGIN_NAME
    }
  return out


def read_hparams(seed_dir: pathlib.Path) -> dict[str, object]:
  acc = EventAccumulator(str(seed_dir))
  acc.Reload()
  content = acc.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
  info = plugin_data_pb2.HParamsPluginData.FromString(
    content[hparams_metadata.SESSION_START_INFO_TAG]
  ).session_start_info
  return {k: getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()} | {
    "_group": info.group_name
  }


def expected_events(rs: list[dict]) -> dict[int, dict[str, list[tuple[int, float]]]]:
  """The scalars the records say, as the events store them (float32)."""
  out: dict[int, dict[str, list[tuple[int, float]]]] = {}
  for r in rs:
    for field, value in r.items():
      if field not in tb.NOT_SCALARS:
        out.setdefault(r["seed"], {}).setdefault(tb.tag(field), []).append(
          (r["step"], float(np.float32(value)))
        )
  return out


def assert_events_match(run: pathlib.Path) -> None:
  """The events of a run directory hold its metrics.jsonl, each step of each tag once."""
  rs = directory.read_records(run)
  assert rs, f"{run} has no records"
  assert read_events(run) == expected_events(rs)


def test_tags():
  assert tb.tag("train_loss") == "train/loss"
  assert tb.tag("learning_rate") == "train/learning_rate"
  assert tb.tag("effective_epochs") == "train/effective_epochs"
  assert tb.tag("langevin_gamma") == "langevin/gamma"
  assert tb.tag("entropy_grad_norm") == "langevin/entropy_grad_norm"
  assert tb.tag("val_error") == "eval/error"
  # One tag per field: no two fields of a record share a curve.
  fields = ["train_loss", "learning_rate", "effective_epochs", "val_loss", "val_error"]
  fields += list(entropy_optax.LangevinStats._fields)
  assert len({tb.tag(f) for f in fields}) == len(fields)


def test_events_hold_the_records_after_a_kill_and_a_resume(tmp_path):
  """Killed after step 30 with the newest checkpoint at 20: the resume drops the record of step
  30 and trains it again; the events hold each step once, with the values of metrics.jsonl."""
  workdir = tmp_path / "run"
  cfg = t.config(num_seeds=2, eval_every_steps=10, checkpoint_every_steps=20)

  with pytest.raises(t.Killed):
    loop.train(
      cfg, t.MODEL, t.TX, t.tiny_data(), workdir, learning_rate=SCHEDULE, callback=t.kill_at(30)
    )
  assert [r["step"] for r in directory.read_records(workdir) if r["seed"] == 0] == [10, 20, 30]
  assert_events_match(workdir)  # the live view
  # A kill in the middle of writing an event leaves a cut record: the resume drops it.
  with open(next((workdir / tb.EVENTS_DIR / "seed_1").glob(tb.EVENTS_GLOB)), "ab") as f:
    f.write(b"\x07\x00\x00")

  resumed = loop.train(cfg, t.MODEL, t.TX, t.tiny_data(), workdir, learning_rate=SCHEDULE)
  assert [r["step"] for r in resumed.records if r["seed"] == 0] == [30, 40]
  assert_events_match(workdir)
  events = read_events(workdir)
  assert sorted(events) == SEEDS and len(list((workdir / tb.EVENTS_DIR).rglob("events*"))) == 2
  assert [s for s, _ in events[0]["eval/error"]] == [10, 20, 30, 40]
  # Every curve of the issue, the learning rate being that of each call's last update.
  for name in ("loss", "learning_rate", "effective_epochs"):
    assert f"train/{name}" in events[1]
  for name in ("gamma", "grad_norm", "entropy_grad_norm", "cosine"):
    assert f"langevin/{name}" in events[1]
  assert events[1]["eval/loss"] and events[1]["eval/error"]
  np.testing.assert_allclose(
    [v for _, v in events[0]["train/learning_rate"]], [0.5, 0.05, 0.005, 0.005], rtol=1e-6
  )
  # HParams: the run's configuration (here the loop's), one group for the seeds of one run.
  hparams = [read_hparams(workdir / tb.EVENTS_DIR / f"seed_{s}") for s in SEEDS]
  assert hparams[0] == hparams[1]
  assert hparams[0]["batch_size"] == 32 and hparams[0]["step_runner"] == "auto"
  assert hparams[0]["_group"].startswith("run ")


def test_no_events_when_off_or_not_process_0(tmp_path, monkeypatch):
  # Two seeds, as above: the compiled functions are reused.
  short = dict(num_seeds=2, num_steps=10, eval_every_steps=10, checkpoint_every_steps=0)
  cfg = t.config(**short)
  loop.train(cfg, t.MODEL, t.TX, t.tiny_data(), tmp_path / "off", tensorboard=False)
  assert directory.read_records(tmp_path / "off")
  assert not (tmp_path / "off" / tb.EVENTS_DIR).exists()
  monkeypatch.setattr(distributed, "is_writer", lambda: False)
  loop.train(cfg, t.MODEL, t.TX, t.tiny_data(), tmp_path / "other_process")
  assert not (tmp_path / "other_process" / tb.EVENTS_DIR).exists()


def test_hparams_values():
  values = tb.hparams({"a": 1, "b": 0.5, "c": True, "d": "x", "e": None, "f": (1.0, 2.0)})
  assert values == {"a": 1, "b": 0.5, "c": True, "d": "x", "e": "None", "f": "(1.0, 2.0)"}
