"""The main job: SGD, Adam, Entropy-SGD, Entropy-Adam and SGLD on MNIST-1D at equal effective
epochs.

    python -m experiments.mnist1d
    python -m experiments.mnist1d --models cnn1d --recipe.entropy-sgd.langevin-steps 10

MNIST-1D is generated offline (4000 training and 1000 test signals). The benchmark's MLP and
CNN are each trained with the recipes of experiments/configs/mnist1d.py (MAIN_JOB; the others,
such as smoothing-sgd, with --optimizers) for the same number of effective epochs, several seeds
vmapped in one jit. Prints a table of test accuracy (mean ± std over seeds), effective epochs,
wall time and time to target (experiments/reporting/time_to_target.py); saves summary.md,
results.json and
test_error.png beside one run directory per (model, recipe) under --workdir (default
runs/mnist1d). --resume continues a killed job (finished runs are kept).
"""

from __future__ import annotations

from experiments.run import signals

# Before the slow imports below: a signal during them waits for a safe point.
signals.defer_if_main(__name__)

import time
from collections.abc import Sequence

from experiments.configs import mnist1d as configs
from experiments.launch import cli, jobs
from experiments.reporting import comparison_report
from experiments.run import grid_job

DEFAULT = grid_job.GridJob(
  models=("mlp1d", "cnn1d"),
  optimizers=configs.MAIN_JOB,
  recipe={name: p.config for name, p in configs.PRESETS.items()},
  effective_epochs=configs.EFFECTIVE_EPOCHS,
  lr_decay_at_fractions=configs.LR_DECAY_AT_FRACTIONS,
  eval_every_effective_epochs=configs.EVAL_EVERY_EFFECTIVE_EPOCHS,
)
PROG = "python -m experiments.mnist1d"


@cli.main
def main(argv: Sequence[str] | None = None) -> int:
  """Runs the MNIST-1D comparison as the command line says; returns the exit code."""
  start = time.perf_counter()
  job = cli.parse_grid(PROG, __doc__, DEFAULT, argv)
  runs, root = jobs.run_comparison(job, DEFAULT, "runs/mnist1d")
  first = next(iter(runs.values())).config
  budget = f"{job.effective_epochs:g}" if job.effective_epochs else "the recipes'"
  header = (
    f"MNIST-1D, {first.num_train or 4000} train / {first.num_test or 1000} test "
    f"examples, {first.num_seeds} seeds, {budget} effective epochs per run; published "
    "test accuracy: MLP 68%, CNN 94%."
  )
  comparison_report.classification_report(runs, root, header=header, start=start, title="MNIST-1D")
  return jobs.diverged_exit_code(list(runs.values()))


if __name__ == "__main__":
  raise SystemExit(main())
