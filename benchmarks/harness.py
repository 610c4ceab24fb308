"""The harness of the benchmark scripts: timing, the environment record, tables, JSON, main().

Every script runs as a module from the repository root (``python -m benchmarks.step_cost``) and
its ``main`` is `benchmark_main`: the same options, environment record, loop over models and JSON.
Timed calls are interleaved round-robin (`time_interleaved`) and reported as medians and paired
ratios, which stay meaningful on a shared, noisy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import numpy as np
import optax

from benchmarks.workloads import MODELS, ModelSpec

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def time_interleaved(
  fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
  """Seconds per call of each function, calls interleaved round-robin (shared, noisy machine).

  Interleaving spreads any change in background load evenly over the variants, so that their
  ratios stay meaningful even when the absolute times drift.
  """
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return times


def median(xs) -> float:
  return float(statistics.median(xs))


def paired_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
  """Median over rounds of time[num] / time[den] within the same round (robust to drift)."""
  return median([a / b for a, b in zip(times[num], times[den])])


def load_average() -> list[float]:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return []


def environment(module: str, argv: Sequence[str]) -> dict[str, Any]:
  """Device, library versions, load and the exact command: stored with every figure."""
  env = {
    "command": " ".join(["python", "-m", module, *argv]),
    "device": str(jax.devices()[0].device_kind),
    "backend": jax.default_backend(),
    "num_devices": jax.device_count(),
    "cpu_count": os.cpu_count(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "jaxlib": getattr(__import__("jaxlib"), "__version__", "?"),
    "optax": optax.__version__,
    "flax": flax.__version__,
    "numpy": np.__version__,
    "torch": _torch_version(),
    "load_average_start": load_average(),
    "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
  }
  try:
    env["git_commit"] = _git("rev-parse", "--short", "HEAD").strip()
    # Uncommitted changes to the library would make the figure unreproducible from the commit.
    env["core_uncommitted"] = _git("status", "--porcelain", "entropy_optax").split()[1::2]
  except OSError:  # no git on this machine
    pass
  return env


def _git(*args: str) -> str:
  """What ``git args`` prints in the repository."""
  return subprocess.run(
    ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
  ).stdout


def _torch_version() -> str | None:
  """torch's version if it is installed (only torch_reference uses it); None otherwise."""
  import importlib.util  # noqa: PLC0415 - only for this check

  if importlib.util.find_spec("torch") is None:
    return None
  import torch  # noqa: PLC0415 - optional dependency

  return torch.__version__


def print_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
  if not rows:
    return
  columns = columns or list(rows[0])
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
  cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
  print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
  print("  ".join("-" * w for w in widths))
  for row in cells:
    print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
  sys.stdout.flush()


def write_json(path: str | None, env: dict[str, Any], results: Any) -> None:
  if not path:
    return
  env = dict(env, load_average_end=load_average())
  with open(path, "w") as f:
    json.dump({"environment": env, "results": results}, f, indent=1, default=float)
  print(f"wrote {path}")


def add_workload_args(parser: argparse.ArgumentParser) -> None:
  """The options every benchmark shares: which models, batch size and L."""
  parser.add_argument("--model", nargs="+", default=["mlp", "allcnn_bn"], choices=MODELS)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=20, help="L, Langevin steps per update")


def add_timing_args(parser: argparse.ArgumentParser) -> None:
  """The options of the benchmarks that time calls."""
  parser.add_argument("--repeats", type=int, default=5, help="timed calls per variant")
  parser.add_argument("--warmup", type=int, default=1, help="untimed calls per variant")


def add_unroll_arg(parser: argparse.ArgumentParser, several: bool = False) -> None:
  """``--unroll``: auto (the core's default), full, rolled or an int; `resolve_unroll` reads it."""
  parser.add_argument(
    "--unroll",
    nargs="+" if several else None,
    default=["auto", "rolled"] if several else "auto",
    help="auto (the core's default), full, rolled, or an int",
  )


def timing_row(variant: str, times_s: Sequence[float]) -> dict[str, Any]:
  """The columns every timed variant reports: median and fastest call, and all calls, in ms."""
  return {
    "variant": variant,
    "median_ms": 1e3 * median(times_s),
    "min_ms": 1e3 * min(times_s),
    "times_ms": [1e3 * t for t in times_s],
  }


def model_record(model: str, spec: ModelSpec, args: argparse.Namespace, **fields) -> dict:
  """One model's result: what ran (model, batch, L) and ``fields``."""
  return {
    "model": model,
    "model_source": spec.source,
    "batch": args.batch,
    "steps": args.steps,
    **fields,
  }


def benchmark_main(
  module: str,
  doc: str,
  add_args: Callable[[argparse.ArgumentParser], None],
  run_model: Callable[[str, argparse.Namespace], dict[str, Any] | list[dict[str, Any]]],
  argv: Sequence[str] | None = None,
  show: Sequence[str] = ("device", "backend", "jax", "load_average_start"),
) -> list[dict[str, Any]]:
  """The ``main`` of every benchmark: parse, record the environment, run, print, write JSON.

  Args:
    module: the script's module name, e.g. ``benchmarks.step_cost`` (for ``--help`` and the
      recorded command).
    doc: the script's docstring; its first line is the description.
    add_args: adds the script's own options (``--model``, ``--batch``, ``--steps`` and
      ``--json`` are added here).
    run_model: ``run_model(model, args)``: a JSON-able dict of results for one ``--model``,
      or a list of them.
    argv: the arguments; ``sys.argv[1:]`` by default.
    show: the environment entries printed before the run.

  Returns:
    The results of every model in one list, also written to ``--json FILE`` with the
    environment.
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.splitlines()[0])
  add_workload_args(parser)
  parser.add_argument("--json", default=None, help="write the numbers and environment here")
  add_args(parser)
  args = parser.parse_args(argv)
  env = environment(module, argv)
  print({k: env[k] for k in show})
  results = []
  for model in args.model:
    result = run_model(model, args)
    results.extend(result if isinstance(result, list) else [result])
  write_json(args.json, env, results)
  return results
