"""``python -m experiments.sensitivity`` end to end on the tiny grid, and its clear errors."""

import json

import numpy as np
import pytest

from experiments import sensitivity

# Runs of the harness end to end: CI runs them, `pytest -m "not slow"` leaves them out.
pytestmark = pytest.mark.slow


def test_tiny_grid_writes_results_table_and_heatmaps(tmp_path, capsys):
  workdir = tmp_path / "study"
  assert sensitivity.main(["--grid", "tiny", "--workdir", str(workdir)]) == 0
  out = capsys.readouterr().out
  assert {p.name for p in workdir.iterdir()} >= {"results.json", "summary.md", "heatmaps.png"}
  results = json.loads((workdir / "results.json").read_text())
  blocks = results["models"]["mlp1d"]["blocks"]
  # Blocks named as the registry names the optimizers; each holds its recipe.
  assert set(blocks) == {"entropy-sgd L=2", "sgd", "sgld", "smoothing-sgd L=2"}
  entropy = blocks["entropy-sgd L=2"]
  assert entropy["recipe"]["optimizer"] == "entropy-sgd" and entropy["recipe"]["alpha"] == 0.75
  # gamma0 in {0.03, 0.3} x one Langevin step x one noise, 2 seeds each.
  assert np.array(entropy["final_accuracy"]).shape == (2, 2)
  assert entropy["effective_epochs"] == [1.0, 2.0]
  # The throughput check ran the same runs one after another: the same accuracies (a
  # borderline prediction of 200 test signals may flip in a batched matmul).
  assert results["throughput"]["runs"] == 4
  assert results["throughput"]["max_final_accuracy_difference"] <= 1.5 / 200
  # The printed table has a row per optimizer, and the verdict names the best SGD.
  for row in ("| MLP | Entropy-SGD (L=2) |", "| MLP | SGD |", "| MLP | SGLD |", "Smoothing-SGD"):
    assert row in out
  assert "vs best SGD" in out and "throughput" in out
  assert (workdir / "summary.md").read_text().count("| MLP |") == 4


def test_existing_results_are_not_overwritten_without_the_flag(tmp_path, capsys):
  workdir = tmp_path / "study"
  workdir.mkdir()
  (workdir / "results.json").write_text('{"earlier": 1}')
  assert sensitivity.main(["--grid", "tiny", "--workdir", str(workdir)]) == 1
  assert "--overwrite" in capsys.readouterr().err
  assert json.loads((workdir / "results.json").read_text()) == {"earlier": 1}


def test_bad_grid_or_model_names_the_choices(tmp_path, capsys):
  assert sensitivity.main(["--grid", "huge", "--workdir", str(tmp_path / "x")]) == 1
  err = capsys.readouterr().err
  assert "--grid must be one of default, large, tiny" in err and "huge" in err
  assert sensitivity.main(["--models", "lenet_bn", "--workdir", str(tmp_path / "x")]) == 1
  assert "--models must name mlp1d or cnn1d" in capsys.readouterr().err
  assert not (tmp_path / "x").exists()
