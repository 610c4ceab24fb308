"""What a comparison job (one run per (model, optimizer): ``experiments.mnist1d``,
``experiments.fashion_mnist``, ``experiments.charlstm``) leaves when its runs are done:
summary.md, results.json and a plot in its directory, and its table printed."""

from __future__ import annotations

import pathlib
import time
from collections.abc import Mapping
from typing import Any

from experiments.reporting import display_names, plots, tables, time_to_target
from experiments.run import directory, distributed


def save_and_print(
  runs: Mapping[tuple[str, str], Any],
  root: pathlib.Path,
  *,
  header: str,
  table: str,
  results: Mapping[tuple[str, str], Mapping[str, Any]],
  plot_file: str,
  start: float,
  **plot_options: Any,
) -> None:
  """Writes the job's files (process 0 only) and prints its table.

  Args:
    runs: the job's runs by (model, optimizer), model by model (``jobs.run_comparison``).
    root: the job's directory.
    header: the text above the table.
    table: the job's table.
    results: what results.json holds for each run (``"MODEL-OPTIMIZER"`` keys).
    plot_file: the plot's file name in ``root``: ``plots.plot_error`` of the runs' records, a
      panel per model and a line per optimizer.
    start: ``time.perf_counter()`` when the job started (the printed total wall time).
    **plot_options: ``plots.plot_error``'s keywords (``title``, ``key``, ...).
  """
  if distributed.is_writer():  # process 0 writes the job's files
    (root / directory.SUMMARY_FILE).write_text(f"{header}\n\n{table}\n")
    directory.write_json(
      root / directory.RESULTS_FILE, {f"{m}-{o}": r for (m, o), r in results.items()}
    )
    panels: dict[str, dict[str, Any]] = {}
    for (model, optimizer), run in runs.items():
      panels.setdefault(display_names.name(model), {})[display_names.name(optimizer)] = run.records
    plots.plot_error(panels, root / plot_file, **plot_options)
  print(f"\n{header}\n\n{table}\n")
  print(
    f"total wall time {time.perf_counter() - start:.0f} s; table: {root / directory.SUMMARY_FILE}; "
    f"plot: {root / plot_file}"
  )


def classification_report(
  runs: Mapping[tuple[str, str], Any], root: pathlib.Path, *, header: str, start: float, title: str
) -> None:
  """``save_and_print`` for a job of classifiers: the accuracy table with each run's time to
  target (``time_to_target``), also in results.json, and the test error against effective
  epochs in test_error.png.

  Args:
    runs: the job's runs by (model, optimizer) (``jobs.run_comparison``).
    root: the job's directory.
    header: what the job was (data, seeds, budget); the definition of the time to target is
      added.
    start: ``time.perf_counter()`` when the job started.
    title: the plot's title.
  """
  results = {key: run.results for key, run in runs.items()}
  times = time_to_target.comparison_times_to_target(
    results, {key: run.records for key, run in runs.items()}
  )
  save_and_print(
    runs,
    root,
    header=f"{header} Time to target: first evaluation at {time_to_target.TARGET_FRACTION:g} x "
    "the model's best final accuracy (seconds since the run started, compilation included).",
    table=tables.comparison_table(results, times),
    results={key: {**r, "time_to_target": times[key]} for key, r in results.items()},
    plot_file="test_error.png",
    start=start,
    title=title,
  )
