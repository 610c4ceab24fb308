"""Time to target: one definition, checked against curves worked out by hand."""

import numpy as np

from experiments.reporting import tables, time_to_target


def test_first_evaluation_at_or_above_the_target():
  accuracy = [0.30, 0.55, 0.50, 0.80, 0.90]
  epochs = [2, 4, 6, 8, 10]
  seconds = [1.5, 2.5, 3.5, 4.5, 5.5]
  # Target 0.9 x 0.9 = 0.81: first reached at the last evaluation; 0.5 at the second (the dip
  # back to 0.50 at the third does not move it).
  target = time_to_target.accuracy_target([0.9, 0.7])
  np.testing.assert_allclose(target, 0.81)
  assert time_to_target.time_to_target(accuracy, epochs, seconds, target) == (10.0, 5.5)
  assert time_to_target.time_to_target(accuracy, epochs, seconds, 0.5) == (4.0, 2.5)
  never = time_to_target.time_to_target(accuracy, epochs, seconds, 0.95)
  assert np.isnan(never[0]) and np.isnan(never[1])


def _records(errors_per_seed, epochs, walls):
  return [
    {"seed": s, "step": i, "effective_epochs": e, "wall_time": w, "val_error": err}
    for s, errors in enumerate(errors_per_seed)
    for i, (e, w, err) in enumerate(zip(epochs, walls, errors))
  ]


def test_harness_runs_use_the_mean_over_seeds_and_the_models_best_run():
  epochs, walls = [5, 10, 15], [3.0, 6.0, 9.0]
  # Mean accuracy over the two seeds: A 60, 75, 80 %; B 50, 70, 90 %.
  a = _records([[0.5, 0.3, 0.2], [0.3, 0.2, 0.2]], epochs, walls)
  b = _records([[0.5, 0.3, 0.1], [0.5, 0.3, 0.1]], epochs, [4.0, 8.0, 12.0])
  results = {
    ("mlp1d", "a"): {"test_error_mean": 20.0},
    ("mlp1d", "b"): {"test_error_mean": 10.0},
  }
  times = time_to_target.comparison_times_to_target(results, {("mlp1d", "a"): a, ("mlp1d", "b"): b})
  # Target 0.9 x 90 = 81 %: A never (80 %), B at its third evaluation (15 epochs, 12 s).
  assert np.isclose(times["mlp1d", "b"]["target_accuracy"], 81.0)
  assert (times["mlp1d", "b"]["effective_epochs"], times["mlp1d", "b"]["seconds"]) == (15, 12)
  assert np.isnan(times["mlp1d", "a"]["effective_epochs"])
  # A target of 72 %: A reaches 75 % at 10 epochs, 6 s.
  assert time_to_target.run_time_to_target(a, 72.0) == (10.0, 6.0)


def test_the_main_jobs_table_shows_the_time_to_target_column():
  result = {
    "test_error_mean": 10.0,
    "test_error_std": 1.0,
    "best_test_error_mean": 9.0,
    "effective_epochs": 15,
    "outer_steps": 300,
    "seeds": [0, 1],
    "wall_time_s": 12.0,
  }
  results = {("mlp1d", "sgd"): result, ("mlp1d", "adam"): result}
  times = {
    ("mlp1d", "sgd"): {"effective_epochs": 15.0, "seconds": 12.0},
    ("mlp1d", "adam"): {"effective_epochs": float("nan"), "seconds": float("nan")},
  }
  lines = tables.comparison_table(results, times).splitlines()
  assert lines[0].endswith("time to target (eff. epochs / s) |")
  assert lines[2].endswith("| 15 / 12 |") and lines[3].endswith("| not reached |")
  assert "time to target" not in tables.comparison_table(results)


def test_time_to_target_reads_in_three_digits():
  """Evaluations fall on whole outer steps, so effective epochs are not round numbers."""
  fmt = tables._format_time
  assert fmt({"effective_epochs": 2.008547, "seconds": 70.6}) == "2.01 / 71"
  assert fmt({"effective_epochs": 10.0, "seconds": 3.2}) == "10 / 3"
  assert fmt({"effective_epochs": 1234.0, "seconds": 3.2}) == "1234 / 3"
