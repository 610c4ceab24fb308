"""The sensitivity grid as one vmapped program against the same runs one after another.

Entropy-SGD (L = 5) on MNIST-1D's MLP, a 3 x 3 grid of gamma0 x Langevin step size, 3 seeds,
10 effective epochs; then SGD over four learning rates, and ``sensitivity_lib.summarise``.
Each timing includes its one compilation.

    python -m benchmarks.sensitivity_throughput
"""

from __future__ import annotations

import itertools
import time

import numpy as np

from experiments.studies import sensitivity_report
from experiments.studies import sensitivity_training as sl


def main():
  data = sl.mnist1d_data()
  points = list(itertools.product([0.01, 0.03, 0.1], [0.03, 0.1, 0.3]))
  grid = {
    "gamma": np.array([p[0] for p in points]),
    "langevin_lr": np.array([p[1] for p in points]),
    "noise": np.full(len(points), 1e-4),
    "learning_rate": np.full(len(points), 0.3),
  }
  common = dict(seeds=3, num_langevin_steps=5, effective_epochs=10, batch_size=100, num_evals=5)
  for name, one_program in [("vmapped", True), ("sequential", False)]:
    start = time.perf_counter()
    curves = sl.train_grid("mlp1d", data, "entropy_sgd", grid, one_program=one_program, **common)
    seconds = time.perf_counter() - start
    print(
      f"{name}: {seconds:.1f} s for {len(points)} x 3 runs; final test accuracy per grid "
      f"point (gamma0, langevin_lr) {points}: {curves[..., -1].mean(1).round(3)}",
      flush=True,
    )
  sgd = sl.train_grid(
    "mlp1d",
    data,
    "sgd",
    {"learning_rate": [0.01, 0.03, 0.1, 0.3]},
    seeds=3,
    effective_epochs=10,
    batch_size=100,
    num_evals=5,
  )
  print("SGD final test accuracy per lr [0.01, 0.03, 0.1, 0.3]:", sgd[..., -1].mean(1).round(3))
  print(sensitivity_report.summarise(curves[..., -1], sgd[..., -1]))


if __name__ == "__main__":
  main()
