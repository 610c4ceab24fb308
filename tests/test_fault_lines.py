"""Faults at any moment, as a user meets them: a signal before or after the training loop, a
damaged metrics.jsonl, a damaged config.json, a read-only directory, options refused before
anything is written, summaries of diverged seeds, the flatness of a diverged run.

Each ends in one line (the exact line is checked) and an exit code; see docs/faults.md. Tiny
MNIST-1D runs through the scripts' ``main``; one subprocess, for a signal during the imports.
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

import numpy as np
import optax
import pytest

from experiments import flatness, mnist1d
from experiments.launch import components
from experiments.reporting import summaries, tables
from experiments.run import directory, kept_records
from experiments.trainer import loop, step_runners
from tests import test_faults as f
from tests import test_training as t

# Runs of the harness end to end: CI runs them, `pytest -m "not slow"` leaves them out.
pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parent.parent
# 2 effective epochs of 4 steps, a call each and a checkpoint at the end.
SHORT = ("--models", "mlp1d", "--optimizers", "adam", "--num-seeds", 1, "--effective-epochs", 2)


def short_job(workdir, *extra):
  return f.tiny_mnist1d(workdir, *SHORT, *extra)


def run(argv, capsys):
  code = mnist1d.main(argv)
  out, err = capsys.readouterr()
  return code, out, err


def files_under(path: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


# ---------------------------------------------------------------------------
# A signal before or after the training loop.
# ---------------------------------------------------------------------------

# Runs ``python -m experiments.mnist1d ARGS`` as runpy does it, with a thread that sends SIGINT
# once jax starts importing: in the middle of the script's imports.
_DURING_IMPORTS = """
import os, runpy, signal, sys, threading, time
def send():
  while "jax" not in sys.modules:
    time.sleep(0.001)
  os.kill(os.getpid(), signal.SIGINT)
threading.Thread(target=send, daemon=True).start()
sys.argv = ["experiments.mnist1d", *sys.argv[1:]]
runpy.run_module("experiments.mnist1d", run_name="__main__", alter_sys=True)
"""


def test_ctrl_c_during_the_imports_stops_in_one_line(tmp_path):
  """Before, a KeyboardInterrupt there was swallowed in jax's gc callback (the run went on,
  exit 0) or ended in a traceback: now the imports finish, then one line and exit 130."""
  workdir = tmp_path / "job"
  proc = subprocess.run(
    [sys.executable, "-c", _DURING_IMPORTS, *short_job(workdir)],
    cwd=REPO,
    env=dict(os.environ, PYTHONPATH=str(REPO)),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert (proc.returncode, proc.stderr) == (
    130,
    "SIGINT: stopped before anything was written; nothing to continue\n",
  )
  assert not workdir.exists()


def _signal_when(monkeypatch, owner, name, signum=signal.SIGTERM, when=lambda *a, **k: True):
  """Sends ``signum`` to this process as ``owner.name`` starts (when ``when(*args)``)."""
  original = getattr(owner, name)

  def sending(*args, **kwargs):
    if when(*args, **kwargs):
      os.kill(os.getpid(), signum)
    return original(*args, **kwargs)

  monkeypatch.setattr(owner, name, sending)


def test_sigterm_while_the_data_loads_writes_nothing(monkeypatch, capsys, tmp_path):
  sigterm_before = signal.getsignal(signal.SIGTERM)
  _signal_when(monkeypatch, components, "load_data")
  code, _, err = run(short_job(tmp_path / "job"), capsys)
  assert (code, err) == (143, "SIGTERM: stopped before anything was written; nothing to continue\n")
  assert not (tmp_path / "job").exists()
  assert signal.getsignal(signal.SIGTERM) is sigterm_before  # restored


def test_sigint_during_the_first_compile_stops_after_the_first_call(monkeypatch, capsys, tmp_path):
  """The loop takes the pending signal over: the first call (where the compile happens)
  finishes, its checkpoint is saved; --resume continues from it."""
  _signal_when(monkeypatch, step_runners, "prepare", signal.SIGINT)
  workdir, every_epoch = tmp_path / "job", ("--eval-every-effective-epochs", 1)  # calls of 4
  code, _, err = run(short_job(workdir, *every_epoch), capsys)
  run_dir = workdir / "mlp1d-adam"
  assert code == 130
  assert err.splitlines()[-1] == (
    f"SIGINT: {run_dir} stopped at step 4, checkpoint saved; continue the run with --resume"
  )
  monkeypatch.undo()
  assert run([*short_job(workdir, *every_epoch), "--resume"], capsys)[0] == 0
  # Continued from step 4 (test_faults checks that such a resume is bit for bit).
  assert [r["step"] for r in directory.read_records(run_dir)] == [4, 8]


def test_sigterm_while_the_results_are_written_leaves_them_whole(monkeypatch, capsys, tmp_path):
  """The results are written whole, the lock released; then one line and 143."""
  workdir = tmp_path / "job"
  run_results = workdir / "mlp1d-adam" / directory.RESULTS_FILE
  _signal_when(monkeypatch, directory, "write_json", when=lambda path, _: path == run_results)
  code, _, err = run(short_job(workdir), capsys)
  assert (code, err) == (
    143,
    "SIGTERM: stopped after the command's last write; its results are complete\n",
  )
  names = files_under(workdir)
  assert not [n for n in names if n.endswith(".tmp") or n.endswith(directory.LOCK_FILE)], names
  assert directory.read_results(workdir / "mlp1d-adam" / directory.RESULTS_FILE)["outer_steps"] == 8


# ---------------------------------------------------------------------------
# A damaged metrics.jsonl: the copy kept with each checkpoint.
# ---------------------------------------------------------------------------


def _killed_at(step, workdir):
  """12 steps, two a call, a checkpoint every 4: killed after the call of ``step``; the records
  of steps 2 .. ``step`` are in metrics.jsonl."""
  with pytest.raises(t.Killed):
    loop.train(
      f._twelve_steps(4),
      f.Linear(),
      optax.sgd(0.1),
      f._tiny_data(),
      workdir,
      callback=t.kill_at(step),
    )


def _resume(workdir):
  lines = []
  result = loop.train(
    f._twelve_steps(4), f.Linear(), optax.sgd(0.1), f._tiny_data(), workdir, log=lines.append
  )
  return result, lines


@pytest.mark.parametrize("cut", ["last line", "middle"])
def test_records_cut_from_metrics_are_restored_from_the_checkpoint_copy(cut, tmp_path):
  reference, _ = _resume(tmp_path / "reference")
  workdir = tmp_path / "run"
  _killed_at(8 if cut == "last line" else 10, workdir)  # the newest checkpoint: step 8
  path = workdir / directory.METRICS_FILE
  text = path.read_text()
  cut_at = len(text) - 5 if cut == "last line" else len(text.splitlines()[0]) + 7
  path.write_text(text[:cut_at])  # the last line cut; or line 2 cut, the lines after it gone
  result, lines = _resume(workdir)
  restored = "8" if cut == "last line" else "4, 6, 8"  # step 10's record is made again
  damage = "line 4 does not parse" if cut == "last line" else "line 2 does not parse"
  assert lines == [
    f"{path} was damaged ({damage}): the records of steps {restored} are restored from the "
    "copy kept with the checkpoint of step 8."
  ]
  assert f._drop_time(directory.read_records(workdir)) == f._drop_time(
    directory.read_records(tmp_path / "reference")
  )
  assert [r["step"] for r in directory.read_records(workdir)] == [2, 4, 6, 8, 10, 12]
  np.testing.assert_array_equal(
    result.state.params["Dense_0"]["kernel"], reference.state.params["Dense_0"]["kernel"]
  )


def test_records_gone_without_a_verified_copy_are_named(tmp_path):
  workdir = tmp_path / "run"
  _killed_at(10, workdir)
  copy = workdir / kept_records.COPY_DIR / "8.jsonl"
  copy.write_text(copy.read_text().replace('"step": 2', '"step": 3'))  # no longer verifies
  path = workdir / directory.METRICS_FILE
  path.write_text(path.read_text().splitlines()[0] + "\n")  # cut after step 2's record
  _, lines = _resume(workdir)
  assert lines == [
    f"{path} is damaged (it was cut short) and the checkpoint of step 8 has no verified copy of "
    "it: the records of steps 4, 6, 8 are gone (the run continues from step 8; its tables and "
    "plots miss them)."
  ]
  assert [r["step"] for r in directory.read_records(workdir)] == [2, 10, 12]


# ---------------------------------------------------------------------------
# Refused before anything is written; then the corrected command in the same directory.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_job(tmp_path_factory):
  """A short job run after six refused commands in its directory: (the job's directory, the
  refusals' (code, stderr))."""
  workdir = tmp_path_factory.mktemp("refused") / "job"
  refused = {}
  for extra in [
    ("--mesh", "data=3"),  # one device in the test process
    ("--mesh", "foo=2"),
    ("--mesh", "seed=4"),
    ("--batch-size", 500),  # 200 training examples
    ("--recipe.adam.langevin-steps", 0),
    ("--seed", -3),
    ("--coordinator-address", "notahost", "--num-processes", 2, "--process-id", 0),
  ]:
    code = mnist1d.main(short_job(workdir, *extra))
    refused[extra[0] + " " + str(extra[1])] = code, files_under(workdir)
  assert mnist1d.main(short_job(workdir)) == 0
  return workdir, refused


def test_refused_options_write_nothing_and_the_corrected_command_runs(finished_job, capsys):
  workdir, refused = finished_job
  assert {k: v for k, v in refused.items() if v != (1, [])} == {}  # one line each, no file
  assert (workdir / "mlp1d-adam" / directory.RESULTS_FILE).exists()


@pytest.mark.parametrize(
  "extra, line",
  [
    (
      ("--mesh", "data=3"),
      "--mesh data=3 uses 3 devices, which must divide the 1 devices of this run (1 process(es)).",
    ),
    (
      ("--batch-size", 500),
      "--batch-size 500 exceeds the 200 training examples: lower it or use more data.",
    ),
    (("--recipe.adam.langevin-steps", 0), "--recipe.adam.langevin-steps must be >= 1, got 0."),
    (("--seed", -3), "--seed must be in 0 .. 4294967295, got -3."),
    (
      ("--coordinator-address", "notahost", "--num-processes", 2, "--process-id", 0),
      "--coordinator-address must be HOST:PORT (e.g. 10.0.0.1:1234), got 'notahost'.",
    ),
  ],
)
def test_a_refused_option_says_what_to_fix_in_one_line(extra, line, capsys, tmp_path):
  code, _, err = run(short_job(tmp_path / "job", *extra), capsys)
  assert (code, err) == (1, f"error: {line}\n")


# ---------------------------------------------------------------------------
# A damaged config.json; a read-only run directory.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
  "content, what",
  [
    ("", "not JSON: Expecting value: line 1 column 1 (char 0)"),
    ('{"config": {"dataset": "mnist1d", "mod', "not JSON: Unterminated string starting at"),
    ('{"config": {}}', "its config lacks dataset, model, optimizer, batch_size"),
    ("[1, 2]", "it holds no run's config"),
  ],
)
def test_a_damaged_config_json_is_one_line(content, what, finished_job, capsys, tmp_path):
  workdir = tmp_path / "job"
  shutil.copytree(finished_job[0], workdir)
  config = workdir / "mlp1d-adam" / directory.CONFIG_FILE
  config.write_text(content)
  (workdir / "mlp1d-adam" / directory.RESULTS_FILE).unlink()  # not finished: it resumes
  code, _, err = run([*short_job(workdir), "--resume"], capsys)
  assert code == 1 and len(err.splitlines()) == 1, err
  assert err.startswith(f"error: {config} is damaged ({what}") and err.endswith(
    "the run beside it cannot be checked against this command; restore the file, or start "
    "afresh with --overwrite (which deletes the run).\n"
  )


def read_only(monkeypatch, root: pathlib.Path):
  """Writes under ``root`` fail with EROFS, as on a read-only disk (tests run as root, for
  whom chmod does not stop writes): files opened for writing, os.open, mkdir, unlink, rename,
  rmtree."""
  refuse = lambda path: pathlib.Path(os.path.abspath(path)).is_relative_to(root)  # noqa: E731

  def fail(path):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

  def guard(owner, name, writes=lambda *a, **k: True):
    original = getattr(owner, name)

    def guarded(path, *args, **kwargs):
      if refuse(path) and writes(*args, **kwargs):
        fail(path)
      return original(path, *args, **kwargs)

    monkeypatch.setattr(owner, name, guarded)

  writing = lambda mode="r", *a, **k: any(c in mode for c in "wax+")  # noqa: E731
  guard(pathlib.Path, "open", writing)
  guard(os, "open", lambda flags, *a, **k: flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
  guard(os, "mkdir")
  guard(os, "unlink")
  guard(os, "replace")
  guard(shutil, "rmtree")
  monkeypatch.setattr("builtins.open", _guarded_open(open, refuse, fail, writing))


def _guarded_open(original, refuse, fail, writing):
  def guarded(file, mode="r", *args, **kwargs):
    if isinstance(file, (str, os.PathLike)) and refuse(file) and writing(mode):
      fail(file)
    return original(file, mode, *args, **kwargs)

  return guarded


@pytest.mark.parametrize("option", ["--resume", "--overwrite"])
def test_resume_or_overwrite_on_a_read_only_directory_is_one_line(
  option, finished_job, monkeypatch, capsys, tmp_path
):
  workdir = tmp_path / "job"
  shutil.copytree(finished_job[0], workdir)
  before = files_under(workdir)
  read_only(monkeypatch, workdir)
  code, _, err = run([*short_job(workdir), option], capsys)
  monkeypatch.undo()
  hint = "make it writable or free space (nothing was changed)"
  if option == "--overwrite":
    hint = "nothing was deleted"
  assert (code, err) == (
    1,
    f"error: cannot write the run directory {workdir} (Read-only file system); {hint}.\n",
  )
  assert files_under(workdir) == before


def test_a_directory_that_turns_read_only_mid_run_is_one_line(monkeypatch, capsys, tmp_path):
  """The records of step 4 are refused, and so is the removal of the lock at the end."""
  workdir = tmp_path / "job"
  append = directory.append_records

  def turn_read_only(path, records):
    if records[0]["step"] == 4:
      read_only(monkeypatch, workdir)
    append(path, records)

  monkeypatch.setattr(directory, "append_records", turn_read_only)
  code, _, err = run(short_job(workdir, "--eval-every-effective-epochs", 1), capsys)
  monkeypatch.undo()
  run_dir = workdir / "mlp1d-adam"
  assert (code, err) == (
    1,
    f"error: cannot write the records of step 4 in {run_dir} (Read-only file system); the run "
    "stopped; no checkpoint was complete yet: --resume will start the run afresh.\n",
  )


# ---------------------------------------------------------------------------
# Summaries of diverged seeds; the flatness of a diverged run.
# ---------------------------------------------------------------------------


def _results(errors, diverged):
  """summarize's results of one-record seeds with these test errors (%), some diverged."""
  records = [
    {"step": 8, "seed": s, "epoch": 2.0, "effective_epochs": 2.0, "wall_time": 1.0}
    | {"train_loss": 1.0, "val_error": e / 100, "val_loss": 1.0}
    for s, e in enumerate(errors)
  ]
  config = t.config(num_steps=8, eval_every_steps=8, checkpoint_every_steps=0, num_seeds=4)
  return summaries.summarize(
    records,
    config,
    dataset="d",
    num_params=1,
    num_train=384,
    num_test=10,
    paper=None,
    diverged=diverged,
  )


def test_divergence_summaries_count_the_seeds_they_are_over():
  every = _results([90.0, 90.0, 90.0, 90.0], {0: 3, 1: 3, 2: 5, 3: 7})
  assert np.isnan(every["test_error_mean"]) and np.isnan(every["test_error_std"])
  assert json.loads(directory.to_json(every))["test_error_std"] is None
  half = _results([20.0, 30.0, 90.0, 90.0], {2: 5, 3: 7})
  assert half["test_error_mean"] == 25.0
  assert half["test_error_std"] == pytest.approx(np.std([20.0, 30.0], ddof=1))
  assert summaries.seed_count(half) == "2 of 4"
  assert "(2 of 4 seeds)" in summaries.format_result(half)
  row = tables.comparison_table({("mlp1d", "adam"): half}).splitlines()[-1]
  assert "| 75.0 ± 7.1 (seed 2 diverged at step 5, seed 3 diverged at step 7) |" in row
  assert row.split("|")[7].strip() == "2 of 4"  # the seeds column


def test_flatness_of_a_diverged_run_is_refused_in_one_line(capsys, tmp_path):
  workdir = tmp_path / "flat"
  argv = [
    *("mnist1d", "--models", "mlp1d", "--optimizers", "adam", "--num-train", 100),
    *("--num-test", 50, "--batch-size", 25, "--effective-epochs", 1, "--workdir", workdir),
    *("--recipe.adam.learning-rate", 1e30, "--no-progress"),
  ]
  code = flatness.main([str(a) for a in argv])
  _, err = capsys.readouterr()
  run_dir = workdir / "adam"
  step = directory.read_results(run_dir / directory.RESULTS_FILE)["diverged"][0]["step"]
  assert (code, err) == (
    1,
    f"error: {run_dir} diverged (diverged at step {step}): its parameters are not finite, so "
    "there is no minimum to analyse; train it with a lower --recipe.adam.learning-rate (or "
    "--recipe.adam.clip-norm) in another --workdir.\n",
  )
  assert not (workdir / "flatness.json").exists()
