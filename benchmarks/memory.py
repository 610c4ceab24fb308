"""Peak device memory of one Entropy-SGD step against one SGD step.

Target: Entropy-SGD's peak <= SGD's peak + 3x the parameter bytes.

Two measures, printed side by side:

* ``compiled``: XLA's own accounting of the jitted, donated step
  (``jit(...).lower(...).compile().memory_analysis()``): arguments + outputs - aliased (donated)
  + temporaries. Works on every backend. The input mini-batches are counted separately
  (``batch_bytes``) and left out of ``peak_no_data``: the Entropy-SGD step takes L mini-batches
  where SGD takes one, but a trainer that keeps the data set on the device holds them anyway.
* ``live`` (GPU/TPU only): ``device.memory_stats()['peak_bytes_in_use']`` after a few steps,
  each variant in a fresh subprocess so that peaks do not mix.

Example, from the repository root::

  python -m benchmarks.memory --model mlp allcnn_bn --batch 128 --steps 20
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import jax
import jax.numpy as jnp

from benchmarks import harness, programs, workloads


def _programs(model: str, batch: int, steps: int, unroll: str, dtype):
  spec = workloads.make_model(model, dtype)
  params, batch_stats = workloads.init_model(spec, param_dtype=dtype)
  loss_fn = workloads.make_loss(spec)
  batches = workloads.make_batches(spec, steps, batch)
  one_batch = jax.tree.map(lambda b: b[:1], batches)
  sgd = programs.sgd_tx()
  ent = programs.entropy_tx(steps, unroll=programs.resolve_unroll(unroll, steps))
  return (
    spec,
    params,
    {
      # One SGD step is the scan of length 1 over a single mini-batch.
      "sgd": programs.Runner(
        programs.build_sgd_steps(loss_fn, sgd, unroll=1),
        params,
        batch_stats,
        sgd.init(params),
        one_batch,
      ),
      "entropy_sgd": programs.Runner(
        programs.build_entropy_step(loss_fn, ent), params, batch_stats, ent.init(params), batches
      ),
    },
  )


def compiled_memory(runner: programs.Runner, compiler_options: dict | None = None) -> dict:
  if runner.compiled is None:
    runner.compile(compiler_options)
  stats = runner.compiled.memory_analysis()
  batch_bytes = workloads.tree_bytes(runner.batches)
  peak = (
    stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    - stats.alias_size_in_bytes
    + stats.temp_size_in_bytes
  )
  return {
    "argument_bytes": stats.argument_size_in_bytes,
    "output_bytes": stats.output_size_in_bytes,
    "alias_bytes": stats.alias_size_in_bytes,
    "temp_bytes": stats.temp_size_in_bytes,
    "batch_bytes": batch_bytes,
    "peak_bytes": peak,
    "peak_no_data_bytes": peak - batch_bytes,
  }


def live_peak(model, batch, steps, unroll, dtype_name, variant) -> int | None:
  """peak_bytes_in_use of a fresh process that runs 3 steps of ``variant`` (None on CPU)."""
  code = "import sys; from benchmarks import memory; memory.child_peak(*sys.argv[1:])"
  out = subprocess.run(
    [sys.executable, "-c", code, variant, model, str(batch), str(steps), unroll, dtype_name],
    capture_output=True,
    text=True,
    check=True,
    cwd=harness.REPO_ROOT,
  )
  return json.loads(out.stdout.strip().splitlines()[-1])["peak"]


def child_peak(variant: str, model: str, batch: str, steps: str, unroll: str, dtype: str) -> None:
  """Runs 3 steps of ``variant`` and prints this process's peak device memory as JSON."""
  _, _, runners = _programs(model, int(batch), int(steps), unroll, jnp.dtype(dtype))
  runner = runners[variant]
  for _ in range(3):
    runner()
  stats = jax.devices()[0].memory_stats()
  print(json.dumps({"peak": stats.get("peak_bytes_in_use") if stats else None}))


def compiler_options(scheduler: str) -> dict | None:
  if scheduler == "default":
    return None
  if jax.default_backend() != "cpu":
    raise SystemExit("--scheduler memory is an XLA:CPU option; leave it out on GPU/TPU.")
  return programs.CPU_MEMORY_SCHEDULER


def run_model(model: str, args) -> dict:
  dtype = jnp.dtype(args.dtype)
  spec, params, runners = _programs(model, args.batch, args.steps, args.unroll, dtype)
  param_bytes = workloads.tree_bytes(params)
  print(
    f"\n== {model} ({spec.source}): {workloads.num_params(params):,} parameters "
    f"({param_bytes / 2**20:.2f} MiB, {args.dtype}), batch {args.batch}, L = {args.steps}"
  )
  rows = []
  for name, runner in runners.items():
    row = {"step": name, **compiled_memory(runner, compiler_options(args.scheduler))}
    if args.live and jax.default_backend() != "cpu":
      row["live_peak_bytes"] = live_peak(
        model, args.batch, args.steps, args.unroll, args.dtype, name
      )
    rows.append(row)
  sgd, ent = rows
  extra = ent["peak_no_data_bytes"] - sgd["peak_no_data_bytes"]
  summary = {
    "param_bytes": param_bytes,
    "extra_bytes": extra,
    "extra_in_param_bytes": extra / param_bytes,
    "target_met": extra <= 3 * param_bytes,
  }
  if "live_peak_bytes" in ent and ent["live_peak_bytes"] and sgd["live_peak_bytes"]:
    live_extra = ent["live_peak_bytes"] - sgd["live_peak_bytes"]
    summary.update(
      live_extra_bytes=live_extra,
      live_extra_in_param_bytes=live_extra / param_bytes,
      live_target_met=live_extra <= 3 * param_bytes,
    )
  mib = lambda b: b / 2**20
  harness.print_table(
    [
      {
        "step": r["step"],
        **{k.replace("_bytes", "_MiB"): mib(v) for k, v in r.items() if k != "step"},
      }
      for r in rows
    ]
  )
  print(
    f"Entropy-SGD - SGD (no data): {mib(extra):.2f} MiB = "
    f"{summary['extra_in_param_bytes']:.2f}x parameter bytes "
    f"(target <= 3x: {'met' if summary['target_met'] else 'MISSED'})"
  )
  if "live_extra_bytes" in summary:
    print(
      f"live peak: Entropy-SGD - SGD = {summary['live_extra_in_param_bytes']:.2f}x "
      "parameter bytes (includes the L mini-batches)"
    )
  return harness.model_record(
    model,
    spec,
    args,
    num_params=workloads.num_params(params),
    dtype=args.dtype,
    scheduler=args.scheduler,
    rows=rows,
    **summary,
  )


def add_args(parser: argparse.ArgumentParser) -> None:
  harness.add_unroll_arg(parser)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument(
    "--scheduler",
    default="default",
    choices=["default", "memory"],
    help="XLA:CPU scheduler: 'memory' compiles with programs.CPU_MEMORY_SCHEDULER",
  )
  parser.add_argument(
    "--no-live",
    dest="live",
    action="store_false",
    help="skip the subprocess peak_bytes_in_use measure on GPU",
  )


def main(argv=None):
  return harness.benchmark_main(
    "benchmarks.memory",
    __doc__,
    add_args,
    run_model,
    argv,
  )


if __name__ == "__main__":
  main()
