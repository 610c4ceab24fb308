"""The full-length Fashion-MNIST runs as far as they got: a table and the curves of test error.

    python -m benchmarks.fashion_mnist_progress /work/runs/fashion_mnist \\
        --output-dir benchmarks/results/fashion_mnist_full

Reads every run directory (``metrics.jsonl``) under the given directory, finished or not, and
writes ``summary.md`` (per run: effective epochs reached of its budget, test error at its last
evaluation as mean ± std over seeds, the best during the run, wall time and time per effective
epoch; the paper's MNIST figure and the data set's benchmark beside it) and ``test_error.png``
(test error against effective epochs, a panel per model: the paper's Fig. 4). A run still
training is shown as far as its last evaluation; ``--resume`` of its job continues it.
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

from experiments.configs import mnist as mnist_configs
from experiments.reporting import display_names, plots
from experiments.run import directory, schema


def _paper(model: str, optimizer: str) -> str:
  """The paper's MNIST figure of this model and optimizer (Table 1), "" if none."""
  for preset in mnist_configs.PRESETS.values():
    if preset.config.optimizer == optimizer and model in preset.paper:
      return preset.paper[model]
  return ""


def run_row(run_dir: pathlib.Path) -> tuple[dict, list[dict]]:
  """One run's facts and its records."""
  config = schema.from_json(directory.read_json(run_dir / directory.CONFIG_FILE)["config"])
  records = directory.read_records(run_dir)
  evaluated = [r for r in records if "val_error" in r]
  last_epochs = max((r["effective_epochs"] for r in evaluated), default=0.0)
  last = [100 * r["val_error"] for r in evaluated if r["effective_epochs"] == last_epochs]
  wall = max((r["wall_time"] for r in records), default=0.0)
  reached = max((r["effective_epochs"] for r in records), default=0.0)
  return {
    "run": run_dir.parent.name + "/" + run_dir.name,
    "model": config.model,
    "optimizer": config.optimizer,
    "finished": (run_dir / directory.RESULTS_FILE).exists(),
    "seeds": config.num_seeds,
    "budget": config.effective_epochs,
    "reached": reached,
    "evaluated_at": last_epochs,
    "error_mean": float(np.mean(last)) if last else float("nan"),
    "error_std": float(np.std(last, ddof=1)) if len(last) > 1 else 0.0,
    "best": min((100 * r["val_error"] for r in evaluated), default=float("nan")),
    "wall_s": wall,
    "paper": _paper(config.model, config.optimizer),
  }, records


def table(rows: list[dict]) -> str:
  lines = [
    "| run | model | optimizer | status | effective epochs (of) | test error at last evaluation "
    "(%) | best (%) | seeds | wall time (h) | s per eff. epoch | paper, MNIST (%) |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    per_epoch = r["wall_s"] / r["reached"] if r["reached"] else float("nan")
    evaluated = not np.isnan(r["error_mean"])  # a run that started has no evaluation yet
    error = (
      f"{r['error_mean']:.2f} ± {r['error_std']:.2f} at {r['evaluated_at']:.1f}"
      if evaluated
      else "none yet"
    )
    best = f"{r['best']:.2f}" if evaluated else "—"
    lines.append(
      f"| {r['run']} | {display_names.name(r['model'])} | {display_names.name(r['optimizer'])} | "
      f"{'finished' if r['finished'] else 'running'} | {r['reached']:.1f} ({r['budget']:g}) | "
      f"{error} | {best} | {r['seeds']} | "
      f"{r['wall_s'] / 3600:.2f} | {per_epoch:.0f} | {r['paper']} |"
    )
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("runs_dir")
  parser.add_argument("--output-dir", default=".")
  args = parser.parse_args(argv)
  run_dirs = sorted(p.parent for p in pathlib.Path(args.runs_dir).glob("*/*/metrics.jsonl"))
  rows, panels = [], {}
  for run_dir in run_dirs:
    row, records = run_row(run_dir)
    rows.append(row)
    label = display_names.name(row["optimizer"]) + (f" ({run_dir.parent.name})")
    panels.setdefault(display_names.name(row["model"]), {})[label] = records
  out = pathlib.Path(args.output_dir)
  out.mkdir(parents=True, exist_ok=True)
  text = table(rows)
  (out / "summary.md").write_text(text + "\n")
  plots.plot_error(panels, out / "test_error.png", title="Fashion-MNIST, the paper's schedules")
  print(text)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
