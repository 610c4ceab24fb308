"""fp32 against bf16 compute for one Entropy-SGD step.

bf16: the model's weights and compute are bfloat16 (``param_dtype`` and ``dtype``), while the
core keeps the Langevin chain (x', mu and the noise) in float32 (``chain_dtype``): the noise and
the coupling are below bf16's resolution. The SGD x L baseline in each precision is timed too,
so that the Entropy-SGD overhead can be read per precision.

Example, from the repository root::

  python -m benchmarks.precision --model mlp allcnn_bn --batch 128 --steps 20
"""

from __future__ import annotations

import argparse
import time

import jax.numpy as jnp

from benchmarks import harness, programs, workloads


def run_model(model: str, args) -> dict:
  unroll = programs.resolve_unroll(args.unroll, args.steps)
  runners, meta = {}, {}
  for dtype_name in args.dtypes:
    dtype = jnp.dtype(dtype_name)
    spec = workloads.make_model(model, dtype)
    params, batch_stats = workloads.init_model(spec, param_dtype=dtype)
    batches = workloads.make_batches(spec, args.steps, args.batch)
    loss_fn = workloads.make_loss(spec)
    tx, sgd = programs.entropy_tx(args.steps, unroll=unroll), programs.sgd_tx()
    runners[f"entropy_sgd {dtype_name}"] = programs.Runner(
      programs.build_entropy_step(loss_fn, tx), params, batch_stats, tx.init(params), batches
    )
    runners[f"sgd x{args.steps} {dtype_name}"] = programs.Runner(
      programs.build_sgd_steps(
        loss_fn, sgd, programs.baseline_unroll(args.unroll, spec, args.steps)
      ),
      params,
      batch_stats,
      sgd.init(params),
      batches,
    )
    meta[f"entropy_sgd {dtype_name}"] = dict(
      dtype=dtype_name, kind="entropy", baseline=f"sgd x{args.steps} {dtype_name}"
    )
    meta[f"sgd x{args.steps} {dtype_name}"] = dict(
      dtype=dtype_name, kind="sgd", baseline=f"sgd x{args.steps} {dtype_name}"
    )
  print(
    f"\n== {model} ({spec.source}): {workloads.num_params(params):,} parameters, batch "
    f"{args.batch}, L = {args.steps}, unroll {unroll}",
    flush=True,
  )
  for name, runner in runners.items():
    print(f"compiling {name} ... {runner.compile():.1f} s", flush=True)
  start = time.perf_counter()
  times = harness.time_interleaved(runners, repeats=args.repeats, warmup=args.warmup)
  fp32 = f"entropy_sgd {args.dtypes[0]}"
  print(
    f"timed {args.repeats} interleaved rounds in {time.perf_counter() - start:.0f} s; "
    f"speedup = median({fp32}) / median(row); overhead = median(row) / median(SGD x L, "
    "same dtype)"
  )
  rows = [
    {
      **harness.timing_row(name, t),
      **meta[name],
      "speedup_vs_fp32_entropy": harness.median(times[fp32]) / harness.median(t),
      "overhead_vs_sgd": harness.median(t) / harness.median(times[meta[name]["baseline"]]),
    }
    for name, t in times.items()
  ]
  harness.print_table(
    rows, ["variant", "median_ms", "min_ms", "speedup_vs_fp32_entropy", "overhead_vs_sgd"]
  )
  return harness.model_record(model, spec, args, unroll=unroll, rows=rows)


def add_args(parser: argparse.ArgumentParser) -> None:
  harness.add_unroll_arg(parser)
  parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
  harness.add_timing_args(parser)


def main(argv=None):
  return harness.benchmark_main(
    "benchmarks.precision",
    __doc__,
    add_args,
    run_model,
    argv,
  )


if __name__ == "__main__":
  main()
