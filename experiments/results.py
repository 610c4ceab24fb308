"""Gathers finished runs into a Markdown table shaped like the paper's Table 1.

    python -m experiments.results runs/
    python -m experiments.results runs/ --output table.md

Finds every run's results.json under the given directories (the runs of the scripts, the
runs of a MNIST-1D or flatness grid) and writes one row per model and data set (runs are
paired within a directory): the local-entropy run (Entropy-SGD or Entropy-Adam) beside its baseline (the paper's: Adam on
MNIST, SGD on CIFAR-10; otherwise SGD for Entropy-SGD and Adam for Entropy-Adam), each with its
test error (mean ± std over seeds, the number of seeds in brackets), its effective epochs, and
the paper's figure, error ± std (effective epochs), where the paper has one.
"""

from __future__ import annotations

from collections.abc import Sequence
import pathlib
from typing import Any

from experiments import common

MODEL_NAMES = {"allcnn_bn": "All-CNN-BN", "mnistfc": "mnistfc", "lenet_bn": "LeNet-BN",
               "mlp1d": "MLP", "cnn1d": "CNN"}
DATA_NAMES = {"cifar10": "CIFAR-10", "mnist": "MNIST", "mnist1d": "MNIST-1D"}
OPTIMIZER_NAMES = {"sgd": "SGD", "adam": "Adam", "entropy-sgd": "Entropy-SGD",
                   "entropy-adam": "Entropy-Adam"}
# The baselines the paper compared Entropy-SGD with.
PAPER_BASELINE = {"mnist": "adam", "cifar10": "sgd"}
FAMILY_BASELINE = {"entropy-sgd": "sgd", "entropy-adam": "adam"}


def find_runs(directories: Sequence[str]) -> list[dict[str, Any]]:
  """The results of every finished run under ``directories``, each with its ``path``."""
  runs = []
  for directory in directories:
    root = pathlib.Path(directory)
    if not root.is_dir():
      raise common.ConfigError(f"{root} is not a directory: pass the directory the runs were "
                               "written to (default: runs).")
    for path in sorted(root.rglob(common.RESULTS_FILE)):
      results = common.read_json(path)
      if "optimizer" in results:  # grids keep a results.json of all their runs: skip it.
        runs.append(dict(results, path=str(path.parent)))
  if not runs:
    raise common.ConfigError(f"no finished run (results.json) under {', '.join(directories)}; "
                             "run an experiment script first.")
  return runs


def _pair(runs: list[dict[str, Any]], dataset: str) -> list[tuple[dict | None, dict | None]]:
  """Pairs each local-entropy run with a baseline run of the same model and data."""
  entropy = [r for r in runs if r["optimizer"].startswith("entropy-")]
  baselines = [r for r in runs if not r["optimizer"].startswith("entropy-")]
  rows = []
  for run in entropy:
    preferred = [PAPER_BASELINE.get(dataset), FAMILY_BASELINE[run["optimizer"]]]
    match = next((b for name in preferred for b in baselines if b["optimizer"] == name), None)
    if match is None and baselines:
      match = baselines[0]
    if match is not None:
      baselines.remove(match)
    rows.append((run, match))
  rows.extend((None, b) for b in baselines)
  return rows


def _error(run: dict[str, Any]) -> str:
  return (f"{run['test_error_mean']:.2f} ± {run['test_error_std']:.2f} "
          f"({len(run['seeds'])})")


def _cells(run: dict[str, Any] | None, synthetic: bool) -> list[str]:
  if run is None:
    return ["", "", "", ""]
  paper = "" if synthetic else (run.get("paper") or "")
  return [OPTIMIZER_NAMES.get(run["optimizer"], run["optimizer"]), _error(run),
          f"{run['effective_epochs']:g}", paper]


def table(runs: list[dict[str, Any]]) -> str:
  """The Markdown table: one row per pair of runs of a model and data set."""
  # Runs are compared within one directory (a grid, or the runs/ of the single-run scripts).
  groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
  for run in runs:
    key = (str(pathlib.Path(run["path"]).parent), run["dataset"], run["model"])
    groups.setdefault(key, []).append(run)
  lines = [
      "| Model | Data | Entropy-* | error (%) | eff. epochs | paper | SGD / Adam | error (%) "
      "| epochs | paper |",
      "|---|---|---|---|---|---|---|---|---|---|"]
  for (_, dataset, model), group in groups.items():
    synthetic = dataset.startswith("synthetic:")
    base = dataset.removeprefix("synthetic:")
    data = DATA_NAMES.get(base, base) + (" (synthetic)" if synthetic else "")
    for entropy, baseline in _pair(group, base):
      cells = [MODEL_NAMES.get(model, model), data, *_cells(entropy, synthetic),
               *_cells(baseline, synthetic)]
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


NOTE = ("Test error in %: mean ± standard deviation over seeds (number of seeds). Epochs are "
        "effective epochs (L x outer epochs for Entropy-*). Paper: Chaudhari et al. (2017), "
        "Table 1, error ± std (effective epochs); MNIST-1D: the benchmark's published test "
        "accuracy (Greydanus 2020).")


def parser():
  p = common.new_parser("python -m experiments.results", __doc__.splitlines()[0],
                        __doc__.split("\n\n", 1)[1])
  p.add_argument("directories", nargs="+", metavar="RUNS_DIR",
                 help="directories searched (recursively) for finished runs")
  p.add_argument("--output", default=None, help="also write the table to this file")
  return p


@common.cli
def main(argv: Sequence[str] | None = None) -> int:
  """Prints (and optionally writes) the table; returns the exit code."""
  args = parser().parse_args(argv)
  runs = find_runs(args.directories)
  text = f"{table(runs)}\n\n{NOTE}\n\nRuns: " + ", ".join(r["path"] for r in runs) + "\n"
  if args.output:
    try:
      pathlib.Path(args.output).write_text(text)
    except OSError as e:
      raise common.WorkdirError(f"cannot write {args.output} ({e.strerror or e}); pass "
                                "--output a writable path.") from e
  print(text, end="")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
