"""The sensitivity library on a tiny grid: one vmapped program equals the runs one by one."""

import numpy as np
import pytest

from experiments.studies import sensitivity_report
from experiments.studies import sensitivity_training as sl

DATA = sl.synthetic_data(num_train=128, num_test=64)
GRID = {
  "gamma": np.array([0.03, 1.0]),
  "langevin_lr": np.array([0.1, 0.02]),
  "noise": np.array([1e-4, 1e-3]),
  "learning_rate": np.array([1.0, 0.5]),
}
COMMON = dict(seeds=2, num_langevin_steps=2, effective_epochs=4, batch_size=16, num_evals=2)


def test_vmapped_grid_equals_the_runs_one_after_another():
  timings = {}
  grid = sl.train_grid("mlp1d", DATA, "entropy_sgd", GRID, timings=timings, **COMMON)
  sequential = sl.train_grid("mlp1d", DATA, "entropy_sgd", GRID, one_program=False, **COMMON)
  assert set(timings) == {"compile_s", "run_s"}
  assert grid.shape == (2, 2, 2)
  # Accuracies on 64 test points are multiples of 1/64; batched matmuls may flip a borderline
  # prediction, no more.
  np.testing.assert_allclose(grid, sequential, atol=1.5 / 64)
  assert np.all((grid >= 0) & (grid <= 1))


def test_sgd_learns_the_synthetic_problem():
  curves = sl.train_grid(
    "mlp1d",
    DATA,
    "sgd",
    {"learning_rate": [0.0, 0.05]},
    seeds=2,
    effective_epochs=8,
    batch_size=16,
    num_evals=2,
  )
  # lr 0 keeps the initialisation (the same accuracy at both evaluations); lr 0.05 learns the
  # well-separated classes.
  np.testing.assert_array_equal(curves[0, :, 0], curves[0, :, 1])
  assert curves[1, :, -1].min() > 0.8


def test_summarise_finds_the_points_that_beat_the_best_sgd():
  sgd = np.array([[0.80, 0.81, 0.79], [0.90, 0.91, 0.89]])
  entropy = np.array([[0.95, 0.96, 0.94], [0.90, 0.91, 0.90], [0.5, 0.6, 0.55]])
  summary = sensitivity_report.summarise(entropy, sgd, tolerance=0.06)
  assert summary["best_sgd_index"] == 1 and summary["beats_best_sgd"] == [0]
  np.testing.assert_allclose(summary["best_sgd"], 0.90)
  np.testing.assert_allclose(summary["flat_fraction"], 2 / 3)


def test_grid_missing_a_key_names_it():
  with pytest.raises(ValueError, match="noise"):
    sl.train_grid(
      "mlp1d", DATA, "entropy_sgd", {k: v for k, v in GRID.items() if k != "noise"}, **COMMON
    )
