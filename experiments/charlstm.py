"""The recurrent main job: char-LSTM with Adam and Entropy-Adam at equal effective epochs.

    python -m experiments.charlstm                     # offline, ~3.5 minutes on 2 CPU cores
    python -m experiments.charlstm --text-file 2600-0.txt --num-train 0 --num-test 0
    python -m experiments.charlstm --text-file 2600-0.txt --num-train 0 --effective-epochs None

The second and third train on all of War and Peace (Project Gutenberg's 2600-0.txt); the third
with the recipes' own lengths and schedules (25 and 50 effective epochs: hours).

Trains the char-LSTM (2 x 128, 50 steps, clip 5) with the paper's two char-LSTM recipes
(experiments/configs/charlstm.py, Table 1 / Fig. 6b: Adam lr 2e-3; Entropy-Adam L = 5, gamma
0.01, b1 0.5, lr 1e-2, Langevin lr 0.1) for the same number of effective epochs, three seeds
vmapped in one jit. To fit in 5 minutes on a 2-core CPU the default job is short, and says so:
10 effective epochs over the first 50,010 characters of the training split of pydoc_data.topics
(ships with CPython: no download) and the first 20,000 of its validation and test splits, batch
10 (the recipes' 50 gives 5 times fewer updates, which ended on the unigram plateau), the
learning rate halved at 1/2 and 3/4 of each run (the paper's schedules span 25-50 epochs).
Prints validation and test cross-entropy per character (nats and bits, mean ± std over seeds;
the paper's War and Peace figures are nats), effective epochs and wall time; saves summary.md,
results.json and valid_cross_entropy.png (validation cross-entropy against effective epochs,
the shape of Fig. 6b) beside one run directory per recipe under --workdir (default
runs/charlstm). --resume continues a killed job.
"""

from __future__ import annotations

from experiments.run import signals

# Before the slow imports below: a signal during them waits for a safe point.
signals.defer_if_main(__name__)

import time
from collections.abc import Sequence

from experiments.configs import charlstm as configs
from experiments.launch import cli, jobs
from experiments.reporting import comparison_report, display_names, tables
from experiments.run import grid_job

DEFAULT = grid_job.GridJob(
  models=("char_lstm",),
  optimizers=tuple(configs.PRESETS),
  recipe={name: p.config for name, p in configs.PRESETS.items()},
  **configs.MAIN_JOB,
)
PROG = "python -m experiments.charlstm"


@cli.main
def main(argv: Sequence[str] | None = None) -> int:
  """Runs the char-LSTM comparison as the command line says; returns the exit code."""
  start = time.perf_counter()
  job = cli.parse_grid(PROG, __doc__, DEFAULT, argv)
  runs, root = jobs.run_comparison(job, DEFAULT, "runs/charlstm")
  results = {key: run.results for key, run in runs.items()}
  table = tables.language_model_table(results)
  first = next(iter(runs.values())).results
  config = next(iter(runs.values())).config
  header = (
    f"char-LSTM on {display_names.name(first['dataset'])}: "
    f"{first['num_train'] * config.bptt_steps:,} training characters in {config.batch_size} "
    f"streams, {len(first['seeds'])} seeds, equal effective epochs; cross-entropy per "
    "character (mean ± std over seeds). The paper's figures are War and Peace after 25-40 "
    "epochs."
  )
  comparison_report.save_and_print(
    runs,
    root,
    header=header,
    table=table,
    results=results,
    plot_file="valid_cross_entropy.png",
    start=start,
    title="char-LSTM (cf. Fig. 6b)",
    key="val_loss",
    scale=1.0,
    ylabel="validation cross-entropy (nats/char)",
  )
  return jobs.diverged_exit_code(list(runs.values()))


if __name__ == "__main__":
  raise SystemExit(main())
