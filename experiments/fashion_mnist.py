"""Entropy-SGD against Adam and SGD on Fashion-MNIST at equal effective epochs: the paper's
Sec. 5.2 (Fig. 4, Table 1) on real images.

    python -m experiments.fashion_mnist                      # 12-16 min on a 2-core CPU
    python -m experiments.fashion_mnist --effective-epochs 100 --eval-every-effective-epochs 5

Data: the four IDX files of --data-dir DIR, else /usr/share/datasets/fashion-mnist (Debian:
apt-get install dataset-fashion-mnist), else tfds's fashion_mnist. Recipes: the paper's MNIST
ones (experiments/configs/fashion_mnist.py). Default: mnistfc, Entropy-SGD and Adam, 2 seeds,
all 60,000 training images, the first 20 effective epochs of the paper's schedules (before any
learning-rate drop), the 10,000 test images evaluated every 2. --effective-epochs 100: the
paper's whole schedules. Saves summary.md, results.json, test_error.png and a run directory
per (model, recipe) with TensorBoard events under --workdir; --resume continues a killed job.
"""

from __future__ import annotations

from experiments.run import signals

# Before the slow imports below: a signal during them waits for a safe point.
signals.defer_if_main(__name__)

import time
from collections.abc import Sequence

from experiments.configs import fashion_mnist as configs
from experiments.launch import cli, jobs
from experiments.reporting import comparison_report
from experiments.run import grid_job

DEFAULT = grid_job.GridJob(
  models=configs.JOB_MODELS,
  optimizers=configs.JOB_RECIPES,
  recipe={name: p.config for name, p in configs.PRESETS.items()},
  effective_epochs=configs.EFFECTIVE_EPOCHS,
  eval_every_effective_epochs=configs.EVAL_EVERY_EFFECTIVE_EPOCHS,
  num_seeds=configs.JOB_SEEDS,
)
PROG = "python -m experiments.fashion_mnist"


@cli.main
def main(argv: Sequence[str] | None = None) -> int:
  """Runs the Fashion-MNIST comparison as the command line says; returns the exit code."""
  start = time.perf_counter()
  job = cli.parse_grid(PROG, __doc__, DEFAULT, argv)
  runs, root = jobs.run_comparison(job, DEFAULT, "runs/fashion_mnist")
  first = next(iter(runs.values()))
  budget = f"{job.effective_epochs:g}" if job.effective_epochs else "the recipes'"
  published = ", ".join(f"{m} {a:g}%" for m, a in configs.BENCHMARK_ACCURACY.items())
  validation = (
    f" ({first.config.validation_examples} more held out for validation)"
    if first.config.validation_examples
    else ""
  )
  header = (
    f"Fashion-MNIST, {first.results['num_train']} train{validation} / "
    f"{first.results['num_test']} test images, {first.config.num_seeds} seeds, {budget} "
    f"effective epochs per run; published test accuracy (Xiao et al. 2017): {published}."
  )
  comparison_report.classification_report(
    runs, root, header=header, start=start, title="Fashion-MNIST"
  )
  return jobs.diverged_exit_code(list(runs.values()))


if __name__ == "__main__":
  raise SystemExit(main())
