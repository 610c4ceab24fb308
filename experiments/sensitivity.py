"""Sensitivity of Entropy-SGD on MNIST-1D to gamma0, the Langevin step and the noise, per L.

    python -m experiments.sensitivity                 # the default grid, on a 2-core CPU
    python -m experiments.sensitivity --grid large    # for an accelerator

Every run is the main job's recipe (experiments/configs/mnist1d.py, built and trained as
python -m experiments.mnist1d builds and trains it) at the grid's budget. For each model and
each L, every grid point and seed of Entropy-SGD is one jitted vmapped program (the swept
hyper-parameters traced); SGD over learning rates, the paper's SGLD (App. C.1) and SGD on the
Gaussian-smoothed loss (equal cost) run at the same effective epochs. Grids:
experiments/configs/sensitivity.py. Prints a table (best setting per optimizer, the grid's
range, the fraction within 1 point of the best, time to target), where Entropy-SGD beats the
best SGD, and the throughput of the vmapped grid against the same runs one after another;
saves results.json, summary.md and heatmaps.png in --workdir (default runs/sensitivity-GRID).
"""

from __future__ import annotations

from experiments.run import signals

# Before the slow imports below: a signal during them waits for a safe point.
signals.defer_if_main(__name__)

import dataclasses
import pathlib
from collections.abc import Sequence

from experiments.configs import mnist1d
from experiments.configs.sensitivity import GRIDS
from experiments.launch import cli
from experiments.run import directory
from experiments.run.schema import ConfigError
from experiments.studies import sensitivity_report

PROG = "python -m experiments.sensitivity"


@dataclasses.dataclass(frozen=True)
class Args:
  """The study's command line."""

  grid: str = "default"
  """the grid: default, large or tiny (experiments/configs/sensitivity.py)"""
  models: tuple[str, ...] = ()
  """train only these models (default: the grid's)"""
  throughput_check: bool | None = None
  """also run the first Entropy-SGD block one run after another (default: the grid's)"""
  workdir: str | None = None
  """where results.json, summary.md and heatmaps.png go (default: runs/sensitivity-GRID)"""
  overwrite: bool = False
  """replace the results of an earlier study in --workdir"""


def _grid(args: Args):
  if args.grid not in GRIDS:
    raise ConfigError(f"--grid must be one of {', '.join(GRIDS)}, got {args.grid!r}.")
  grid = GRIDS[args.grid]
  for model in args.models:
    if model not in ("mlp1d", "cnn1d"):
      raise ConfigError(f"--models must name mlp1d or cnn1d, got {model!r}.")
  changes = {"models": args.models} if args.models else {}
  if args.throughput_check is not None:
    changes["throughput_check"] = args.throughput_check
  return dataclasses.replace(grid, **changes)


def _prepare(workdir: pathlib.Path, overwrite: bool) -> None:
  if (workdir / directory.RESULTS_FILE).exists() and not overwrite:
    raise directory.RunExistsError(
      f"{workdir} already holds a sensitivity study's results; pass --overwrite to replace "
      "them or choose another --workdir."
    )
  directory.prepare(workdir, resume=False, overwrite=overwrite)


@cli.main
def main(argv: Sequence[str] | None = None) -> int:
  """Runs the study as the command line says; returns the exit code."""
  args = cli.parse(lambda: cli.tyro.cli(Args, prog=PROG, description=__doc__, args=argv), PROG)
  grid = _grid(args)
  workdir = pathlib.Path(args.workdir or f"runs/sensitivity-{args.grid}")
  _prepare(workdir, args.overwrite)
  print(f"{PROG} --grid {args.grid}: {grid.description}; results in {workdir}", flush=True)
  results = sensitivity_report.run_study(grid, log=lambda line: print(line, flush=True))
  lines = sensitivity_report.summary_lines(results)
  header = (
    f"MNIST-1D, {results['num_train']} train / {results['num_test']} test, {grid.seeds} seeds, "
    f"{grid.effective_epochs:g} effective epochs per run, batch {grid.batch_size}, the main "
    f"job's recipes (learning rate x {mnist1d.BASE.lr_decay:g} at "
    f"{', '.join(f'{f:g}' for f in mnist1d.LR_DECAY_AT_FRACTIONS)} of the run); "
    f"wall time {results['wall_s']:.0f} s."
  )
  directory.write_json(workdir / directory.RESULTS_FILE, results)
  (workdir / directory.SUMMARY_FILE).write_text("\n".join([header, "", *lines]) + "\n")
  sensitivity_report.plot_heatmaps(results, workdir / "heatmaps.png")
  print("\n".join(["", header, "", *lines, ""]))
  print(f"table: {workdir / directory.SUMMARY_FILE}; heatmaps: {workdir / 'heatmaps.png'}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
