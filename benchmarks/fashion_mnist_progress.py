"""The full-length Fashion-MNIST runs as far as they got: a table and the curves of test error.

    python -m benchmarks.fashion_mnist_progress /work/runs/fashion_mnist \\
        --output-dir benchmarks/results/fashion_mnist_full

Reads every run directory (``metrics.jsonl``) under the given directory, finished or not, and
writes ``summary.md`` (per recipe: effective epochs reached of its budget, test error at its
last evaluation as mean ± std over seeds, the best during the run, wall time and time per
effective epoch of all its seeds; the paper's MNIST figure beside it) and ``test_error.png``
(test error against effective epochs, a panel per model: the paper's Fig. 4). Run directories
of the same model, optimizer and budget that train other seeds (jobs run with ``--seed``) are
pooled into one row. A run still training is shown as far as its last evaluation; ``--resume``
of its job continues it. ``--jobs NAME...`` reads only these jobs' directories (a seed that has
just started, left out, does not pull its recipe's row back to its first evaluation).
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


def _config(run_dir: pathlib.Path) -> schema.RunConfig:
  return schema.from_json(directory.read_json(run_dir / directory.CONFIG_FILE)["config"])


def run_row(
  run_dirs: list[pathlib.Path], configs: list[schema.RunConfig]
) -> tuple[dict, list[dict]]:
  """The facts and the records of one recipe's runs (their directories and configs): one run
  directory, or several that train other seeds of the same model, optimizer and budget (their
  seeds pooled)."""
  records, seed_dirs, walls, per_epoch = [], {}, [], []
  for run_dir in run_dirs:
    own = directory.read_records(run_dir)
    for seed in sorted({r["seed"] for r in own}):
      if seed in seed_dirs:
        raise ValueError(
          f"seed {seed} is in both {seed_dirs[seed]} and {run_dir}: runs pooled as one recipe "
          "must train different seeds; move one of them out of the directory read"
        )
      seed_dirs[seed] = run_dir
    records += own
    walls.append(max((r["wall_time"] for r in own), default=0.0))
    reached = max((r["effective_epochs"] for r in own), default=0.0)
    per_epoch.append(walls[-1] / reached if reached else float("nan"))
  evaluated = [r for r in records if "val_error" in r]
  # The last evaluation every evaluated seed has made (a run ahead of the others waits for
  # them); seeds not evaluated yet are counted as missing in the table.
  last_by_seed = {}
  for r in evaluated:
    last_by_seed[r["seed"]] = max(last_by_seed.get(r["seed"], 0.0), r["effective_epochs"])
  last_epochs = min(last_by_seed.values(), default=0.0)
  last = [100 * r["val_error"] for r in evaluated if r["effective_epochs"] == last_epochs]
  reached_by_seed = {}
  for r in records:
    reached_by_seed[r["seed"]] = max(reached_by_seed.get(r["seed"], 0.0), r["effective_epochs"])
  return {
    "run": " + ".join(d.parent.name + "/" + d.name for d in run_dirs),
    "model": configs[0].model,
    "optimizer": configs[0].optimizer,
    "finished": all((d / directory.RESULTS_FILE).exists() for d in run_dirs),
    "seeds": sum(c.num_seeds for c in configs),
    "budget": configs[0].effective_epochs,
    "reached": min(reached_by_seed.values(), default=0.0),
    "evaluated_at": last_epochs,
    "error_mean": float(np.mean(last)) if last else float("nan"),
    "error_std": float(np.std(last, ddof=1)) if len(last) > 1 else 0.0,
    "error_seeds": len(last),
    "best": min((100 * r["val_error"] for r in evaluated), default=float("nan")),
    "wall_s": sum(walls),
    "s_per_epoch": sum(per_epoch),
    "paper": _paper(configs[0].model, configs[0].optimizer),
  }, records


def recipes(run_dirs: list[pathlib.Path]) -> list[tuple[list[pathlib.Path], list]]:
  """The run directories and their configs grouped by recipe (model, optimizer, effective
  epochs), in order."""
  groups: dict[tuple, tuple[list, list]] = {}
  for run_dir in run_dirs:
    config = _config(run_dir)
    dirs, configs = groups.setdefault(
      (config.model, config.optimizer, config.effective_epochs), ([], [])
    )
    dirs.append(run_dir)
    configs.append(config)
  return list(groups.values())


def table(rows: list[dict]) -> str:
  lines = [
    "| run | model | optimizer | status | effective epochs (of) | test error at last evaluation "
    "(%) | best (%) | seeds | wall time (h) | s per eff. epoch | paper, MNIST (%) |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    evaluated = not np.isnan(r["error_mean"])  # a run that started has no evaluation yet
    error = "none yet"
    if evaluated:
      spread = f" ± {r['error_std']:.2f}" if r["error_seeds"] > 1 else ""
      missing = ""
      if r["error_seeds"] < r["seeds"]:
        missing = f" ({r['error_seeds']} of {r['seeds']} seeds)"
      error = f"{r['error_mean']:.2f}{spread} at {r['evaluated_at']:.1f}{missing}"
    best = f"{r['best']:.2f}" if evaluated else "—"
    lines.append(
      f"| {r['run']} | {display_names.name(r['model'])} | {display_names.name(r['optimizer'])} | "
      f"{'finished' if r['finished'] else 'running'} | {r['reached']:.1f} ({r['budget']:g}) | "
      f"{error} | {best} | {r['seeds']} | "
      f"{r['wall_s'] / 3600:.2f} | {r['s_per_epoch']:.0f} | {r['paper']} |"
    )
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("runs_dir")
  parser.add_argument("--output-dir", default=".")
  parser.add_argument(
    "--jobs",
    nargs="+",
    metavar="NAME",
    help="only these job directories of RUNS_DIR (default: all)",
  )
  args = parser.parse_args(argv)
  root = pathlib.Path(args.runs_dir)
  run_dirs = sorted(p.parent for p in root.glob("*/*/metrics.jsonl"))
  if args.jobs:
    jobs = sorted({d.parent.name for d in run_dirs})
    empty = [job for job in args.jobs if job not in jobs]
    if empty:
      parser.error(
        f"--jobs: no run directory (NAME/RUN/metrics.jsonl) under {root} for "
        f"{', '.join(empty)}; the jobs there: {', '.join(jobs) or 'none'}"
      )
    run_dirs = [d for d in run_dirs if d.parent.name in args.jobs]
  rows, panels = [], {}
  for group, configs in recipes(run_dirs):
    row, records = run_row(group, configs)
    rows.append(row)
    label = display_names.name(row["optimizer"]) + f" ({', '.join(d.parent.name for d in group)})"
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
