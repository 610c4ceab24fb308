"""Tests of the experiment scripts: one-step smoke runs, the command line, run directories.

Everything runs on tiny data (MNIST-1D with a few hundred examples, the tiny CIFAR-10 archive
of conftest.py prepared by tfds, MNIST from ``tfds.testing.mock_data``, synthetic data) and,
for the conv nets, narrow versions of the models, so that the file stays fast on a CPU.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
from jax.flatten_util import ravel_pytree
import numpy as np
import pytest

from experiments import cifar10, common, flatness, mnist, mnist1d, models, results, training

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPTS = {"cifar10": cifar10, "mnist": mnist, "mnist1d": mnist1d, "flatness": flatness,
           "results": results}
QUIET = ["--no-progress"]


class NarrowAllCNN(models.AllCNNBN):
  width1: int = 8
  width2: int = 8


class NarrowLeNet(models.LeNetBN):
  features: tuple[int, int] = (4, 8)
  hidden: int = 16


class NarrowCNN1D(models.CNN1D):
  channels: int = 4


@pytest.fixture
def narrow_models(monkeypatch):
  """The conv nets at a fraction of their width (XLA:CPU convs are slow in loops)."""
  for name, cls in [("allcnn_bn", NarrowAllCNN), ("lenet_bn", NarrowLeNet),
                    ("cnn1d", NarrowCNN1D)]:
    monkeypatch.setitem(models.MODELS, name, cls)


def run_main(script, argv, capsys):
  """Runs ``script.main(argv)``; returns (exit code, stdout, stderr)."""
  code = script.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return code, out, err


def read_records(workdir):
  path = pathlib.Path(workdir) / training.METRICS_FILE
  return [json.loads(line) for line in path.read_text().splitlines()]


def tiny_mnist1d(workdir, *extra):
  return ["--num-train", 200, "--num-test", 100, "--batch-size", 50, "--workdir", workdir,
          *QUIET, *extra]


def test_error_evaluation_of_the_test_split(tmp_path):
  """results.json's test error is the model's error on the test split: recomputed here from
  the last checkpoint, independently of the training loop."""
  config = common.RunConfig(dataset="mnist1d", model="mlp1d", optimizer="entropy-sgd",
                            epochs=2, langevin_steps=3, batch_size=50, learning_rate=0.3,
                            num_train=200, num_test=100, num_seeds=2, eval_every=3)
  options = common.RunOptions(workdir=str(tmp_path / "run"), progress=False)
  run = common.run_experiment(config, options, log=lambda _: None)
  res = common.read_json(tmp_path / "run" / common.RESULTS_FILE)
  assert res == json.loads(json.dumps(run.results))
  # ceil(2 epochs x 200 / 50) = 8 updates of L = 3 gradient evaluations: 6 effective epochs.
  assert res["outer_steps"] == 8 and res["effective_epochs"] == 6 and res["epochs"] == 2
  assert res["seeds"] == [0, 1] and res["num_params"] == 40 * 100 + 100 * 100 + 100 * 10 + 210
  variables = common.load_final_variables(tmp_path / "run")
  ds = common.load_data(config, options)
  model = common.make_model(config)
  for s in range(2):
    logits = model.apply(jax.tree.map(lambda a: a[s], variables), ds.test_x, train=False)
    expected = 100 * np.mean(np.argmax(logits, -1) != ds.test_y)
    np.testing.assert_allclose(res["test_error"][s], expected, atol=1e-4)
  np.testing.assert_allclose(res["test_error_mean"], np.mean(res["test_error"]))
  np.testing.assert_allclose(res["test_error_std"], np.std(res["test_error"], ddof=1))
  records = read_records(tmp_path / "run")
  assert [r["step"] for r in records if r["seed"] == 0] == [4, 8]  # an evaluation per 3 eff.
  assert all("langevin_gamma" in r for r in records)
  assert (tmp_path / "run" / common.PLOT_FILE).stat().st_size > 0
  saved = common.read_json(tmp_path / "run" / "config.json")
  assert saved["metadata"]["experiment"]["optimizer"] == "entropy-sgd"
  assert "code_version" in saved


def test_file_names_match_the_training_loop():
  assert (common.CONFIG_FILE, common.METRICS_FILE, common.CHECKPOINT_DIR) == (
      training.CONFIG_FILE, training.METRICS_FILE, training.CHECKPOINT_DIR)


def test_learning_rate_milestones_and_scoping():
  """Schedules count optimizer updates: milestones in outer epochs, gamma0 (1 + gamma1)^t."""
  import optax

  ones = {"w": np.ones(3, np.float32)}
  sgd = common.RunConfig(optimizer="sgd", momentum=0.0, learning_rate=1.0, lr_decay=0.2,
                         lr_decay_epochs=(4, 8), batch_size=128)
  tx = common.make_optimizer(sgd, num_examples=1280)  # 10 updates per epoch
  state = tx.init(ones)
  for t in range(85):
    updates, state = tx.update(ones, state, ones)
    expected = 1.0 if t < 40 else 0.2 if t < 80 else 0.04
    np.testing.assert_allclose(updates["w"], -expected, rtol=1e-6)
  esgd = common.RunConfig(optimizer="entropy-sgd", langevin_steps=2, gamma0=0.03, gamma1=1e-3)
  tx = common.make_optimizer(esgd, num_examples=1280)
  state = tx.init(ones)
  for t in range(5):
    _, state = tx.update(ones, state, ones, grad_fn=lambda p, k: ones)
    np.testing.assert_allclose(optax.tree.get(state, "langevin_stats").langevin_gamma,
                               0.03 * 1.001**t, rtol=1e-6)


# ---------------------------------------------------------------------------
# The MNIST-1D main job, the results table, resume and never-overwrite.
# ---------------------------------------------------------------------------


# Adam: 5 epochs of 4 updates; Entropy-SGD (L = 5): 1 epoch of 4 updates. Evaluations and
# checkpoints every 2.5 effective epochs.
GRID = ["--models", "mlp1d", "--optimizers", "adam,entropy-sgd", "--effective-epochs", 5,
        "--num-seeds", 2, "--eval-every", 2.5, "--set", "checkpoint_every=1"]


@pytest.fixture(scope="module")
def mnist1d_grid(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("grid") / "mnist1d"
  code = mnist1d.main([str(a) for a in tiny_mnist1d(workdir, *GRID)])
  assert code == 0
  return workdir


def test_mnist1d_main_job(mnist1d_grid, capsys):
  workdir = mnist1d_grid
  summary = (workdir / "summary.md").read_text()
  table = common.read_json(workdir / common.RESULTS_FILE)
  assert set(table) == {"mlp1d-adam", "mlp1d-entropy-sgd"}
  esgd = table["mlp1d-entropy-sgd"]
  # Equal budgets: Entropy-SGD with L = 5 makes a fifth of the updates.
  assert table["mlp1d-adam"]["effective_epochs"] == esgd["effective_epochs"] == 5
  assert table["mlp1d-adam"]["outer_steps"] == 20 and esgd["outer_steps"] == 4
  accuracy = f"{100 - esgd['test_error_mean']:.1f} ± {esgd['test_error_std']:.1f}"
  assert f"| MLP | Entropy-SGD | {accuracy} |" in summary
  assert len(esgd["seeds"]) == 2
  assert (workdir / "test_error.png").stat().st_size > 0
  for run in table:
    assert (workdir / run / common.RESULTS_FILE).exists()
    assert (workdir / run / "checkpoints").is_dir()


def test_results_table_from_finished_runs(mnist1d_grid, capsys, tmp_path):
  output = tmp_path / "table.md"
  code, out, _ = run_main(results, [mnist1d_grid.parent, "--output", output], capsys)
  assert code == 0 and output.read_text() == out
  adam = common.read_json(mnist1d_grid / "mlp1d-adam" / common.RESULTS_FILE)
  esgd = common.read_json(mnist1d_grid / "mlp1d-entropy-sgd" / common.RESULTS_FILE)
  row = (f"| MLP | MNIST-1D | Entropy-SGD | {esgd['test_error_mean']:.2f} ± "
         f"{esgd['test_error_std']:.2f} (2) | 5 |  | Adam | {adam['test_error_mean']:.2f} ± "
         f"{adam['test_error_std']:.2f} (2) | 5 | 32 (benchmark: 68% acc.) |")
  assert row in out.splitlines()
  # Table 1's rows: the paper's figure beside each run.
  fake = tmp_path / "fake"
  for optimizer in ("sgd", "entropy-sgd"):
    (fake / optimizer).mkdir(parents=True)
    common.write_json(fake / optimizer / common.RESULTS_FILE, dict(
        adam, dataset="cifar10", model="allcnn_bn", optimizer=optimizer,
        paper=common.PAPER["cifar10", "allcnn_bn", optimizer]))
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
  # --overwrite replaces a run.
  copy = tmp_path / "copy"
  shutil.copytree(mnist1d_grid, copy)
  code, out, _ = run_main(mnist1d, tiny_mnist1d(
      copy, "--overwrite", "--models", "mlp1d", "--optimizers", "sgd",
      "--effective-epochs", 1), capsys)
  assert code == 0 and sorted(p.name for p in copy.iterdir() if p.is_dir()) == ["mlp1d-sgd"]


def test_resume_continues_a_killed_run(mnist1d_grid, capsys, tmp_path):
  """A run killed after its first checkpoint continues from it to the same result."""
  killed = tmp_path / "killed"
  shutil.copytree(mnist1d_grid, killed)
  run = killed / "mlp1d-adam"
  reference = read_records(run)
  final = common.read_json(run / common.RESULTS_FILE)
  # What a kill between the checkpoints of steps 10 and 20 leaves: no results, no step 20.
  (run / common.RESULTS_FILE).unlink()
  shutil.rmtree(run / "checkpoints" / "20")
  lines = (run / training.METRICS_FILE).read_text().splitlines()
  (run / training.METRICS_FILE).write_text("\n".join(lines[:2]) + "\n")
  argv = tiny_mnist1d(killed, *GRID)
  code, out, _ = run_main(mnist1d, [*argv, "--resume"], capsys)
  assert code == 0
  assert "mlp1d-entropy-sgd: finished already" in out  # not retrained
  resumed = read_records(run)
  drop_time = lambda rs: [{k: v for k, v in r.items() if k != "wall_time"} for r in rs]
  assert drop_time(resumed) == drop_time(reference)  # bit-identical continuation on CPU
  assert common.read_json(run / common.RESULTS_FILE)["test_error"] == final["test_error"]
  # Resuming with another configuration is refused.
  code, _, err = run_main(mnist1d, [*argv, "--eval-every", 1, "--resume"], capsys)
  assert code == 1 and "another configuration" in err and "--eval-every 1" in err


# ---------------------------------------------------------------------------
# CIFAR-10 and MNIST through tfds; --synthetic.
# ---------------------------------------------------------------------------


def test_cifar10_through_tfds_preparation(cifar_dir, narrow_models, capsys, tmp_path):
  """The script on the tiny CIFAR-10 archive that tfds prepared (conftest.py)."""
  data_dir, _ = cifar_dir
  workdir = tmp_path / "cifar"
  code, out, err = run_main(cifar10, [
      "--preset", "entropy-sgd", "--data-dir", data_dir, "--no-download", "--epochs", 1,
      "--batch-size", 5, "--langevin-steps", 2, "--workdir", workdir, *QUIET], capsys)
  assert code == 0, err
  res = common.read_json(workdir / common.RESULTS_FILE)
  assert res["dataset"] == "cifar10" and res["num_train"] == 15 and res["num_test"] == 4
  assert res["optimizer"] == "entropy-sgd" and res["outer_steps"] == 3
  assert res["effective_epochs"] == 2 and res["paper"] == "7.81 ± 0.09 (160)"
  assert "paper: 7.81 ± 0.09 (160)" in out
  saved = common.read_json(workdir / "config.json")["metadata"]["experiment"]
  # The preset's recipe, with the options given on the command line.
  assert saved["gamma0"] == 0.03 and saved["lr_decay_epochs"] == [4.0, 8.0]
  assert saved["weight_decay"] == 1e-3 and saved["langevin_steps"] == 2


def test_cifar10_synthetic(narrow_models, capsys, tmp_path):
  workdir = tmp_path / "synthetic"
  code, out, err = run_main(cifar10, [
      "--preset", "sgd", "--synthetic", "--num-train", 16, "--num-test", 8, "--epochs", 1,
      "--batch-size", 8, "--workdir", workdir, *QUIET], capsys)
  assert code == 0, err
  res = common.read_json(workdir / common.RESULTS_FILE)
  assert res["dataset"] == "synthetic:cifar10" and res["outer_steps"] == 2
  assert res["time_per_effective_epoch_s"] > 0 and "s per effective epoch" in out


@pytest.mark.parametrize("model, preset", [("lenet_bn", "adam"), ("mnistfc", "entropy-sgd")])
def test_mnist_through_mock_data(model, preset, narrow_models, capsys, tmp_path):
  from experiments import data

  tfds = data._import_tfds()
  workdir = tmp_path / "mnist"
  argv = ["--preset", preset, "--model", model, "--epochs", 1, "--batch-size", 8,
          "--workdir", workdir, *QUIET]
  if preset == "entropy-sgd":
    argv += ["--langevin-steps", 2]
  with tfds.testing.mock_data(num_examples=16):
    code, out, err = run_main(mnist, argv, capsys)
  assert code == 0, err
  res = common.read_json(workdir / common.RESULTS_FILE)
  assert res["dataset"] == "mnist" and res["model"] == model and res["outer_steps"] == 2
  assert res["paper"] == common.PAPER["mnist", model, preset]


# ---------------------------------------------------------------------------
# The flatness experiment.
# ---------------------------------------------------------------------------


def test_flatness_on_tiny_mnist1d(narrow_models, capsys, tmp_path):
  workdir = tmp_path / "flat"
  code, out, err = run_main(flatness, [
      "--num-train", 100, "--num-test", 50, "--effective-epochs", 5, "--hessian-examples", 60,
      "--hessian-batch", 30, "--set", "batch_size=25", "--set", "eval_every=5", "--workdir",
      workdir, *QUIET], capsys)
  assert code == 0, err
  stats = common.read_json(workdir / "flatness.json")
  assert list(stats) == ["Adam", "Entropy-SGD"]
  # The exact spectrum, checked against jax.hessian of the same loss at the saved minimum.
  ds = common.load_data(common.RunConfig(dataset="mnist1d", num_train=100, num_test=50,
                                         batch_size=25), common.RunOptions(workdir=""))
  for optimizer, label in [("adam", "Adam"), ("entropy-sgd", "Entropy-SGD")]:
    eigenvalues = np.load(workdir / f"eigenvalues-{optimizer}-seed0.npy")
    variables = common.load_final_variables(workdir / optimizer)
    model = NarrowCNN1D()
    flat, unravel = ravel_pytree(variables["params"])

    def loss(v):
      logits = model.apply({"params": unravel(v)}, ds.train_x[:60], train=False)
      return training.cross_entropy(logits, ds.train_y[:60])

    expected = np.linalg.eigvalsh(np.asarray(jax.hessian(loss)(flat), np.float64))
    assert eigenvalues.shape == expected.shape == (stats[label]["count"],)
    np.testing.assert_allclose(eigenvalues, expected, atol=2e-4 * abs(expected).max())
    np.testing.assert_allclose(stats[label]["frac_abs_below_1e-02"],
                               np.mean(np.abs(expected) < 1e-2), atol=0.02)
    test_error = common.read_json(workdir / optimizer / common.RESULTS_FILE)["test_error"][0]
    assert stats[label]["test_error"] == test_error
  assert "| fraction \\|λ\\| < 1e-04 |" in out and "| largest λ |" in out
  assert (workdir / "spectrum.png").stat().st_size > 0
  # Lanczos + SLQ on the same (finished, reused) runs.
  code, out, err = run_main(flatness, [
      "--num-train", 100, "--num-test", 50, "--effective-epochs", 5, "--hessian-examples", 60,
      "--hessian-batch", 30, "--set", "batch_size=25", "--set", "eval_every=5", "--workdir",
      workdir, "--resume",
      "--method", "lanczos", "--lanczos-iters", 12, "--slq-samples", 2, *QUIET], capsys)
  assert code == 0, err
  lanczos = common.read_json(workdir / "flatness.json")
  for label in ("Adam", "Entropy-SGD"):
    assert lanczos[label]["method"] == "lanczos"
    # Ritz values lie inside the spectrum, and the largest converges first.
    assert lanczos[label]["max_eigenvalue"] <= stats[label]["max_eigenvalue"] * (1 + 1e-3)
    np.testing.assert_allclose(lanczos[label]["max_eigenvalue"], stats[label]["max_eigenvalue"],
                               rtol=0.05)


# ---------------------------------------------------------------------------
# The command line: --help, one-line errors.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10", "mnist"])
def test_help_documents_every_option(name):
  text = SCRIPTS[name].parser().format_help()
  for field in common.dataclasses.fields(common.RunConfig):
    if field.name != "dataset":
      assert f"--{field.name.replace('_', '-')} " in text, field.name
  for option in ("--preset", "--workdir", "--resume", "--overwrite", "--data-dir",
                 "--no-download", "--synthetic", "--progress"):
    assert option in text
  for preset in SCRIPTS[name].PRESETS:
    assert preset in text


def test_help_of_the_other_scripts():
  grid = mnist1d.parser().format_help()
  for option in ("--models", "--optimizers", "--effective-epochs", "--num-seeds", "--set",
                 "--workdir", "--resume", "--overwrite"):
    assert option in grid
  for field in common.dataclasses.fields(common.RunConfig):
    assert field.name in grid  # the fields --set takes
  flat = flatness.parser().format_help()
  for option in ("--dataset", "--method", "--hessian-examples", "--lanczos-iters",
                 "--max-exact-params", "--resume"):
    assert option in flat
  assert "--output" in results.parser().format_help()


@pytest.mark.parametrize("script, argv, code, message", [
    ("cifar10", ["--preset", "adamw"], 2, "invalid choice: 'adamw'"),
    ("cifar10", ["--learning-rate", "fast"], 2, "invalid float value: 'fast'"),
    ("cifar10", ["--learning-rate", "-1"], 1, "--learning-rate must be > 0"),
    ("mnist", ["--model", "allcnn_bn"], 2, "invalid choice: 'allcnn_bn'"),
    ("mnist", ["--preset", "adam", "--langevin-steps", "5"], 1, "needs an entropy-* optimizer"),
    ("mnist", ["--lr-decay-epochs", "3,2"], 1, "increasing positive epochs"),
    ("mnist1d", ["--set", "entropy-sgd.gama0=1"], 1, "FIELD a RunConfig field"),
    ("mnist1d", ["--models", "resnet"], 1, "choose from mlp1d, cnn1d"),
    ("mnist1d", ["--effective-epochs", "0"], 1, "--effective-epochs must be > 0"),
    ("flatness", ["--dataset", "mnist", "--model", "cnn1d"], 1, "choose from mnistfc"),
    ("results", [], 2, "the following arguments are required"),
])
def test_bad_command_lines_give_one_line(script, argv, code, message, capsys, tmp_path):
  workdir = ["--workdir", tmp_path / "w"] if script != "results" else []
  got, _, err = run_main(SCRIPTS[script], argv + workdir, capsys)
  assert got == code and message in err, err
  assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
  if code == 2:  # a command line argparse rejects
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
  code, _, err = run_main(cifar10, ["--data-dir", tmp_path / "empty", "--no-download",
                                    "--workdir", tmp_path / "run", *QUIET], capsys)
  assert code == 1 and len(err.strip().splitlines()) == 1
  assert "CIFAR-10 is not prepared" in err and "--synthetic" in err and "--data-dir" in err


def test_entry_point_exit_codes_without_traceback(tmp_path):
  """The real ``python -m`` entry points: non-zero exits, one line, no traceback."""
  env = dict(os.environ, PYTHONPATH=str(REPO))
  for argv, code in [(["experiments.cifar10", "--preset", "nope"], 2),
                     (["experiments.mnist1d", "--set", "lr=1"], 1)]:
    proc = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("error: ")
