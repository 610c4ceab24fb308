"""Runs that go wrong, as a user meets them: divergence, invalid JSON, preemption, disk faults.

Tiny MNIST-1D runs through the scripts' ``main`` (the command line) and the loop; see
docs/faults.md for what each case does.
"""

from __future__ import annotations

import json

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax

from experiments import mnist1d
from experiments.reporting import summaries
from experiments.run import cli, directory
from experiments.trainer import divergence, loop

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
  config = loop.TrainConfig(
    batch_size=16, num_steps=8, steps_per_call=4, eval_every_steps=4, num_seeds=4, progress=False
  )
  lines = []
  result = loop.train(config, NaNForSomeSeeds(), optax.sgd(0.1), data, tmp_path, log=lines.append)
  switches = np.asarray(result.state.params["switch"])  # NaN once diverged: test the sign at init
  finite = np.isfinite(np.asarray(result.state.params["Dense_0"]["kernel"])).all((1, 2))
  assert 0 < finite.sum() < 4, switches  # seeds 0-3 include both kinds
  bad = [seed for seed in config.seeds if not finite[seed]]
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
    dataset="d",
    model="m",
    optimizer="sgd",
    langevin_steps=1,
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
