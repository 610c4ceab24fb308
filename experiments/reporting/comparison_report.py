"""What a comparison job (one run per (model, optimizer), ``experiments.mnist1d`` and
``experiments.charlstm``) leaves when its runs are done: summary.md, results.json and a plot in
its directory, and its table printed."""

from __future__ import annotations

import pathlib
import time
from collections.abc import Mapping
from typing import Any

from experiments.reporting import display_names, plots
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
