"""Tests of the experiment scripts: one-step smoke runs, the command line, run directories.

Everything runs on tiny data (MNIST-1D with a few hundred examples, the tiny CIFAR-10 archive
of conftest.py prepared by tfds, MNIST from ``tfds.testing.mock_data``, synthetic data) and,
for the conv nets, narrow versions of the models, so that the file stays fast on a CPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from experiments import cifar10, configs, flatness, mnist, mnist1d, results
from experiments.launch import components, final_state, jobs
from experiments.models import feedforward as models
from experiments.models import mnist1d_nets
from experiments.optimizers import registry as optimizers
from experiments.run import directory, saved_config
from experiments.run.run_options import RunOptions
from experiments.run.schema import RunConfig
from experiments.trainer import tasks
from tests import test_tensorboard as tensorboard_events

# Runs of the harness end to end: CI runs them, `pytest -m "not slow"` leaves them out.
pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPTS = {
  "cifar10": cifar10,
  "mnist": mnist,
  "mnist1d": mnist1d,
  "flatness": flatness,
  "results": results,
}
QUIET = ["--no-progress"]


class NarrowAllCNN(models.AllCNNBN):
  width1: int = 8
  width2: int = 8


class NarrowLeNet(models.LeNetBN):
  features: tuple[int, int] = (4, 8)
  hidden: int = 16


class NarrowCNN1D(mnist1d_nets.CNN1D):
  channels: int = 4


@pytest.fixture
def narrow_models(monkeypatch):
  """The conv nets at a fraction of their width (XLA:CPU convs are slow in loops)."""
  for name, cls in [("allcnn_bn", NarrowAllCNN), ("lenet_bn", NarrowLeNet), ("cnn1d", NarrowCNN1D)]:
    monkeypatch.setitem(models.MODELS, name, cls)


def run_main(script, argv, capsys):
  """Runs ``script.main(argv)``; returns (exit code, stdout, stderr)."""
  code = script.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return code, out, err


read_records = directory.read_records
read_json = directory.read_json


def tiny_mnist1d(workdir, *extra):
  return [
    "--num-train",
    200,
    "--num-test",
    100,
    "--batch-size",
    50,
    "--workdir",
    workdir,
    *QUIET,
    *extra,
  ]


def test_error_evaluation_of_the_test_split(tmp_path):
  """results.json's test error is the model's error on the test split: recomputed here from
  the last checkpoint, independently of the training loop."""
  config = RunConfig(
    dataset="mnist1d",
    model="mlp1d",
    optimizer="entropy-sgd",
    outer_epochs=2,
    langevin_steps=3,
    batch_size=50,
    learning_rate=0.3,
    num_train=200,
    num_test=100,
    num_seeds=2,
    eval_every_effective_epochs=3,
  )
  options = RunOptions(workdir=str(tmp_path / "run"), progress=False)
  run = jobs.run_experiment(config, options, log=lambda _: None)
  res = read_json(tmp_path / "run" / directory.RESULTS_FILE)
  assert res == json.loads(json.dumps(run.results))
  # ceil(2 epochs x 200 / 50) = 8 updates of L = 3 gradient evaluations: 6 effective epochs.
  assert res["outer_steps"] == 8 and res["effective_epochs"] == 6 and res["outer_epochs"] == 2
  assert res["seeds"] == [0, 1] and res["num_params"] == 40 * 100 + 100 * 100 + 100 * 10 + 210
  variables = final_state.load_final_variables(tmp_path / "run")
  ds = components.load_data(config)
  model = components.make_model(config)
  for s in range(2):
    logits = model.apply(jax.tree.map(lambda a: a[s], variables), ds.test_x, train=False)
    expected = 100 * np.mean(np.argmax(logits, -1) != ds.test_y)
    np.testing.assert_allclose(res["test_error"][s], expected, atol=1e-4)
  np.testing.assert_allclose(res["test_error_mean"], np.mean(res["test_error"]))
  np.testing.assert_allclose(res["test_error_std"], np.std(res["test_error"], ddof=1))
  records = read_records(tmp_path / "run")
  assert [r["step"] for r in records if r["seed"] == 0] == [4, 8]  # an evaluation per 3 eff.
  assert all("langevin_gamma" in r for r in records)
  assert (tmp_path / "run" / directory.PLOT_FILE).stat().st_size > 0
  saved = read_json(tmp_path / "run" / "config.json")
  assert saved["config"]["optimizer"] == "entropy-sgd"
  assert "code_version" in saved


def test_learning_rate_milestones_and_scoping():
  """Schedules count optimizer updates: milestones in outer epochs, gamma0 (1 + gamma1)^t."""
  import optax

  ones = {"w": np.ones(3, np.float32)}
  sgd = RunConfig(
    optimizer="sgd",
    momentum=0.0,
    learning_rate=1.0,
    lr_decay=0.2,
    lr_decay_outer_epochs=(4, 8),
    batch_size=128,
  )
  tx = optimizers.optimizer_factory(sgd, steps_per_epoch=10)(0)
  state = tx.init(ones)
  for t in range(85):
    updates, state = tx.update(ones, state, ones)
    expected = 1.0 if t < 40 else 0.2 if t < 80 else 0.04
    np.testing.assert_allclose(updates["w"], -expected, rtol=1e-6)
  esgd = RunConfig(optimizer="entropy-sgd", langevin_steps=2, gamma0=0.03, gamma1=1e-3)
  tx = optimizers.optimizer_factory(esgd, steps_per_epoch=10)(0)
  state = tx.init(ones)
  for t in range(5):
    _, state = tx.update(ones, state, ones, grad_fn=lambda p, k: ones)
    np.testing.assert_allclose(
      optax.tree.get(state, "langevin_stats").langevin_gamma, 0.03 * 1.001**t, rtol=1e-6
    )


# ---------------------------------------------------------------------------
# The MNIST-1D main job, the results table, resume and never-overwrite.
# ---------------------------------------------------------------------------


# Adam: 5 epochs of 4 updates; Entropy-SGD (L = 5): 1 epoch of 4 updates. Evaluations and
# checkpoints every 2.5 effective epochs.
GRID = [
  "--models",
  "mlp1d",
  "--optimizers",
  "adam",
  "entropy-sgd",
  "--effective-epochs",
  5,
  "--num-seeds",
  2,
  "--eval-every-effective-epochs",
  2.5,
  "--recipe.adam.checkpoint-every-evals",
  1,
  "--recipe.entropy-sgd.checkpoint-every-evals",
  1,
]


@pytest.fixture(scope="module")
def mnist1d_grid(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("grid") / "mnist1d"
  code = mnist1d.main([str(a) for a in tiny_mnist1d(workdir, *GRID)])
  assert code == 0
  return workdir


def test_mnist1d_main_job(mnist1d_grid):
  workdir = mnist1d_grid
  summary = (workdir / "summary.md").read_text()
  table = read_json(workdir / directory.RESULTS_FILE)
  assert set(table) == {"mlp1d-adam", "mlp1d-entropy-sgd"}
  esgd = table["mlp1d-entropy-sgd"]
  # Equal budgets: Entropy-SGD with L = 5 makes a fifth of the updates.
  assert table["mlp1d-adam"]["effective_epochs"] == esgd["effective_epochs"] == 5
  assert table["mlp1d-adam"]["outer_steps"] == 20 and esgd["outer_steps"] == 4
  accuracy = f"{100 - esgd['test_error_mean']:.1f} ± {esgd['test_error_std']:.1f}"
  assert f"| MLP | Entropy-SGD | {accuracy} |" in summary
  assert "| 68.0 |" in summary  # the benchmark's published accuracy beside Adam
  assert len(esgd["seeds"]) == 2
  assert (workdir / "test_error.png").stat().st_size > 0
  for run in table:
    assert (workdir / run / directory.RESULTS_FILE).exists()
    assert (workdir / run / "checkpoints").is_dir()
  saved = read_json(workdir / "mlp1d-entropy-sgd" / "config.json")["config"]
  assert saved["lr_decay_outer_epochs"] == [0.5, 0.75] and saved["langevin_steps"] == 5


def test_results_table_from_finished_runs(mnist1d_grid, capsys, tmp_path):
  output = tmp_path / "table.md"
  code, out, _ = run_main(results, [mnist1d_grid.parent, "--output", output], capsys)
  assert code == 0 and output.read_text() == out
  adam = read_json(mnist1d_grid / "mlp1d-adam" / directory.RESULTS_FILE)
  esgd = read_json(mnist1d_grid / "mlp1d-entropy-sgd" / directory.RESULTS_FILE)
  row = (
    f"| MLP | MNIST-1D | Entropy-SGD | {esgd['test_error_mean']:.2f} ± "
    f"{esgd['test_error_std']:.2f} (2) | 5 |  | Adam | {adam['test_error_mean']:.2f} ± "
    f"{adam['test_error_std']:.2f} (2) | 5 | 32 (benchmark: 68% acc.) |"
  )
  assert row in out.splitlines()
  # Table 1's rows: the paper's figure beside each run (taken from the presets' data).
  fake = tmp_path / "fake"
  for optimizer in ("sgd", "entropy-sgd"):
    (fake / optimizer).mkdir(parents=True)
    directory.write_json(
      fake / optimizer / directory.RESULTS_FILE,
      dict(
        adam,
        dataset="cifar10",
        model="allcnn_bn",
        optimizer=optimizer,
        paper=configs.paper_result("cifar10", "allcnn_bn", optimizer),
      ),
    )
  code, out, _ = run_main(results, [fake], capsys)
  assert "| All-CNN-BN | CIFAR-10 | Entropy-SGD |" in out
  assert "| 7.81 ± 0.09 (160) | SGD |" in out and "| 7.71 ± 0.19 (180) |" in out


def test_never_overwrite_and_overwrite(mnist1d_grid, capsys, tmp_path):
  before = {p: p.read_bytes() for p in mnist1d_grid.rglob("*.json*")}
  code, _, err = run_main(mnist1d, tiny_mnist1d(mnist1d_grid, "--models", "mlp1d"), capsys)
  assert code == 1 and "already holds a run" in err and "--resume" in err
  assert "--overwrite" in err and len(err.strip().splitlines()) == 1
  assert {p: p.read_bytes() for p in mnist1d_grid.rglob("*.json*")} == before
  # A directory that holds something else is never deleted, even with --overwrite.
  other = tmp_path / "other"
  other.mkdir()
  (other / "thesis.tex").write_text("precious")
  code, _, err = run_main(mnist1d, tiny_mnist1d(other, "--overwrite"), capsys)
  assert code == 1 and "holds no run" in err and (other / "thesis.tex").exists()
  # --resume where there is nothing to resume.
  for missing in (tmp_path / "missing", tmp_path / "empty"):
    if missing.name == "empty":
      missing.mkdir()
    code, _, err = run_main(mnist1d, tiny_mnist1d(missing, "--resume"), capsys)
    assert code == 1 and "nothing to resume" in err and len(err.strip().splitlines()) == 1
  # --overwrite replaces a run.
  copy = tmp_path / "copy"
  shutil.copytree(mnist1d_grid, copy)
  code, out, _ = run_main(
    mnist1d,
    tiny_mnist1d(
      copy, "--overwrite", "--models", "mlp1d", "--optimizers", "sgd", "--effective-epochs", 1
    ),
    capsys,
  )
  assert code == 0 and sorted(p.name for p in copy.iterdir() if p.is_dir()) == ["mlp1d-sgd"]


def _drop_time(rs):
  return [{k: v for k, v in r.items() if k != "wall_time"} for r in rs]


def test_killed_job_resumes_to_the_same_result(mnist1d_grid, tmp_path):
  """A real kill (SIGKILL of the process) once the Adam run has checkpointed, then --resume:
  the records and results are those of the uninterrupted job, bit for bit on CPU, and the
  TensorBoard events hold the records, each step once."""
  workdir = tmp_path / "killed"
  argv = [sys.executable, "-m", "experiments.mnist1d", *map(str, tiny_mnist1d(workdir, *GRID))]
  env = dict(os.environ, PYTHONPATH=str(REPO))
  proc = subprocess.Popen(
    argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  checksum = workdir / "mlp1d-adam" / "checkpoints.sha256" / "10.json"
  deadline = time.monotonic() + 300
  while not checksum.exists() and proc.poll() is None and time.monotonic() < deadline:
    time.sleep(0.05)
  proc.kill()
  proc.wait()
  assert checksum.exists() and not (workdir / "mlp1d-adam" / directory.RESULTS_FILE).exists()
  out = subprocess.run(
    argv + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
  )
  assert out.returncode == 0, out.stderr[-2000:]
  for run in ("mlp1d-adam", "mlp1d-entropy-sgd"):
    assert _drop_time(read_records(workdir / run)) == _drop_time(read_records(mnist1d_grid / run))
    assert (
      read_json(workdir / run / directory.RESULTS_FILE)["test_error"]
      == read_json(mnist1d_grid / run / directory.RESULTS_FILE)["test_error"]
    )
    tensorboard_events.assert_events_match(workdir / run)


def test_resume_never_restores_a_bad_checkpoint(mnist1d_grid, capsys, tmp_path):
  """Garbled data in the newest checkpoint: --resume falls back to the previous one and ends
  where the uninterrupted run did; every checkpoint bad: one line saying what to do."""
  from tests.test_training import garble

  killed = tmp_path / "garbled"
  shutil.copytree(mnist1d_grid, killed)
  run = killed / "mlp1d-adam"
  (run / directory.RESULTS_FILE).unlink()
  garble(run / "checkpoints" / "20")
  code, out, err = run_main(mnist1d, [*tiny_mnist1d(killed, *GRID), "--resume"], capsys)
  assert code == 0, err
  assert "checkpoints/20 is unusable: its files do not match their checksums" in out
  reference = mnist1d_grid / "mlp1d-adam"
  assert _drop_time(read_records(run)) == _drop_time(read_records(reference))
  assert (
    read_json(run / directory.RESULTS_FILE)["test_error"]
    == read_json(reference / directory.RESULTS_FILE)["test_error"]
  )
  # An emptied manifest in every checkpoint: one line, no traceback, nothing deleted.
  (run / directory.RESULTS_FILE).unlink()
  for manifest in (run / "checkpoints").rglob("manifest.ocdbt"):
    manifest.write_bytes(b"")
  code, _, err = run_main(mnist1d, [*tiny_mnist1d(killed, *GRID), "--resume"], capsys)
  assert code == 1 and len(err.strip().splitlines()) == 1, err
  assert "unusable" in err and "--overwrite" in err and "resume=" not in err
  assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["10", "20"]


def test_resume_with_another_configuration_is_refused(mnist1d_grid, capsys, tmp_path):
  copy = tmp_path / "copy"
  shutil.copytree(mnist1d_grid, copy)
  code, _, err = run_main(
    mnist1d, [*tiny_mnist1d(copy, *GRID), "--eval-every-effective-epochs", 1, "--resume"], capsys
  )
  assert code == 1 and "another configuration" in err
  assert "--recipe.adam.eval-every-effective-epochs 1" in err


def test_a_run_directory_of_the_older_layout_still_resumes(tmp_path):
  """tests/data/run_84cfb91 is a run written by the code of 84cfb91 (its config.json held the
  loop's step counts under ``config`` and the run under ``metadata.experiment``), killed after
  step 10 with its checkpoint of step 8 (tests/data/README.md). It resumes from step 8 with
  its saved config and ends where a fresh run of today's code ends; its config.json is then
  written in today's form."""
  old = tmp_path / "old"
  shutil.copytree(REPO / "tests" / "data" / "run_84cfb91", old)
  config = saved_config.saved_config(old, {})
  assert config.optimizer == "entropy-sgd" and config.langevin_steps == 2
  quiet = dict(progress=False, tensorboard=False)
  logged = []
  resumed = jobs.run_experiment(
    config, RunOptions(workdir=str(old), resume=True, **quiet), log=logged.append
  )
  fresh = jobs.run_experiment(
    config, RunOptions(workdir=str(tmp_path / "fresh"), **quiet), log=lambda _: None
  )
  assert [r["step"] for r in resumed.records] == [2 * i for i in range(1, 9)]
  # Resumed, not started afresh: the records up to the checkpoint are those saved.
  saved = read_records(REPO / "tests" / "data" / "run_84cfb91")
  assert resumed.records[:4] == [r for r in saved if r["step"] <= 8]
  for a, b in zip(_drop_time(resumed.records), _drop_time(fresh.records), strict=True):
    assert a.keys() == b.keys()
    # The steps up to 8 were computed by the older code (and perhaps another jax): float32
    # rounding apart, the same numbers.
    np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(
    resumed.results["test_error"], fresh.results["test_error"], rtol=1e-5, atol=1e-7
  )
  assert read_json(old / "config.json")["config"] == dataclasses.asdict(config) | {
    "lr_decay_outer_epochs": list(config.lr_decay_outer_epochs)
  }


# ---------------------------------------------------------------------------
# CIFAR-10 and MNIST through tfds; --synthetic.
# ---------------------------------------------------------------------------


def test_cifar10_through_tfds_preparation(cifar_dir, narrow_models, capsys, tmp_path):
  """The script on the tiny CIFAR-10 archive that tfds prepared (conftest.py)."""
  data_dir, _ = cifar_dir
  workdir = tmp_path / "cifar"
  code, out, err = run_main(
    cifar10,
    [
      "entropy-sgd",
      "--data-dir",
      data_dir,
      "--no-download",
      "--outer-epochs",
      1,
      "--batch-size",
      5,
      "--langevin-steps",
      2,
      "--workdir",
      workdir,
      *QUIET,
    ],
    capsys,
  )
  assert code == 0, err
  res = read_json(workdir / directory.RESULTS_FILE)
  assert res["dataset"] == "cifar10" and res["num_train"] == 15 and res["num_test"] == 4
  assert res["optimizer"] == "entropy-sgd" and res["outer_steps"] == 3
  assert res["effective_epochs"] == 2 and res["paper"] == "7.81 ± 0.09 (160)"
  assert "paper: 7.81 ± 0.09 (160)" in out
  saved = read_json(workdir / "config.json")
  experiment = saved["config"]
  # The preset's recipe, with the options given on the command line.
  assert experiment["gamma0"] == 0.03 and experiment["lr_decay_outer_epochs"] == [4.0, 8.0]
  assert experiment["weight_decay"] == 1e-3 and experiment["langevin_steps"] == 2
  assert saved["step_runner_used"] == "dispatch"  # a conv net on CPU


def test_cifar10_synthetic(narrow_models, capsys, tmp_path):
  workdir = tmp_path / "synthetic"
  code, out, err = run_main(
    cifar10,
    [
      "sgd",
      "--synthetic",
      "--num-train",
      16,
      "--num-test",
      8,
      "--outer-epochs",
      1,
      "--batch-size",
      8,
      "--workdir",
      workdir,
      *QUIET,
    ],
    capsys,
  )
  assert code == 0, err
  res = read_json(workdir / directory.RESULTS_FILE)
  assert res["dataset"] == "synthetic:cifar10" and res["outer_steps"] == 2
  assert res["time_per_effective_epoch_s"] > 0 and "s per effective epoch" in out


@pytest.mark.parametrize("model, preset", [("lenet_bn", "adam"), ("mnistfc", "entropy-sgd")])
def test_mnist_through_mock_data(model, preset, narrow_models, capsys, tmp_path):
  from experiments.data import datasets as data

  tfds = data._import_tfds()
  workdir = tmp_path / "mnist"
  argv = [
    preset,
    "--model",
    model,
    "--outer-epochs",
    1,
    "--batch-size",
    8,
    "--workdir",
    workdir,
    *QUIET,
  ]
  if preset == "entropy-sgd":
    argv += ["--langevin-steps", 2]
  with tfds.testing.mock_data(num_examples=16):
    code, out, err = run_main(mnist, argv, capsys)
  assert code == 0, err
  res = read_json(workdir / directory.RESULTS_FILE)
  assert res["dataset"] == "mnist" and res["model"] == model and res["outer_steps"] == 2
  assert res["paper"] == configs.mnist.PRESETS[preset].paper[model]


# ---------------------------------------------------------------------------
# The flatness experiment.
# ---------------------------------------------------------------------------


FLAT = [
  "mnist1d",
  "--num-train",
  100,
  "--num-test",
  50,
  "--effective-epochs",
  5,
  "--hessian-examples",
  60,
  "--hessian-batch",
  30,
  "--batch-size",
  25,
  "--eval-every-effective-epochs",
  5,
]


def test_flatness_on_tiny_mnist1d(narrow_models, capsys, tmp_path):
  workdir = tmp_path / "flat"
  code, out, err = run_main(flatness, [*FLAT, "--workdir", workdir, *QUIET], capsys)
  assert code == 0, err
  stats = read_json(workdir / "flatness.json")
  assert list(stats) == ["Adam", "Entropy-SGD"]
  # The exact spectrum, checked against jax.hessian of the same loss at the saved minimum.
  ds = components.load_data(RunConfig(dataset="mnist1d", num_train=100, num_test=50, batch_size=25))
  for optimizer, label in [("adam", "Adam"), ("entropy-sgd", "Entropy-SGD")]:
    eigenvalues = np.load(workdir / f"eigenvalues-{optimizer}-seed0.npy")
    variables = final_state.load_final_variables(workdir / optimizer)
    model = NarrowCNN1D()
    flat, unravel = ravel_pytree(variables["params"])

    def loss(v):
      logits = model.apply({"params": unravel(v)}, ds.train_x[:60], train=False)
      return tasks.cross_entropy(logits, ds.train_y[:60])

    expected = np.linalg.eigvalsh(np.asarray(jax.hessian(loss)(flat), np.float64))
    assert eigenvalues.shape == expected.shape == (stats[label]["count"],)
    np.testing.assert_allclose(eigenvalues, expected, atol=2e-4 * abs(expected).max())
    np.testing.assert_allclose(
      stats[label]["frac_abs_below_1e-02"], np.mean(np.abs(expected) < 1e-2), atol=0.02
    )
    test_error = read_json(workdir / optimizer / directory.RESULTS_FILE)["test_error"][0]
    assert stats[label]["test_error"] == test_error
  assert "| fraction \\|λ\\| < 1e-04 |" in out and "| largest λ |" in out
  assert (workdir / "spectrum.png").stat().st_size > 0
  # Random perturbations: at radius 0 every direction gives the loss at the solution, and the
  # local entropy log mean exp(-loss) is then -loss.
  for label in ("Adam", "Entropy-SGD"):
    for kind in ("relative", "absolute"):
      profile = stats[label]["perturbation"][kind]
      assert profile["radii"][0] == 0.0 and len(profile["mean"]) == 6
      np.testing.assert_allclose(profile["mean"][0], stats[label]["loss"], rtol=1e-5)
      np.testing.assert_allclose(profile["std"][0], 0.0, atol=1e-6)
      np.testing.assert_allclose(profile["local_entropy"][0], -stats[label]["loss"], rtol=1e-5)
  assert "| relative radius |" in out and (workdir / "perturbation.png").stat().st_size > 0
  # The same measurement on the finished run directories (--runs), without training.
  again = tmp_path / "again"
  code, out, err = run_main(
    flatness,
    ["mnist1d", "--runs", workdir / "adam", workdir / "entropy-sgd", "--workdir", again]
    + ["--hessian-examples", 60, "--hessian-batch", 30, "--absolute-radii", *QUIET],
    capsys,
  )
  assert code == 0, err
  remeasured = read_json(again / "flatness.json")
  for label in ("Adam", "Entropy-SGD"):
    assert list(remeasured[label]["perturbation"]) == ["relative"]
    assert remeasured[label]["perturbation"]["relative"] == stats[label]["perturbation"]["relative"]
    np.testing.assert_allclose(remeasured[label]["max_eigenvalue"], stats[label]["max_eigenvalue"])
  code, _, err = run_main(flatness, ["mnist1d", "--runs", tmp_path, *QUIET], capsys)
  assert code == 1 and "no config.json" in err
  # The paper's Fisher proxy on the same (finished, reused) Adam run: Adam's bias-corrected
  # second moment, read from the run's last checkpoint.
  code, out, err = run_main(
    flatness,
    [
      *FLAT,
      "--optimizers",
      "adam",
      "--workdir",
      workdir,
      "--resume",
      "--method",
      "adam-fisher",
      *QUIET,
    ],
    capsys,
  )
  assert code == 0, err
  assert "Adam's second moment along the trajectory" in out
  state = final_state.load_final_state(workdir / "adam")
  adam_state = next(
    s
    for s in jax.tree.leaves(state["opt_state"], is_leaf=lambda x: hasattr(x, "nu"))
    if hasattr(s, "nu")
  )
  expected = ravel_pytree(adam_state.nu)[0] / (1 - 0.999 ** int(adam_state.count))
  np.testing.assert_allclose(
    np.load(workdir / "eigenvalues-adam-seed0.npy"), expected, rtol=1e-4
  )  # the bias correction in float32 vs float64
  code, _, err = run_main(
    flatness, [*FLAT, "--workdir", workdir, "--resume", "--method", "adam-fisher", *QUIET], capsys
  )
  assert code == 1 and "adam-fisher" in err and "entropy-sgd" in err


# ---------------------------------------------------------------------------
# The command line: --help, one-line errors.
# ---------------------------------------------------------------------------


def help_text(script, argv, capsys):
  with pytest.raises(SystemExit) as exit_:
    script.main([*argv, "--help"])
  assert exit_.value.code == 0
  return capsys.readouterr().out


@pytest.mark.parametrize("name", ["cifar10", "mnist"])
def test_help_documents_every_option_and_preset(name, capsys):
  module = getattr(configs, name)
  top = help_text(SCRIPTS[name], [], capsys)
  for preset_name, preset in module.PRESETS.items():
    assert preset_name in top and preset.description.split(",")[0] in top
  text = " ".join(help_text(SCRIPTS[name], [next(iter(module.PRESETS))], capsys).split())
  for field in dataclasses.fields(RunConfig):
    assert re.search(f"--{field.name.replace('_', '-')}[ ,]", text), field.name
  for option in (
    "--workdir",
    "--resume",
    "--overwrite",
    "--data-dir",
    "--no-download",
    "--synthetic",
    "--progress",
    "--no-tensorboard",
  ):
    assert option in text


def test_help_of_the_other_scripts(capsys):
  grid_help = " ".join(help_text(mnist1d, [], capsys).split())
  for option in (
    "--models",
    "--optimizers",
    "--effective-epochs",
    "--num-seeds",
    "--workdir",
    "--resume",
    "--overwrite",
    "--no-tensorboard",
    "--recipe.NAME.FIELD",
    "--help-recipe NAME",
  ):
    assert option in grid_help
  assert "%%" not in grid_help
  with pytest.raises(SystemExit) as exit_:  # a recipe's fields, on request
    mnist1d.main(["--help-recipe", "entropy-sgd"])
  assert exit_.value.code == 0
  recipe_help = " ".join(capsys.readouterr().out.split())
  assert "--recipe.entropy-sgd.FIELD VALUE" in recipe_help and "--gamma0" in recipe_help
  flat = " ".join(help_text(flatness, ["mnist1d"], capsys).split())
  for option in (
    "--method",
    "--hessian-examples",
    "--lanczos-iters",
    "--max-exact-params",
    "--resume",
    "adam-fisher",
    "per-example empirical Fisher",
  ):
    assert option in flat
  assert "--output" in help_text(results, [], capsys)


@pytest.mark.parametrize(
  "script, argv, code, message",
  [
    ("cifar10", ["adamw"], 2, "adamw"),
    ("cifar10", ["sgd", "--learning-rate", "fast"], 2, "could not convert string to float"),
    ("cifar10", ["sgd", "--learning-rate", "-1"], 1, "--learning-rate must be > 0"),
    ("mnist", ["adam", "--model", "allcnn_bn"], 1, "--model must be one of mnistfc, lenet_bn"),
    ("mnist", ["adam", "--langevin-steps", "5"], 1, "makes one update per L mini-batches"),
    ("mnist", ["adam", "--lr-decay-outer-epochs", "3", "2"], 1, "increasing positive"),
    ("mnist1d", ["--recipe.entropy-sgd.gama0", "1"], 2, "Unrecognized options"),
    (
      "mnist1d",
      ["--batch-size", "50", "--recipe.adam.batch-size", "7"],
      1,
      "the job sets batch_size",
    ),
    ("mnist1d", ["--models", "resnet"], 1, "choose from mlp1d, cnn1d"),
    ("mnist1d", ["--effective-epochs", "0"], 1, "--effective-epochs must be > 0"),
    ("flatness", ["mnist", "--models", "cnn1d"], 1, "choose from mnistfc, lenet_bn"),
    ("results", [], 2, "RUNS_DIR"),
  ],
)
def test_bad_command_lines_give_one_line(script, argv, code, message, capsys, tmp_path):
  workdir = ["--workdir", tmp_path / "w"] if script != "results" else []
  got, _, err = run_main(SCRIPTS[script], argv + workdir, capsys)
  assert got == code and message in err, err
  assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
  if code == 2:  # a command line that does not parse
    assert "--help" in err
  assert not (tmp_path / "w").exists()  # nothing was created


def test_unwritable_workdir(capsys, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  code, _, err = run_main(mnist1d, tiny_mnist1d(blocker / "run"), capsys)
  assert code == 1 and "cannot write the run directory" in err and "--workdir" in err
  assert len(err.strip().splitlines()) == 1
  code, _, err = run_main(results, [tmp_path / "missing"], capsys)
  assert code == 1 and "is not a directory" in err


def test_absent_dataset(capsys, tmp_path):
  code, _, err = run_main(
    cifar10,
    [
      "sgd",
      "--data-dir",
      tmp_path / "empty",
      "--no-download",
      "--workdir",
      tmp_path / "run",
      *QUIET,
    ],
    capsys,
  )
  assert code == 1 and len(err.strip().splitlines()) == 1
  assert "CIFAR-10 is not prepared" in err and "--synthetic" in err and "--data-dir" in err


def test_entry_point_exit_codes_without_traceback(tmp_path):
  """The real ``python -m`` entry points: non-zero exits, one line, no traceback."""
  env = dict(os.environ, PYTHONPATH=str(REPO))
  for argv, code in [
    (["experiments.cifar10", "nope"], 2),
    (["experiments.mnist1d", "--recipe.sgd.learning-rate", "0"], 1),
  ]:
    proc = subprocess.run(
      [sys.executable, "-m", *argv],
      capture_output=True,
      text=True,
      cwd=tmp_path,
      env=env,
      timeout=120,
    )
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("error: ")
