"""flax's three MNIST programs against their Entropy-SGD ports, at equal gradient evaluations.

Each program (``linen_mnist``, ``nnx_mnist``, ``nnx_tutorial``) runs as flax wrote it and as
ported (``*_port.py``, L = 5: an update takes 5 mini-batches, so an epoch has 1/5 as many
updates), for each seed, on the MNIST-format files of ``--data-dir`` (Fashion-MNIST from the
Debian package by default). Test accuracy is read after every epoch's worth of mini-batches (the
learning rates are constant, so the 1-epoch point of a 5-epoch run is a 1-epoch run). Every run
is appended to ``--jsonl`` as it ends and a run already there is not run again, so a sweep that
was stopped continues where it was when the same command is run again. The table of mean
+- std over seeds, with the lines each port changes (``diff`` of the code, docstrings aside), is
written to ``--table``.

    python -m benchmarks.flax_ports.benchmark --seeds 0 1 2 --epochs 1   # 3 seeds, 1 epoch
    python -m benchmarks.flax_ports.benchmark --seeds 0 1 2 --epochs 5   # and 5 epochs
    python -m benchmarks.flax_ports.benchmark --table-only               # the table from --jsonl
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import os
import pathlib
import platform
import sys
import time

import jax
import numpy as np

from benchmarks.flax_ports import data

HERE = pathlib.Path(__file__).resolve().parent
PROGRAMS = ("linen_mnist", "nnx_mnist", "nnx_tutorial")
VARIANTS = ("original", "port", "port_no_reestimate")


def changed_lines(program: str) -> tuple[int, int]:
  """(lines of the port not in the original, lines of the original not in the port), non-blank,
  module docstrings aside: what ``diff`` counts as ``>`` and ``<`` lines."""

  def code(name):
    text = (HERE / f"{name}.py").read_text()
    body = text.split('"""', 2)[2]  # drop the module docstring
    return [line for line in body.splitlines() if line.strip()]

  diff = list(difflib.unified_diff(code(program), code(program + "_port"), lineterm="", n=0))
  added = sum(1 for d in diff if d.startswith("+") and not d.startswith("+++"))
  removed = sum(1 for d in diff if d.startswith("-") and not d.startswith("---"))
  return added, removed


def run_one(program: str, variant: str, seed: int, epochs: int, train_ds, test_ds) -> dict:
  """One training run; returns the test accuracy after each epoch's worth of mini-batches."""
  module = importlib.import_module(
    f"benchmarks.flax_ports.{program}{'' if variant == 'original' else '_port'}"
  )
  if variant == "port_no_reestimate":  # the ablation: the running statistics as training left them
    module.nnx_reestimate_batch_stats = lambda *args, **kwargs: None
  start = time.perf_counter()
  if program == "nnx_tutorial":
    per_epoch = len(train_ds["label"]) // module.batch_size  # batches in an epoch
    history = module.train_and_evaluate(
      train_ds, test_ds, seed=seed, train_steps=epochs * per_epoch, eval_every=per_epoch
    )
  else:
    config = module.get_config()
    config.num_epochs, config.seed = epochs, seed
    history = module.train_and_evaluate(config, train_ds, test_ds)
  seconds = time.perf_counter() - start
  if variant == "port_no_reestimate":
    importlib.reload(module)
  return {
    "program": program,
    "variant": variant,
    "seed": seed,
    "epochs": epochs,
    "test_accuracy": [h["test_accuracy"] for h in history],
    "history": history,
    "seconds": seconds,
    "load_1min": os.getloadavg()[0],
  }


def table(records: list[dict]) -> str:
  """Markdown: per program and epoch budget, mean +- std over seeds of each variant (the value
  alone for one seed), and the mean wall time of a run (machine and load in the records)."""
  rows = [
    "| program | changed lines (port / original) | epochs' worth | original (%) | port (%) | "
    "port - original | port, BatchNorm not re-estimated (%) | seeds (original / port) | "
    "wall s per run (original / port) |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for program in PROGRAMS:
    added, removed = changed_lines(program)
    budgets = sorted(
      {e for r in records if r["program"] == program for e in range(1, 1 + len(r["test_accuracy"]))}
    )
    for epochs in budgets:
      acc = {
        v: [
          100 * r["test_accuracy"][epochs - 1]
          for r in records
          if r["program"] == program and r["variant"] == v and len(r["test_accuracy"]) >= epochs
        ]
        for v in VARIANTS
      }
      fmt = lambda a: (
        (f"{np.mean(a):.2f} ± {np.std(a):.2f}" if len(a) > 1 else f"{a[0]:.2f}") if a else "—"
      )
      wall = {
        v: [r["seconds"] for r in records if r["program"] == program and r["variant"] == v]
        for v in ("original", "port")
      }
      walls = " / ".join(f"{np.mean(w):.0f}" if w else "—" for w in wall.values())
      seeds = min(len(acc["original"]), len(acc["port"]))
      gap = f"{np.mean(acc['port']) - np.mean(acc['original']):+.2f}" if seeds else "—"
      rows.append(
        f"| {program} | {added} / {removed} | {epochs} | {fmt(acc['original'])} | "
        f"{fmt(acc['port'])} | {gap} | {fmt(acc['port_no_reestimate'])} | "
        f"{len(acc['original'])} / {len(acc['port'])} | {walls} |"
      )
  return "\n".join(rows) + "\n"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data-dir", default=data.DEFAULT_DATA_DIR)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--epochs", type=int, default=1, help="epochs' worth of mini-batches")
  parser.add_argument("--programs", nargs="+", choices=PROGRAMS, default=list(PROGRAMS))
  parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["original", "port"])
  parser.add_argument("--jsonl", default=str(HERE / "results.jsonl"))
  parser.add_argument("--table", default=str(HERE / "table.md"))
  parser.add_argument("--table-only", action="store_true")
  args = parser.parse_args(argv)
  jsonl = pathlib.Path(args.jsonl)
  read = lambda: (
    [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []
  )
  done = {(r["program"], r["variant"], r["seed"], r["epochs"]) for r in read()}
  if not args.table_only:
    train_ds, test_ds = data.get_datasets(args.data_dir)
    for seed in args.seeds:
      for program in args.programs:
        for variant in args.variants:
          if variant == "port_no_reestimate" and program == "linen_mnist":
            continue  # no BatchNorm
          if (program, variant, seed, args.epochs) in done:
            print(f"{program} {variant} seed {seed}: in {jsonl} already", flush=True)
            continue
          record = run_one(program, variant, seed, args.epochs, train_ds, test_ds)
          record.update(
            command="python -m benchmarks.flax_ports.benchmark " + " ".join(sys.argv[1:]),
            machine=f"{platform.machine()} {os.cpu_count()} cores, jax {jax.__version__}",
          )
          with jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")
          acc = " ".join(f"{100 * a:.2f}" for a in record["test_accuracy"])
          print(f"{program} {variant} seed {seed}: {acc} ({record['seconds']:.0f} s)", flush=True)
  records = read()
  pathlib.Path(args.table).write_text(table(records))
  print(table(records))


if __name__ == "__main__":
  main()
