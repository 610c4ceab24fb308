"""The sensitivity study's grids (``python -m experiments.sensitivity --grid NAME``), as data.

Every run is the main job's recipe (``experiments/configs/mnist1d.py``: ``PRESETS``, the
learning rate dropping by ``lr_decay`` at ``LR_DECAY_AT_FRACTIONS`` of the run) at the grid's
budget, with one or two fields swept: Entropy-SGD over gamma0 x Langevin step size x noise for
each L; SGD over learning rates; the paper's SGLD (App. C.1: step eta / (1 + t)^0.55) over eta;
and SGD on the Gaussian-smoothed loss (``smoothing-sgd``, equal cost: L gradient evaluations
per update) over sigma at the best SGD learning rate. ``default`` is sized for a 2-core CPU;
``large`` is for an accelerator.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SensitivityGrid:
  """One study: the swept values and the budget (every run: ``effective_epochs`` at
  ``batch_size``, ``num_evals`` evaluations, ``seeds`` seeds; the other fields: the recipe's)."""

  description: str
  models: tuple[str, ...] = ("mlp1d", "cnn1d")
  langevin_steps: tuple[int, ...] = (2, 5, 10)
  gamma0: tuple[float, ...] = (0.03, 0.3)
  langevin_lr: tuple[float, ...] = (0.1, 0.3)
  noise: tuple[float, ...] = (1e-4,)
  sgd_learning_rates: tuple[float, ...] = (0.03, 0.1, 0.3)
  sgld_learning_rates: tuple[float, ...] = (1.0, 3.0)
  smoothing_sigmas: tuple[float, ...] = (0.01, 0.03)
  smoothing_langevin_steps: int = 5
  """L of the smoothing baseline (its samples: L - 1; at the best SGD learning rate)"""
  seeds: int = 3
  effective_epochs: float = 10.0
  batch_size: int = 100
  num_evals: int = 5
  num_train: int = 0
  """training examples (0: all 4000)"""
  num_test: int = 0
  """test examples (0: all 1000)"""
  throughput_check: bool = True
  """also run the first model's first-L Entropy-SGD grid one run after another (same runs)"""
  fast_compile: tuple[str, ...] = ("mlp1d",)
  """models compiled at XLA's optimisation level 0: on the 2-core CPU the MLP's short runs are
  dominated by compilation (3x faster to compile, ~2x slower to run); the CNN ran 5x slower"""


GRIDS = {
  "default": SensitivityGrid(
    "2 x 2 (gamma0 x Langevin step) x L in {2, 5, 10}, 3 seeds, MLP and CNN, 10 effective "
    "epochs: 3 CPU minutes (22 min wall on a 2-core CPU at load 15-30)"
  ),
  "large": SensitivityGrid(
    "5 x 4 x 2 (gamma0 x Langevin step x noise) x L in {2, 5, 10}, 5 seeds, MLP and CNN, "
    "50 effective epochs: for an accelerator",
    gamma0=(0.01, 0.03, 0.1, 0.3, 1.0),
    langevin_lr=(0.03, 0.1, 0.3, 1.0),
    noise=(1e-4, 1e-3),
    sgd_learning_rates=(0.01, 0.03, 0.1, 0.3, 1.0),
    sgld_learning_rates=(0.3, 1.0, 3.0, 10.0),
    smoothing_sigmas=(0.003, 0.01, 0.03, 0.1),
    seeds=5,
    effective_epochs=50.0,
    num_evals=10,
    fast_compile=(),
  ),
  # For the tests and a smoke check: seconds, on 400 examples.
  "tiny": SensitivityGrid(
    "2 x 1 grid, L in {2}, 2 seeds, MLP, 2 effective epochs on 400 examples: a smoke test",
    models=("mlp1d",),
    langevin_steps=(2,),
    gamma0=(0.03, 0.3),
    langevin_lr=(0.1,),
    sgd_learning_rates=(0.1,),
    sgld_learning_rates=(1.0,),
    smoothing_sigmas=(0.01,),
    smoothing_langevin_steps=2,
    seeds=2,
    effective_epochs=2.0,
    batch_size=50,
    num_evals=2,
    num_train=400,
    num_test=200,
  ),
}
