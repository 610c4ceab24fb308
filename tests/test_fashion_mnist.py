"""Fashion-MNIST and MNIST from IDX files or tfds (experiments/data/idx.py, mnist_format.py),
the validation split, the presets and the job (python -m experiments.fashion_mnist) on small IDX
files written here: the suite never needs the Debian package."""

from __future__ import annotations

import dataclasses
import gzip
import json
import pathlib
from unittest import mock

import numpy as np
import pytest

from benchmarks import fashion_mnist_progress
from experiments import fashion_mnist
from experiments.configs import fashion_mnist as fashion_configs
from experiments.configs import mnist as mnist_configs
from experiments.data import datasets, idx, mnist_format
from experiments.launch import components
from experiments.run.schema import ConfigError, RunConfig


def write_idx_directory(directory, train, test, *, gz=True, dotted=False):
  """The four MNIST-format files of ``train`` and ``test`` = (uint8 images, labels)."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  for (images_stem, labels_stem), (images, labels) in zip(idx.SPLIT_FILES.values(), (train, test)):
    for stem, array in ((images_stem, images), (labels_stem, np.asarray(labels, np.uint8))):
      name = stem.replace("-idx", ".idx") if dotted else stem
      idx.write(directory / (name + (".gz" if gz else "")), array)
  return directory


def random_split(rng, n):
  return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


@pytest.fixture
def no_system_copy(monkeypatch, tmp_path):
  """No system directory of Fashion-MNIST (the Debian package may be installed here)."""
  monkeypatch.setitem(mnist_format.SYSTEM_DIRECTORIES, "fashion_mnist", str(tmp_path / "absent"))


def test_idx_header_and_payload_bytes(tmp_path):
  array = np.arange(6, dtype=np.uint8).reshape(2, 3)
  idx.write(tmp_path / "a", array)
  # Two zero bytes, type 0x08 (unsigned byte), 2 dimensions, each a big-endian uint32.
  expected = bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 0, 1, 2, 3, 4, 5])
  assert (tmp_path / "a").read_bytes() == expected
  idx.write(tmp_path / "b.gz", array)
  assert gzip.decompress((tmp_path / "b.gz").read_bytes()) == expected
  for name in ("a", "b.gz"):
    np.testing.assert_array_equal(idx.read(tmp_path / name), array)
  wide = np.array([[-2, 70000]], np.int32)
  idx.write(tmp_path / "c", wide)
  assert (tmp_path / "c").read_bytes()[2] == 0x0C
  np.testing.assert_array_equal(idx.read(tmp_path / "c"), wide)


@pytest.mark.parametrize("gz, dotted", [(True, False), (False, False), (True, True)])
def test_load_directory_roundtrip(tmp_path, no_system_copy, gz, dotted):
  rng = np.random.default_rng(0)
  train, test = random_split(rng, 30), random_split(rng, 7)
  directory = write_idx_directory(tmp_path / "d", train, test, gz=gz, dotted=dotted)
  ds = mnist_format.load_fashion_mnist(str(directory), download=False)
  assert ds.name == "fashion_mnist" and ds.num_classes == 10
  assert ds.train_x.shape == (30, 28, 28, 1) and ds.test_x.shape == (7, 28, 28, 1)
  assert ds.train_x.dtype == np.float32 and ds.train_y.dtype == np.int32
  np.testing.assert_array_equal(ds.train_x[..., 0] * np.float32(255), train[0].astype(np.float32))
  np.testing.assert_array_equal(ds.test_x[..., 0] * np.float32(255), test[0].astype(np.float32))
  np.testing.assert_array_equal(ds.train_y, train[1])
  np.testing.assert_array_equal(ds.test_y, test[1])
  mnist = mnist_format.load_mnist(str(directory), download=False)  # MNIST's own files
  assert mnist.name == "mnist"
  np.testing.assert_array_equal(mnist.train_x, ds.train_x)
  std = mnist_format.load_mnist(str(directory), download=False, standardize=True)
  pixels = train[0].astype(np.float64) / 255
  np.testing.assert_allclose(
    std.test_x[..., 0], (test[0] / 255 - pixels.mean()) / pixels.std(), rtol=1e-5, atol=1e-5
  )


def _bad_files(directory, rng):
  train, test = random_split(rng, 5), random_split(rng, 3)
  return write_idx_directory(directory, train, test)


@pytest.mark.parametrize(
  "damage, message",
  [
    (lambda d: (d / "t10k-labels-idx1-ubyte.gz").unlink(), "lacks t10k-labels-idx1-ubyte"),
    (
      lambda d: idx.write(d / "train-labels-idx1-ubyte.gz", np.array([1, 2, 3], np.uint8)),
      "expected 5 labels",
    ),
    (
      lambda d: idx.write(d / "t10k-labels-idx1-ubyte.gz", np.array([0, 10, 2], np.uint8)),
      r"labels must lie in \[0, 10\)",
    ),
    (
      lambda d: idx.write(d / "t10k-images-idx3-ubyte.gz", np.zeros((3, 32, 32), np.uint8)),
      r"shape \(n, 28, 28\)",
    ),
    (
      lambda d: (d / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x08\x03abcd")),
      "not an IDX file",
    ),
    (
      lambda d: (d / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(gzip.decompress((d / "train-images-idx3-ubyte.gz").read_bytes())[:-5])
      ),
      "truncated",
    ),
  ],
)
def test_a_bad_file_is_one_error_line_naming_it(tmp_path, no_system_copy, damage, message):
  directory = _bad_files(tmp_path / "d", np.random.default_rng(1))
  damage(directory)
  with pytest.raises(datasets.DatasetUnavailableError, match=message) as info:
    mnist_format.load_fashion_mnist(str(directory), download=False)
  assert "\n" not in str(info.value) and str(directory) in str(info.value)


def test_system_directory_when_no_data_dir(tmp_path, monkeypatch):
  rng = np.random.default_rng(2)
  train, test = random_split(rng, 4), random_split(rng, 2)
  assert mnist_format.SYSTEM_DIRECTORIES["fashion_mnist"] == "/usr/share/datasets/fashion-mnist"
  system = write_idx_directory(tmp_path / "system", train, test)
  monkeypatch.setitem(mnist_format.SYSTEM_DIRECTORIES, "fashion_mnist", str(system))
  with mock.patch.object(mnist_format, "load_tfds", side_effect=AssertionError("not tfds")):
    ds = mnist_format.load_fashion_mnist()
  np.testing.assert_array_equal(ds.test_y, test[1])


def test_fashion_mnist_through_tfds_mock_data(no_system_copy):
  tfds = datasets._import_tfds()
  with tfds.testing.mock_data(num_examples=12):
    ds = mnist_format.load_fashion_mnist()
  assert ds.name == "fashion_mnist"
  assert ds.train_x.shape == (12, 28, 28, 1) and ds.test_x.shape == (12, 28, 28, 1)
  assert 0.0 <= ds.train_x.min() and 0.5 < ds.train_x.max() <= 1.0  # scaled from 0..255
  assert set(ds.train_y.tolist()) <= set(range(10))


def test_neither_way_names_both(tmp_path, no_system_copy):
  with mock.patch.object(datasets, "_download_error", return_value="ConnectionError: offline"):
    with pytest.raises(datasets.DatasetUnavailableError) as info:
      mnist_format.load_fashion_mnist(str(tmp_path))
  message = str(info.value)
  assert "\n" not in message
  for part in (
    "Fashion-MNIST",
    str(tmp_path),
    "--data-dir",
    "train-images-idx3-ubyte.gz",
    "apt-get install dataset-fashion-mnist",
    mnist_format.SYSTEM_DIRECTORIES["fashion_mnist"],  # patched: where it looked
    "tfds",
    "ConnectionError: offline",
    "--synthetic",
  ):
    assert part in message, part


def test_validation_split_is_the_end_of_the_training_set(tmp_path, no_system_copy):
  rng = np.random.default_rng(3)
  train, test = random_split(rng, 40), random_split(rng, 6)
  directory = str(write_idx_directory(tmp_path / "d", train, test))
  config = RunConfig(dataset="fashion_mnist", model="mnistfc", num_train=30, validation_examples=8)
  ds = components.load_data(config, directory)
  assert len(ds.train_x) == 22 and len(ds.val_x) == 8 and len(ds.test_x) == 6
  np.testing.assert_array_equal(ds.train_y, train[1][:22])
  np.testing.assert_array_equal(ds.val_y, train[1][22:30])
  np.testing.assert_array_equal(ds.val_x[..., 0] * np.float32(255), train[0][22:30])
  assert len(tuple(ds)) == 4  # the loop's (train_x, train_y, test_x, test_y)
  with pytest.raises(ConfigError, match="--validation-examples 30 leaves no training"):
    components.load_data(config.replace(validation_examples=30), directory)


def test_presets_are_the_mnist_recipes_on_fashion_mnist():
  for name, preset in mnist_configs.PRESETS.items():
    derived = fashion_configs.PRESETS[name]
    assert derived.config == preset.config.replace(dataset="fashion_mnist")
    assert derived.description == preset.description
  text = mnist_configs.PRESETS["entropy-sgd"].config
  auto = fashion_configs.PRESETS["entropy-sgd-auto"].config
  adam = fashion_configs.PRESETS["entropy-adam"].config
  assert auto == text.replace(dataset="fashion_mnist", scoping="auto")
  assert adam == text.replace(dataset="fashion_mnist", optimizer="entropy-adam", learning_rate=3e-3)
  for preset in fashion_configs.PRESETS.values():
    components.validate(preset.config)
    # The benchmark's accuracies, as the error the tables turn back into accuracy.
    assert 100 - float(preset.paper["mnistfc"].split()[0]) == pytest.approx(88.3)
    assert 100 - float(preset.paper["lenet_bn"].split()[0]) == pytest.approx(91.6)


def test_job_one_step_on_small_idx_files(tmp_path, no_system_copy, capsys):
  """One outer step of each default recipe; the validation split is the test images, so its
  error, evaluated apart at the end, must equal the test error of the final evaluation."""
  rng = np.random.default_rng(4)
  test = random_split(rng, 64)
  head = random_split(rng, 128)
  train = tuple(np.concatenate([a, b]) for a, b in zip(head, test))
  directory = write_idx_directory(tmp_path / "data", train, test, gz=False)
  workdir = tmp_path / "job"
  argv = [
    "--data-dir",
    str(directory),
    "--workdir",
    str(workdir),
    "--validation-examples",
    "64",
    "--effective-epochs",
    "1",
    "--no-progress",
  ]
  assert fashion_mnist.main(argv) == 0
  out = capsys.readouterr().out
  assert "Fashion-MNIST, 128 train (64 more held out for validation) / 64 test images" in out
  assert "MLP 256-128-100 88.3%" in out
  assert "; published: 11.7 (benchmark MLP 256-128-100" in out and "paper: 11.7" not in out
  results = json.loads((workdir / "results.json").read_text())
  assert set(results) == {"mnistfc-entropy-sgd", "mnistfc-adam"}
  for key, run in results.items():
    assert run["outer_steps"] == 1 and run["num_train"] == 128 and run["seeds"] == [0, 1]
    np.testing.assert_allclose(run["validation_error"], run["test_error"], atol=1e-6)
    records = [json.loads(line) for line in (workdir / key / "metrics.jsonl").open()]
    final = {r["seed"]: 100 * r["val_error"] for r in records if "val_error" in r}
    assert [final[s] for s in (0, 1)] == pytest.approx(run["test_error"])
    assert list((workdir / key).glob("**/events.out.tfevents.*"))  # TensorBoard
    accuracy = f"{100 - run['test_error_mean']:.1f} ± {run['test_error_std']:.1f}"
    assert accuracy in (workdir / "summary.md").read_text()
  assert (workdir / "test_error.png").stat().st_size > 0
  progress = tmp_path / "progress"
  assert fashion_mnist_progress.main([str(tmp_path), "--output-dir", str(progress)]) == 0
  rows = (progress / "summary.md").read_text()
  for key, run in results.items():
    assert f"| job/{key} |" in rows and "| finished |" in rows
    assert f"{run['test_error_mean']:.2f} ± {run['test_error_std']:.2f} at" in rows
  assert (progress / "test_error.png").stat().st_size > 0
  before = (workdir / "results.json").read_text()
  assert fashion_mnist.main([*argv, "--resume"]) == 0  # finished runs are kept
  again = json.loads((workdir / "results.json").read_text())
  for key, run in json.loads(before).items():
    assert again[key]["test_error"] == run["test_error"]


def test_job_without_data_is_one_line(tmp_path, no_system_copy, capsys):
  with mock.patch.object(datasets, "_download_error", return_value="ConnectionError: offline"):
    code = fashion_mnist.main(["--data-dir", str(tmp_path), "--workdir", str(tmp_path / "w")])
  err = capsys.readouterr().err.strip()
  assert code == 1 and err.count("\n") == 0
  assert err.startswith("error: Fashion-MNIST not found") and "dataset-fashion-mnist" in err


def test_progress_table_says_when_a_run_has_no_evaluation_yet():
  row = dict(run="job/mnistfc-adam", model="mnistfc", optimizer="adam", finished=False)
  row.update(reached=0.2, budget=100, error_mean=float("nan"), error_std=0.0, evaluated_at=0.0)
  row.update(best=float("nan"), seeds=2, wall_s=5.0, s_per_epoch=25.0, paper="1.39")
  line = fashion_mnist_progress.table([row]).splitlines()[-1]
  assert "| running | 0.2 (100) | none yet | — | 2 |" in line and "nan" not in line


def write_run(run_dir, seeds, errors_by_epoch, *, finished, optimizer="adam"):
  """A run directory as the harness leaves it: config.json, metrics.jsonl, results.json."""
  run_dir.mkdir(parents=True)
  config = RunConfig(dataset="fashion_mnist", model="lenet_bn", optimizer=optimizer, seed=seeds[0])
  config = dataclasses.replace(config, num_seeds=len(seeds), outer_epochs=100.0)
  (run_dir / "config.json").write_text(json.dumps({"config": dataclasses.asdict(config)}))
  with (run_dir / "metrics.jsonl").open("w") as f:
    for epochs, errors in errors_by_epoch.items():
      for seed, error in zip(seeds, errors):
        record = dict(step=epochs, seed=seed, effective_epochs=epochs, wall_time=10.0 * epochs)
        f.write(json.dumps({**record, "val_error": error / 100}) + "\n")
  if finished:
    (run_dir / "results.json").write_text("{}")


def test_progress_pools_the_seeds_of_one_recipe_run_apart(tmp_path, capsys):
  """Jobs run with --seed 0 and --seed 1 are one recipe: one row, its seeds pooled at the last
  evaluation both made; a seed in two directories is an error that names both."""
  write_run(tmp_path / "lenet-seed0/lenet_bn-adam", [0], {50: [9.0], 100: [8.0]}, finished=True)
  write_run(tmp_path / "lenet-seed1/lenet_bn-adam", [1], {50: [11.0]}, finished=False)
  write_run(
    tmp_path / "other/lenet_bn-entropy-sgd",
    [0],
    {5: [20.0]},
    finished=False,
    optimizer="entropy-sgd",
  )
  out = tmp_path / "progress"
  assert fashion_mnist_progress.main([str(tmp_path), "--output-dir", str(out)]) == 0
  rows = (out / "summary.md").read_text().splitlines()[2:]
  assert len(rows) == 2
  adam = next(row for row in rows if "| Adam |" in row)
  assert adam.startswith("| lenet-seed0/lenet_bn-adam + lenet-seed1/lenet_bn-adam |")
  # at 50, the last evaluation of both: mean 10, std 1.41; best 8; 2 seeds; 1000 + 500 s
  assert "| running | 50.0 (100) | 10.00 ± 1.41 at 50.0 | 8.00 | 2 | 0.42 | 20 |" in adam
  assert "| 20.00 at 5.0 | 20.00 | 1 |" in next(row for row in rows if "Entropy-SGD" in row)
  write_run(tmp_path / "again/lenet_bn-adam", [1], {50: [11.0]}, finished=False)
  with pytest.raises(ValueError, match="seed 1 is in both .*again.* and .*lenet-seed1"):
    fashion_mnist_progress.main([str(tmp_path), "--output-dir", str(out)])
  # --jobs: the finished seed alone, its own final error; a job that is not there is named.
  only = ["--output-dir", str(out), "--jobs", "lenet-seed0", "other"]
  assert fashion_mnist_progress.main([str(tmp_path), *only]) == 0
  rows = (out / "summary.md").read_text().splitlines()[2:]
  assert len(rows) == 2 and "| lenet-seed0/lenet_bn-adam | LeNet-BN | Adam | finished |" in rows[0]
  assert "| 8.00 at 100.0 | 8.00 | 1 |" in rows[0]
  with pytest.raises(SystemExit):
    fashion_mnist_progress.main([str(tmp_path), "--jobs", "lenet-seed2"])
  assert "--jobs: no run directory" in capsys.readouterr().err


def test_progress_says_how_many_seeds_an_error_averages():
  row = dict(run="a/b", model="mnistfc", optimizer="adam", finished=False, reached=7.0)
  row.update(budget=100, error_mean=9.0, error_std=0.0, error_seeds=1, evaluated_at=5.0)
  row.update(best=9.0, seeds=2, wall_s=70.0, s_per_epoch=10.0, paper="1.39")
  line = fashion_mnist_progress.table([row]).splitlines()[-1]
  assert "| 9.00 at 5.0 (1 of 2 seeds) |" in line and "±" not in line


def test_committed_full_length_table_is_the_progress_table_of_the_committed_records(tmp_path):
  # benchmarks/results/fashion_mnist_full/records/ holds the finished runs' records (config.json,
  # metrics.jsonl, results.json): the committed table must be what the script makes of them.
  results = pathlib.Path(fashion_mnist_progress.__file__).parent / "results" / "fashion_mnist_full"
  jobs = sorted(p.name for p in (results / "records").iterdir())
  assert jobs, results / "records"
  for job in jobs:
    out = tmp_path / job
    records = str(results / "records")
    assert fashion_mnist_progress.main([records, "--jobs", job, "--output-dir", str(out)]) == 0
    assert (out / "summary.md").read_text() == (results / job / "summary.md").read_text()
