"""The sensitivity study's runs are the main job's runs: one grid point against ``jobs``."""

import dataclasses

import numpy as np
import pytest

from experiments.configs.sensitivity import GRIDS
from experiments.launch import jobs
from experiments.run.run_options import RunOptions
from experiments.run.schema import ConfigError
from experiments.studies import sensitivity_report
from experiments.studies import sensitivity_training as st

# Runs of the harness end to end: CI runs them, `pytest -m "not slow"` leaves them out.
pytestmark = pytest.mark.slow

# 400 training signals at batch 50: 8 steps per outer epoch; 4 effective epochs, 2 evaluations.
GRID = dataclasses.replace(GRIDS["tiny"], effective_epochs=4.0, seeds=2)


@pytest.mark.parametrize(
  "name, changes, sweep",
  [
    # L = 2: 16 outer steps with the learning-rate drops at steps 8 and 12.
    ("entropy-sgd", {"langevin_steps": 2}, {"gamma0": 0.3, "langevin_lr": 0.3, "noise": 1e-3}),
    # Its gradient samples on mini-batches 1..L-1 (the registry's batch shift).
    ("smoothing-sgd", {"langevin_steps": 4}, {"smoothing_sigma": 0.1, "learning_rate": 0.3}),
  ],
)
def test_a_grid_point_is_the_main_jobs_run_of_its_config(tmp_path, name, changes, sweep):
  config = sensitivity_report.recipe(GRID, "mlp1d", name, **changes)
  assert config.lr_decay_outer_epochs and config.lr_decay == 0.1  # the main job's drops
  # The main job's run sits at grid point 1, with another point beside it in the program.
  curves = st.train_grid([config.replace(**sweep), config])
  run = jobs.run_experiment(config, RunOptions(workdir=str(tmp_path / "run"), progress=False))
  evaluated = [r for r in run.records if "val_loss" in r]
  by_seed = lambda key: np.array(  # noqa: E731
    [[r[key] for r in evaluated if r["seed"] == s] for s in range(config.num_seeds)]
  )
  assert curves.steps == tuple(sorted({r["step"] for r in evaluated}))
  assert curves.effective_epochs[-1] == GRID.effective_epochs
  np.testing.assert_allclose(curves.val_loss[1], by_seed("val_loss"), rtol=1e-5)
  # Test errors are multiples of 1/200; a borderline prediction may flip, no more.
  np.testing.assert_allclose(curves.val_error[1], by_seed("val_error"), atol=1.5 / 200)
  assert not np.allclose(curves.val_loss[0], curves.val_loss[1])  # the other point differs


def test_configs_that_differ_outside_the_traced_fields_are_refused():
  config = sensitivity_report.recipe(GRID, "mlp1d", "sgd")
  with pytest.raises(ConfigError, match="differ in momentum"):
    st.train_grid([config, config.replace(momentum=0.5)])
  with pytest.raises(ConfigError, match="--langevin-steps 2 needs an optimizer"):
    st.train_grid([config.replace(langevin_steps=2)])
  with pytest.raises(ConfigError, match="at least one config"):
    st.train_grid([])


def test_summarise_finds_the_points_that_beat_the_best_sgd():
  sgd = np.array([[0.80, 0.81, 0.79], [0.90, 0.91, 0.89]])
  entropy = np.array([[0.95, 0.96, 0.94], [0.90, 0.91, 0.90], [0.5, 0.6, 0.55]])
  summary = sensitivity_report.summarise(entropy, sgd, tolerance=0.06)
  assert summary["best_sgd_index"] == 1 and summary["beats_best_sgd"] == [0]
  np.testing.assert_allclose(summary["best_sgd"], 0.90)
  np.testing.assert_allclose(summary["flat_fraction"], 2 / 3)
