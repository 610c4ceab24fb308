"""Gathers finished runs into a Markdown table shaped like the paper's Table 1.

    python -m experiments.results runs/
    python -m experiments.results runs/ --output table.md

Finds every run's results.json under the given directories and writes one row per model and
data set (runs are paired within a directory): the local-entropy run beside its baseline (the
paper's: Adam on MNIST, SGD on CIFAR-10; otherwise SGD for Entropy-SGD, Adam for Entropy-Adam),
each with its test error (mean ± std over seeds, the number of seeds in brackets), its effective
epochs, and the paper's figure where the paper has one.
"""

from __future__ import annotations

from experiments.run import signals

# Before the slow imports below: a signal during them waits for a safe point.
signals.defer_if_main(__name__)

import dataclasses
import pathlib
from collections.abc import Sequence
from typing import Annotated, Any

import tyro

from experiments.launch import cli
from experiments.reporting import tables
from experiments.run import directory
from experiments.run.schema import ConfigError

PROG = "python -m experiments.results"


@dataclasses.dataclass(frozen=True)
class Args:
  """Gathers finished runs into a table like the paper's Table 1."""

  directories: Annotated[tuple[str, ...], tyro.conf.Positional]
  """directories searched (recursively) for finished runs"""
  output: str | None = None
  """also write the table to this file"""


def find_runs(directories: Sequence[str]) -> list[dict[str, Any]]:
  """The results of every finished run under ``directories``, each with its ``path``."""
  runs = []
  for folder in directories:
    root = pathlib.Path(folder)
    if not root.is_dir():
      raise ConfigError(
        f"{root} is not a directory: pass the directory the runs were written to (default: runs)."
      )
    for path in sorted(root.rglob(directory.RESULTS_FILE)):
      results = directory.read_results(path)
      if "optimizer" in results:  # a grid's results.json gathers its runs: skip it
        runs.append(dict(results, path=str(path.parent)))
  if not runs:
    raise ConfigError(
      f"no finished run (results.json) under {', '.join(directories)}; run an "
      "experiment script first."
    )
  return runs


@cli.main
def main(argv: Sequence[str] | None = None) -> int:
  """Prints (and optionally writes) the table; returns the exit code."""
  args = cli.parse(lambda: tyro.cli(Args, prog=PROG, description=__doc__, args=argv), PROG)
  if not args.directories:
    raise cli.UsageError(f"give at least one RUNS_DIR (see {PROG} --help)")
  runs = find_runs(args.directories)
  text = (
    f"{tables.table1(runs)}\n\n{tables.TABLE1_NOTE}\n\nRuns: "
    + ", ".join(r["path"] for r in runs)
    + "\n"
  )
  if args.output:
    try:
      pathlib.Path(args.output).write_text(text)
    except OSError as e:
      raise directory.WorkdirError(
        f"cannot write {args.output} ({e.strerror or e}); pass --output a writable path."
      ) from e
  print(text, end="")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
