"""The sensitivity grid as one vmapped program against the same runs one after another.

Entropy-SGD (the main job's recipe, L = 5) on MNIST-1D's MLP, a 3 x 3 grid of gamma0 x
Langevin step size, 3 seeds, 10 effective epochs; then SGD over four learning rates, and
``sensitivity_report.summarise``. Each timing includes its one compilation.

    python -m benchmarks.sensitivity_throughput
"""

from __future__ import annotations

import dataclasses
import itertools
import time

from experiments.configs.sensitivity import GRIDS
from experiments.studies import sensitivity_report
from experiments.studies import sensitivity_training as st


def main():
  grid = dataclasses.replace(GRIDS["default"], seeds=3, effective_epochs=10.0, num_evals=5)
  points = list(itertools.product([0.01, 0.03, 0.1], [0.03, 0.1, 0.3]))
  base = sensitivity_report.recipe(grid, "mlp1d", "entropy-sgd", langevin_steps=5)
  configs = [base.replace(gamma0=g, langevin_lr=lr) for g, lr in points]
  for name, one_program in [("vmapped", True), ("sequential", False)]:
    start = time.perf_counter()
    entropy = 1 - st.train_grid(configs, one_program=one_program).val_error[..., -1]
    seconds = time.perf_counter() - start
    print(
      f"{name}: {seconds:.1f} s for {len(points)} x 3 runs; final test accuracy per grid "
      f"point (gamma0, langevin_lr) {points}: {entropy.mean(1).round(3)}",
      flush=True,
    )
  sgd_base = sensitivity_report.recipe(grid, "mlp1d", "sgd")
  rates = [0.01, 0.03, 0.1, 0.3]
  sgd = 1 - st.train_grid([sgd_base.replace(learning_rate=lr) for lr in rates]).val_error[..., -1]
  print(f"SGD final test accuracy per lr {rates}:", sgd.mean(1).round(3))
  print(sensitivity_report.summarise(entropy, sgd))


if __name__ == "__main__":
  main()
