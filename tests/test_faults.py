"""Runs that go wrong, as a user meets them: divergence, invalid JSON, preemption, disk faults.

Tiny MNIST-1D runs through the scripts' ``main`` (the command line) and the loop; see
docs/faults.md for what each case does.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import mnist1d
from experiments.launch import cli, final_state
from experiments.reporting import summaries
from experiments.run import checkpoints, directory
from experiments.trainer import divergence, loop, preemption
from tests import test_training as t

# Runs of the harness end to end: CI runs them, `pytest -m "not slow"` leaves them out.
pytestmark = pytest.mark.slow

QUIET = ["--no-progress"]


def tiny_mnist1d(workdir, *extra):
  argv = ["--num-train", 200, "--num-test", 100, "--batch-size", 50, "--workdir", workdir]
  return [str(a) for a in [*argv, *QUIET, *extra]]


def test_a_diverging_run_in_a_job_is_reported_and_the_job_goes_on(capsys, tmp_path):
  """SGD at learning rate 1e9 beside Adam: the SGD run stops at its first record with one line
  naming it, its seed, step and what to try; Adam trains to its end; the tables and results say
  "diverged at step N"; the job exits EXIT_DIVERGED."""
  workdir = tmp_path / "job"
  argv = tiny_mnist1d(
    workdir,
    *("--models", "mlp1d", "--optimizers", "sgd", "adam", "--effective-epochs", 2),
    *("--num-seeds", 1, "--recipe.sgd.learning-rate", 1e9),
  )
  code = mnist1d.main(argv)
  out, _ = capsys.readouterr()
  assert code == cli.EXIT_DIVERGED == 3
  sgd = directory.read_results(workdir / "mlp1d-sgd" / directory.RESULTS_FILE)
  (entry,) = sgd["diverged"]
  step = entry["step"]
  assert entry["seed"] == 0 and 1 <= step <= 8  # 8 steps: 2 epochs of 4 batches
  lines = [line for line in out.splitlines() if "diverged at step" in line and "seed 0" in line]
  assert lines == [
    f"{workdir / 'mlp1d-sgd'}: seed 0 diverged at step {step} (the training loss or the "
    "parameters are not finite); try a lower --recipe.sgd.learning-rate or "
    "--recipe.sgd.clip-norm"
  ]
  # The run stopped at the record that caught it: no accuracy of a NaN model, no checkpoint.
  (record,) = directory.read_records(workdir / "mlp1d-sgd")
  assert record["diverged_at_step"] == step and np.isnan(record.get("val_error", np.nan))
  assert not (workdir / "mlp1d-sgd" / "checkpoints.sha256").exists()
  assert np.isnan(sgd["test_error_mean"])
  # Adam went on to its end.
  adam = directory.read_results(workdir / "mlp1d-adam" / directory.RESULTS_FILE)
  assert adam["diverged"] == [] and adam["outer_steps"] == 8 and adam["test_error_mean"] < 100
  table = (workdir / "summary.md").read_text()
  (row,) = [line for line in table.splitlines() if line.startswith("| MLP | SGD |")]
  assert row.startswith(f"| MLP | SGD | diverged at step {step} |  |")  # no accuracy, no best
  assert row.endswith(f"| diverged at step {step} |")  # its time to target
  assert directory.read_results(workdir / directory.RESULTS_FILE)["mlp1d-sgd"]["time_to_target"][
    "diverged_at_step"
  ] == (step)
  assert f"1 of 2 run(s) diverged: {workdir / 'mlp1d-sgd'} (diverged at step {step})" in out
  # Every JSON file the job wrote parses strictly; the NaNs are nulls, read back as NaN.
  files = [p for p in workdir.rglob("*") if p.suffix in (".json", ".jsonl")]
  assert len(files) >= 8, files  # config, metrics, results (x2 runs), grid, job results, sums
  for path in files:
    for line in path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]:
      strict_json(line)
  assert strict_json(record_line(workdir / "mlp1d-sgd"))["train_loss"] is None
  assert np.isnan(sgd["test_error"][0]) and sgd["paper"] is None  # a null that means "none"


def strict_json(text):
  """``json.loads`` that refuses NaN and Infinity, as jq, JavaScript, Go and serde do."""

  def refuse(name):
    raise ValueError(f"not JSON: {name}")

  return json.loads(text, parse_constant=refuse)


def record_line(run):
  return (run / directory.METRICS_FILE).read_text().splitlines()[-1]


def test_json_writer_and_readers_round_trip_non_finite_numbers(tmp_path):
  value = {"a": float("nan"), "b": [np.float32("inf"), 1.5, None], "paper": None, "n": np.int64(3)}
  directory.write_json(tmp_path / directory.RESULTS_FILE, value)
  assert strict_json((tmp_path / directory.RESULTS_FILE).read_text()) == {
    "a": None,
    "b": [None, 1.5, None],
    "paper": None,
    "n": 3,
  }
  back = directory.read_results(tmp_path / directory.RESULTS_FILE)
  assert np.isnan(back["a"]) and np.isnan(back["b"][0]) and back["paper"] is None
  directory.append_records(tmp_path / directory.METRICS_FILE, [{"step": 1, "loss": -np.inf}])
  (record,) = directory.read_records(tmp_path)
  assert record["step"] == 1 and np.isnan(record["loss"])
  assert strict_json(record_line(tmp_path)) == {"step": 1, "loss": None}


class NaNForSomeSeeds(nn.Module):
  """A linear model whose logits are NaN when its initial ``switch`` parameter is positive:
  with vmapped seeds, some diverge at their first step and the others train."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    switch = self.param("switch", nn.initializers.normal(1.0), ())
    logits = nn.Dense(10)(x.reshape(x.shape[0], -1))
    return logits + jnp.where(switch > 0, jnp.nan, 0.0)


def test_vmapped_seeds_keep_training_when_one_diverges(tmp_path):
  rng = np.random.default_rng(0)
  data = (
    rng.normal(size=(64, 8)).astype(np.float32),
    rng.integers(0, 10, 64),
    rng.normal(size=(32, 8)).astype(np.float32),
    rng.integers(0, 10, 32),
  )
  config = t.config(
    num_steps=8,
    eval_every_steps=4,
    checkpoint_every_steps=0,
    num_examples=64,
    batch_size=16,
    steps_per_call=4,
    num_seeds=4,
    langevin_steps=1,
  )
  lines = []
  result = loop.train(config, NaNForSomeSeeds(), optax.sgd(0.1), data, tmp_path, log=lines.append)
  switches = np.asarray(result.state.params["switch"])  # NaN once diverged: test the sign at init
  finite = np.isfinite(np.asarray(result.state.params["Dense_0"]["kernel"])).all((1, 2))
  assert 0 < finite.sum() < 4, switches  # seeds 0-3 include both kinds
  bad = [seed for seed in range(config.num_seeds) if not finite[seed]]
  assert result.diverged == {seed: 1 for seed in bad}
  assert len(lines) == len(bad) and all("diverged at step 1" in line for line in lines)
  written = directory.read_records(tmp_path)
  assert [r["step"] for r in written] == [4] * 4 + [8] * 4  # the others went on to the end
  for r in written:
    if r["seed"] in bad:
      assert r["diverged_at_step"] == 1 and np.isnan(r["val_error"])
    else:
      assert "diverged_at_step" not in r and np.isfinite(r["train_loss"] + r["val_error"])
  results = summaries.summarize(
    written,
    config,
    dataset="d",
    num_params=0,
    num_train=64,
    num_test=32,
    paper=None,
    diverged=result.diverged,
  )
  good = [100 * r["val_error"] for r in written if r["step"] == 8 and r["seed"] not in bad]
  assert results["test_error_mean"] == np.mean(good)
  assert summaries.divergence_note(results) == ", ".join(
    f"seed {s} diverged at step 1" for s in bad
  )
  assert "seed" in summaries.format_result(results) and "diverged" in summaries.format_result(
    results
  )


def test_find_names_the_first_non_finite_step():
  losses = np.array([[1.0, 2.0, np.nan, np.inf], [1.0, 1.0, 1.0, 1.0], [1.0] * 4])
  found = divergence.find(
    losses, np.array([False, False, True]), step=12, seeds=[5, 6, 7], batched=True
  )
  assert found == {5: 11, 6: 12}  # seed 5: step 9 + 2; seed 6: only its parameters, at 12


# ---------------------------------------------------------------------------
# Preemption: SIGTERM / SIGINT.
# ---------------------------------------------------------------------------

REPO = pathlib.Path(__file__).resolve().parent.parent
# 1000 effective epochs of 4 steps: 4000 steps in 40 calls of 100; the only periodic checkpoint
# would come after 1000 evaluations, so a signal comes before the first one.
LONG_JOB = (
  *("--models", "mlp1d", "--optimizers", "adam", "--num-seeds", 1, "--effective-epochs", 1000),
  *("--eval-every-effective-epochs", 100, "--recipe.adam.checkpoint-every-evals", 1000),
)


def _drop_time(rs):
  return [{k: v for k, v in r.items() if k != "wall_time"} for r in rs]


def test_sigterm_saves_a_checkpoint_and_resume_is_bit_identical(capsys, tmp_path):
  """SIGTERM to ``python -m experiments.mnist1d`` once training runs, before its first periodic
  checkpoint: it saves one after the call in flight and exits 143 with the resume hint;
  ``--resume`` ends with the records, results and parameters of the uninterrupted job."""
  reference = tmp_path / "reference"
  assert mnist1d.main(tiny_mnist1d(reference, *LONG_JOB)) == 0
  workdir = tmp_path / "preempted"
  argv = [sys.executable, "-m", "experiments.mnist1d", *tiny_mnist1d(workdir, *LONG_JOB)]
  env = dict(os.environ, PYTHONPATH=str(REPO))
  proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  metrics = workdir / "mlp1d-adam" / directory.METRICS_FILE
  deadline = time.monotonic() + 300
  while proc.poll() is None and time.monotonic() < deadline:
    if metrics.exists() and metrics.read_text():  # the first call is done: training runs
      proc.send_signal(signal.SIGTERM)
      break
    time.sleep(0.01)
  _, err = proc.communicate(timeout=300)
  err = err.decode()
  assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
  (line,) = [x for x in err.splitlines() if "stopped at step" in x]
  step = int(line.split("stopped at step ")[1].split(",")[0])
  assert line == (
    f"SIGTERM: {workdir / 'mlp1d-adam'} stopped at step {step}, checkpoint saved; continue the "
    "run with --resume"
  )
  assert 100 <= step < 4000 and step % 100 == 0  # after a call; none lost
  checkpoints = workdir / "mlp1d-adam" / "checkpoints"
  assert sorted(int(p.name) for p in checkpoints.iterdir()) == [step]
  assert not (workdir / "mlp1d-adam" / directory.RESULTS_FILE).exists()

  assert mnist1d.main([*tiny_mnist1d(workdir, *LONG_JOB), "--resume"]) == 0
  capsys.readouterr()
  run, ref = workdir / "mlp1d-adam", reference / "mlp1d-adam"
  assert _drop_time(directory.read_records(run)) == _drop_time(directory.read_records(ref))
  assert (
    directory.read_results(run / directory.RESULTS_FILE)["test_error"]
    == directory.read_results(ref / directory.RESULTS_FILE)["test_error"]
  )
  jax.tree.map(
    np.testing.assert_array_equal,
    final_state.load_final_variables(run),
    final_state.load_final_variables(ref),
  )


def _twelve_steps(every: int):
  """12 steps on ``_tiny_data``, two a call, evaluated and checkpointed every ``every`` steps."""
  return t.config(
    num_steps=12,
    eval_every_steps=every,
    checkpoint_every_steps=every,
    num_examples=64,
    batch_size=16,
    steps_per_call=2,
    langevin_steps=1,
  )


def _tiny_data():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(96, 8)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32)
  return x[:64], y[:64], x[64:], y[64:]


class Linear(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(2)(x)


def test_a_second_signal_during_the_save_corrupts_nothing(monkeypatch, tmp_path):
  """SIGINT, then SIGINT again while the checkpoint it asked for is being written: the run
  stops at once; the half-saved step is never restored (no checksum), --resume falls back to
  the periodic checkpoint before it and ends bit for bit where an uninterrupted run ends."""
  sigint_before = signal.getsignal(signal.SIGINT)
  config = _twelve_steps(4)
  tx = optax.sgd(0.1, momentum=0.9)
  reference = loop.train(config, Linear(), tx, _tiny_data(), tmp_path / "reference")

  def first_signal(made, state):
    if made[0]["step"] == 4:  # just after the periodic checkpoint of step 4
      os.kill(os.getpid(), signal.SIGINT)

  digests = checkpoints._file_digests

  def second_signal_while_saving(step_dir):
    if step_dir.name == "6":  # the save the first signal asked for
      os.kill(os.getpid(), signal.SIGINT)  # orbax has written the step; its checksums are next
    return digests(step_dir)

  monkeypatch.setattr(checkpoints, "_file_digests", second_signal_while_saving)
  workdir, lines = tmp_path / "interrupted", []
  with pytest.raises(KeyboardInterrupt) as stopped:
    loop.train(config, Linear(), tx, _tiny_data(), workdir, callback=first_signal, log=lines.append)
  assert type(stopped.value) is KeyboardInterrupt  # the second signal: no Interrupted message
  assert lines == [
    "SIGINT: saving a checkpoint when the steps in flight are done (send it again to stop at once)"
  ]
  assert signal.getsignal(signal.SIGINT) is sigint_before  # restored (SIG_IGN in a background job)
  assert (workdir / "checkpoints" / "6").is_dir()  # written by orbax, never checksummed
  assert not (workdir / "checkpoints.sha256" / "6.json").exists()
  monkeypatch.setattr(checkpoints, "_file_digests", digests)

  resumed = loop.train(config, Linear(), tx, _tiny_data(), workdir, resume=True, log=lines.append)
  assert "checkpoints/6 is unusable: it has no checksum (its save did not finish)" in lines[-1]
  assert [r["step"] for r in resumed.records] == [6, 8, 10, 12]
  jax.tree.map(np.testing.assert_array_equal, resumed.state.params, reference.state.params)
  assert list(workdir.glob("checkpoints_set_aside_*/6"))  # set aside, not deleted


def test_one_signal_stops_at_the_next_call_with_a_checkpoint(tmp_path):
  config = _twelve_steps(8)
  send = lambda made, state: made[0]["step"] == 2 and os.kill(os.getpid(), signal.SIGTERM)  # noqa: E731
  with pytest.raises(preemption.Interrupted) as stopped:
    loop.train(config, Linear(), optax.sgd(0.1), _tiny_data(), tmp_path, callback=send, log=print)
  assert stopped.value.exit_code == 143
  assert str(stopped.value) == (
    f"SIGTERM: {tmp_path} stopped at step 4, checkpoint saved; continue the run with --resume"
  )
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["4"]


# ---------------------------------------------------------------------------
# Disk faults: a full disk, a read-only or vanished run directory.
# ---------------------------------------------------------------------------

# 10 effective epochs of 4 steps, an evaluation every 4 steps (a call), a checkpoint every 16
# (the recipe's checkpoint_every_evals = 4) and at step 40.
DISK_JOB = (
  *("--models", "mlp1d", "--optimizers", "adam", "--num-seeds", 1, "--effective-epochs", 10),
  *("--eval-every-effective-epochs", 1),
)


@pytest.fixture(scope="module")
def disk_reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("disk") / "reference"
  assert mnist1d.main(tiny_mnist1d(workdir, *DISK_JOB)) == 0
  return workdir / "mlp1d-adam"


def _assert_resumes_to(workdir, reference, capsys):
  assert mnist1d.main([*tiny_mnist1d(workdir, *DISK_JOB), "--resume"]) == 0
  capsys.readouterr()
  run = workdir / "mlp1d-adam"
  assert _drop_time(directory.read_records(run)) == _drop_time(directory.read_records(reference))
  assert (
    directory.read_results(run / directory.RESULTS_FILE)["test_error"]
    == directory.read_results(reference / directory.RESULTS_FILE)["test_error"]
  )


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_metrics_write_the_disk_refuses_stops_the_run_in_one_line(
  code, disk_reference, monkeypatch, capsys, tmp_path
):
  append = directory.append_records

  def failing_append(path, records):
    if records[0]["step"] == 20:
      with open(path, "a") as f:
        f.write('{"step": 20, "seed"')  # a line cut where the disk filled up
      raise OSError(code, os.strerror(code), str(path))
    append(path, records)

  monkeypatch.setattr(directory, "append_records", failing_append)
  workdir = tmp_path / "job"
  assert mnist1d.main(tiny_mnist1d(workdir, *DISK_JOB)) == 1
  _, err = capsys.readouterr()
  run = workdir / "mlp1d-adam"
  assert err == (
    f"error: cannot write the records of step 20 in {run} ({os.strerror(code)}); the run "
    f"stopped; the checkpoint of step 16 is intact: free space or make {run} writable, then "
    "continue the run with --resume.\n"
  )
  with checkpoints.Checkpoints(run) as kept:
    assert kept.steps()[-1] == 16 and kept.problem(16) is None
  monkeypatch.setattr(directory, "append_records", append)  # space freed
  _assert_resumes_to(workdir, disk_reference, capsys)


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(
  disk_reference, monkeypatch, capsys, tmp_path
):
  """orbax reports a full disk as tensorstore's ValueError (measured on a 2 MB tmpfs: the
  message below, from its writer threads, which also log it); the run says it in one line."""
  save = checkpoints.ocp.CheckpointManager.save

  def full_disk(self, step, *args, **kwargs):
    if step == 32:
      (self.directory / "32.orbax-checkpoint-tmp").mkdir()  # what orbax leaves behind
      raise ValueError(
        'RESOURCE_EXHAUSTED: Error writing "params.Dense_0.bias/0" in OCDBT database at local '
        f'file "{self.directory}/32.orbax-checkpoint-tmp/": Failed to write 6700 bytes to file '
        "7: No space left on device [os_error_code='28']"
      )
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpoints.ocp.CheckpointManager, "save", full_disk)
  workdir = tmp_path / "job"
  assert mnist1d.main(tiny_mnist1d(workdir, *DISK_JOB)) == 1
  _, err = capsys.readouterr()
  run = workdir / "mlp1d-adam"
  assert err.startswith(f"error: cannot write the checkpoint of step 32 in {run} ")
  assert "(No space left on device)" in err and "the checkpoint of step 16 is intact" in err
  assert len(err.splitlines()) == 1
  monkeypatch.setattr(checkpoints.ocp.CheckpointManager, "save", save)
  _assert_resumes_to(workdir, disk_reference, capsys)


def test_a_run_directory_that_disappears_stops_the_run_in_one_line(tmp_path):
  workdir = tmp_path / "run"
  config = _twelve_steps(4)

  def remove(made, state):
    if made[0]["step"] == 6:
      shutil.rmtree(workdir)

  with pytest.raises(directory.WorkdirError) as stopped:
    loop.train(config, Linear(), optax.sgd(0.1), _tiny_data(), workdir, callback=remove)
  assert str(stopped.value) == (
    f"cannot write the records of step 8: the run directory {workdir} no longer exists; the run "
    "stopped (its files went with the directory)."
  )
