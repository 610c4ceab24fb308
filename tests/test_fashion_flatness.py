"""The flatness experiment on Fashion-MNIST (``python -m experiments.flatness fashion_mnist``)
on small IDX files written here: mnistfc trained by Adam and Entropy-SGD, Lanczos + SLQ, the
loss under random perturbations, and the same measurement again on the finished runs (--runs)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import flatness
from experiments.launch import final_state
from experiments.models import feedforward as models
from experiments.studies import flatness_analysis
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
  # --runs: the finished directories measured again, the same numbers (same directions), and
  # with --per-array each array's own curvature.
  again = tmp_path / "again"
  runs = ["--runs", workdir / "adam", workdir / "entropy-sgd", "--workdir", again, "--per-array"]
  args = ["fashion_mnist", *SMALL[SMALL.index("--hessian-examples") :], "--data-dir", data, *runs]
  args[args.index("--lanczos-iters") + 1] = 12  # exact for the 10 output biases
  assert flatness.main([str(a) for a in args]) == 0, capsys.readouterr().err
  remeasured = json.loads((again / "flatness.json").read_text())
  for label in stats:
    assert remeasured[label]["perturbation"] == stats[label]["perturbation"]
  # The output layer's biases (10): their block of the Hessian, dense, from the saved weights.
  variables = final_state.load_final_variables(workdir / "entropy-sgd")
  labels = train[1][:32].astype(np.int32)

  def bias_loss(bias):
    params = jax.tree.map(jnp.asarray, variables["params"])
    params["Dense_2"]["bias"] = bias
    logits = models.create_model("mnistfc").apply(
      {**variables, "params": params}, images, train=False
    )
    return tasks.cross_entropy(logits, labels)

  bias = jnp.asarray(variables["params"]["Dense_2"]["bias"])
  dense = np.linalg.eigvalsh(np.asarray(jax.hessian(bias_loss)(bias), np.float64))
  curvature = remeasured["Entropy-SGD"]["per_array"]["Dense_2/bias"]
  np.testing.assert_allclose(curvature["max_eigenvalue"], dense[-1], rtol=1e-3)
  for name, array in remeasured["Entropy-SGD"]["per_array"].items():
    assert array["norm"] == pytest.approx(remeasured["Entropy-SGD"]["weight_norms"][name])
    assert array["eigenvalue_times_norm2"] == pytest.approx(
      array["max_eigenvalue"] * array["norm"] ** 2
    )
  assert "eigenvalue × norm²" in (again / "flatness.md").read_text()


def test_array_curvature_times_norm_squared_is_unchanged_by_rescaling_a_scale_free_array():
  # A loss that sees ``a`` only through its direction (as a kernel that feeds a BatchNorm):
  # rescaling ``a`` by 4 divides its block's top eigenvalue by 16 and keeps λ·norm², while
  # ``b``'s curvature, which the loss sees as it is, does not move.
  target = jnp.array([0.6, -0.8, 0.0])

  def loss(params, _):
    a = params["a"]
    return jnp.sum((a / jnp.linalg.norm(a) - target) ** 2) + 1.5 * jnp.sum(params["b"] ** 2)

  params = {"a": jnp.array([1.0, 0.5, -0.3]), "b": jnp.ones(2)}
  small = flatness_analysis.array_curvatures(loss, params, [None], num_iters=3, key=0)
  large = flatness_analysis.array_curvatures(
    loss, {**params, "a": 4.0 * params["a"]}, [None], num_iters=3, key=0
  )
  np.testing.assert_allclose(large["a"]["max_eigenvalue"] * 16, small["a"]["max_eigenvalue"], 1e-4)
  np.testing.assert_allclose(
    large["a"]["eigenvalue_times_norm2"], small["a"]["eigenvalue_times_norm2"], rtol=1e-4
  )
  np.testing.assert_allclose(large["b"]["max_eigenvalue"], 3.0, rtol=1e-5)
  np.testing.assert_allclose(small["b"]["max_eigenvalue"], 3.0, rtol=1e-5)
