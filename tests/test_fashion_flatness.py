"""The flatness experiment on Fashion-MNIST (``python -m experiments.flatness fashion_mnist``)
on small IDX files written here: mnistfc trained by Adam and Entropy-SGD, Lanczos + SLQ, the
loss under random perturbations, and the same measurement again on the finished runs (--runs)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from experiments import flatness
from experiments.launch import final_state
from experiments.models import feedforward as models
from experiments.trainer import tasks
from tests.test_fashion_mnist import no_system_copy, random_split, write_idx_directory  # noqa: F401

# Runs of the harness end to end: CI runs them, `pytest -m "not slow"` leaves them out.
pytestmark = pytest.mark.slow

SMALL = [
  "--models",
  "mnistfc",
  "--num-train",
  64,
  "--num-test",
  32,
  "--batch-size",
  32,
  "--effective-epochs",
  1,
  "--hessian-examples",
  32,
  "--hessian-batch",
  32,
  "--lanczos-iters",
  4,
  "--slq-samples",
  2,
  "--perturbation-samples",
  2,
  "--no-progress",
]


def test_flatness_of_fashion_mnist_runs_from_idx_files(tmp_path, no_system_copy, capsys):  # noqa: F811
  rng = np.random.default_rng(0)
  train, test = random_split(rng, 64), random_split(rng, 32)
  data = write_idx_directory(tmp_path / "idx", train, test)
  workdir = tmp_path / "flat"
  args = ["fashion_mnist", *SMALL, "--data-dir", data, "--workdir", workdir]
  assert flatness.main([str(a) for a in args]) == 0, capsys.readouterr().err
  stats = json.loads((workdir / "flatness.json").read_text())
  assert list(stats) == ["Adam", "Entropy-SGD"]
  # The loss at the final point, computed here from the IDX bytes: the first 32 training
  # images / 255, mnistfc in evaluation mode with the run's saved weights and statistics.
  images = (train[0][:32].astype(np.float32) / 255.0)[..., None]
  for optimizer, label in (("adam", "Adam"), ("entropy-sgd", "Entropy-SGD")):
    variables = final_state.load_final_variables(workdir / optimizer)
    logits = models.create_model("mnistfc").apply(variables, images, train=False)
    loss = float(tasks.cross_entropy(logits, train[1][:32].astype(np.int32)))
    assert stats[label]["method"] == "lanczos" and stats[label]["examples"] == 32
    np.testing.assert_allclose(stats[label]["loss"], loss, rtol=1e-4)
    for kind in ("relative", "absolute"):
      np.testing.assert_allclose(stats[label]["perturbation"][kind]["mean"][0], loss, rtol=1e-4)
    assert stats[label]["max_eigenvalue"] >= stats[label]["min_eigenvalue"]
    # The weights' scale beside the curvature: every array's norm, and all of them together.
    arrays = variables["params"]
    np.testing.assert_allclose(
      stats[label]["weight_norms"]["Dense_1/kernel"],
      np.linalg.norm(arrays["Dense_1"]["kernel"]),
      rtol=1e-6,
    )
    total = np.sqrt(sum(np.sum(np.square(a, dtype=np.float64)) for a in jax.tree.leaves(arrays)))
    np.testing.assert_allclose(stats[label]["weight_norm"], total, rtol=1e-6)
  assert "| norm of the weights |" in (workdir / "flatness.md").read_text()
  # --runs: the finished directories measured again, the same numbers (same directions).
  again = tmp_path / "again"
  runs = ["--runs", workdir / "adam", workdir / "entropy-sgd", "--workdir", again]
  args = ["fashion_mnist", *SMALL[SMALL.index("--hessian-examples") :], "--data-dir", data, *runs]
  assert flatness.main([str(a) for a in args]) == 0, capsys.readouterr().err
  remeasured = json.loads((again / "flatness.json").read_text())
  for label in stats:
    assert remeasured[label]["perturbation"] == stats[label]["perturbation"]
