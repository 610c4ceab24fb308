"""flax's three MNIST programs and their Entropy-SGD ports (benchmarks/flax_ports/) on a few
small batches of IDX files written here: each runs end to end, its training step compiles once,
the port makes 1/L as many steps on the same mini-batches, evaluation covers the whole test
set, and a port stays within 12 changed lines of its original."""

from __future__ import annotations

import importlib
import json
import pathlib

import numpy as np
import pytest

from benchmarks.flax_ports import benchmark, data
from experiments.data import idx

# Runs of the harness end to end: CI runs them, `pytest -m "not slow"` leaves them out.
pytestmark = pytest.mark.slow

NUM_TRAIN, NUM_TEST = 640, 256  # 5 batches of 128 (one port step at L = 5), 20 batches of 32


@pytest.fixture(scope="module")
def idx_directory(tmp_path_factory):
  """A directory of the four MNIST-format IDX files, random images and labels."""
  directory = tmp_path_factory.mktemp("idx")
  rng = np.random.default_rng(0)
  for split, num in (("train", NUM_TRAIN), ("test", NUM_TEST)):
    images_stem, labels_stem = idx.SPLIT_FILES[split]
    idx.write(directory / images_stem, rng.integers(0, 256, (num, 28, 28), dtype=np.uint8))
    idx.write(directory / labels_stem, rng.integers(0, 10, num).astype(np.uint8))
  return directory


@pytest.fixture(scope="module")
def datasets(idx_directory):
  train_ds, test_ds = data.get_datasets(idx_directory)
  assert train_ds["image"].shape == (NUM_TRAIN, 28, 28, 1) and train_ds["image"].max() <= 1.0
  return train_ds, test_ds


def _counted(monkeypatch, module, name):
  """Counts the calls of ``module.name`` (the jitted step), keeping the jitted function."""
  step, calls = getattr(module, name), []

  def counting(*args, **kwargs):
    calls.append(1)
    return step(*args, **kwargs)

  monkeypatch.setattr(module, name, counting)
  return step, calls


def _cache_size(step) -> int:
  return (step.jitted_fn if hasattr(step, "jitted_fn") else step)._cache_size()


@pytest.mark.parametrize(
  "program,step_name",
  [("linen_mnist", "update_model"), ("nnx_mnist", "train_step"), ("nnx_tutorial", "train_step")],
)
@pytest.mark.parametrize("variant", ["original", "port"])
def test_program_runs_compiles_once_and_evaluates_the_test_set(
  datasets, monkeypatch, program, step_name, variant
):
  train_ds, test_ds = datasets
  module = importlib.import_module(
    f"benchmarks.flax_ports.{program}{'' if variant == 'original' else '_port'}"
  )
  step, calls = _counted(monkeypatch, module, step_name)
  num_epochs = 2
  if program == "nnx_tutorial":
    per_epoch = NUM_TRAIN // module.batch_size  # 20 batches of 32
    history = module.train_and_evaluate(
      train_ds, test_ds, train_steps=num_epochs * per_epoch, eval_every=per_epoch // 2
    )
    test_batch = module.batch_size
    num_evaluations = 4  # every half epoch's worth of batches, the last one at the end
  else:
    config = module.get_config()
    config.num_epochs = num_epochs
    history = module.train_and_evaluate(config, train_ds, test_ds)
    per_epoch = NUM_TRAIN // config.batch_size  # 5 batches of 128
    test_batch = config.batch_size if program == "nnx_mnist" else NUM_TEST
    num_evaluations = num_epochs
  L = getattr(module, "L", 1)
  assert L == (1 if variant == "original" else 5)
  assert len(calls) == num_epochs * per_epoch // L  # the same mini-batches, L per step
  # One compilation for every step of both epochs; flax's Linen example compiles update_model
  # twice, original and port alike: TrainState.create's step is a Python int, then an array.
  assert _cache_size(step) == (2 if program == "linen_mnist" else 1)
  assert len(history) == num_evaluations
  for record in history:
    assert np.isfinite(record["test_loss"]) and np.isfinite(record["train_loss"])
    # Every test example is counted: accuracy * (test examples evaluated) is an integer.
    evaluated = NUM_TEST // test_batch * test_batch
    correct = record["test_accuracy"] * evaluated
    assert abs(correct - round(correct)) < 1e-3 and 0 <= correct <= evaluated


@pytest.mark.parametrize("program", benchmark.PROGRAMS)
def test_port_changes_at_most_12_lines(program):
  added, removed = benchmark.changed_lines(program)
  assert 0 < added <= 12 and removed <= added, (added, removed)


def test_port_step_refuses_unstacked_batches_naming_stack_batches(datasets):
  """The ported step, given flax's unstacked batch, stops in take_batch (before the model)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  import entropy_optax  # pylint: disable=g-import-not-at-top
  from benchmarks.flax_ports import nnx_mnist_port  # pylint: disable=g-import-not-at-top

  train_ds, _ = datasets
  model = nnx_mnist_port.CNN(nnx.Rngs(0))
  tx = entropy_optax.local_entropy(5)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  metrics = nnx.MultiMetric(accuracy=nnx.metrics.Accuracy())
  batch = next(data.ordered_batches(train_ds, 128))
  with pytest.raises(ValueError, match=r"image'\] has shape \(128, 28, 28, 1\).*stack_batches"):
    nnx_mnist_port.train_step(model, optimizer, metrics, batch, nnx.Rngs(1))


def test_benchmark_runs_only_what_its_jsonl_lacks(idx_directory, tmp_path, monkeypatch, capsys):
  """A stopped sweep continues: runs already in --jsonl are not run again, and the table is
  made from every record there."""
  done = {"program": "linen_mnist", "seed": 0, "epochs": 1, "seconds": 1.0}
  jsonl = tmp_path / "results.jsonl"
  jsonl.write_text(
    "".join(
      benchmark.json.dumps({**done, "variant": v, "test_accuracy": [a], "history": []}) + "\n"
      for v, a in (("original", 0.5), ("port", 0.25))
    )
  )
  ran = []
  monkeypatch.setattr(benchmark, "run_one", lambda *args: ran.append(args))
  table = tmp_path / "table.md"
  benchmark.main(
    ["--data-dir", str(idx_directory), "--seeds", "0", "--epochs", "1", "--programs", "linen_mnist"]
    + ["--jsonl", str(jsonl), "--table", str(table)]
  )
  assert ran == [] and capsys.readouterr().out.count("already") == 2
  added, removed = benchmark.changed_lines("linen_mnist")
  row = f"| linen_mnist | {added} / {removed} | 1 | 50.00 | 25.00 | -25.00 |"
  assert row in table.read_text()


def test_committed_table_is_the_benchmarks_table_of_the_committed_records():
  """RESULTS.md's accuracy table is what the benchmark makes of results.jsonl (one place for
  each figure: rerun the table after adding runs)."""
  folder = pathlib.Path(benchmark.__file__).parent
  lines = (folder / "results.jsonl").read_text().splitlines()
  records = [json.loads(line) for line in lines]
  assert benchmark.table(records).strip() in (folder / "RESULTS.md").read_text()
