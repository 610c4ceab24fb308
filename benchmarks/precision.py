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

from benchmarks import common


def run_model(model: str, args) -> dict:
  unroll = common.resolve_unroll(args.unroll, args.steps)
  runners, meta = {}, {}
  for dtype_name in args.dtypes:
    dtype = jnp.dtype(dtype_name)
    spec = common.make_model(model, dtype)
    params, batch_stats = common.init_model(spec, param_dtype=dtype)
    batches = common.make_batches(spec, args.steps, args.batch)
    loss_fn = common.make_loss(spec)
    tx, sgd = common.entropy_tx(args.steps, unroll=unroll), common.sgd_tx()
    runners[f"entropy_sgd {dtype_name}"] = common.Runner(
      common.build_entropy_step(loss_fn, tx), params, batch_stats, tx.init(params), batches
    )
    runners[f"sgd x{args.steps} {dtype_name}"] = common.Runner(
      common.build_sgd_steps(loss_fn, sgd, common.baseline_unroll(args.unroll, spec, args.steps)),
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
    f"\n== {model} ({spec.source}): {common.num_params(params):,} parameters, batch "
    f"{args.batch}, L = {args.steps}, unroll {unroll}",
    flush=True,
  )
  for name, runner in runners.items():
    print(f"compiling {name} ... {runner.compile():.1f} s", flush=True)
  start = time.perf_counter()
  times = common.time_interleaved(runners, repeats=args.repeats, warmup=args.warmup)
  fp32 = f"entropy_sgd {args.dtypes[0]}"
  print(
    f"timed {args.repeats} interleaved rounds in {time.perf_counter() - start:.0f} s; "
    f"speedup = median({fp32}) / median(row); overhead = median(row) / median(SGD x L, "
    "same dtype)"
  )
  rows = [
    {
      **common.timing_row(name, t),
      **meta[name],
      "speedup_vs_fp32_entropy": common.median(times[fp32]) / common.median(t),
      "overhead_vs_sgd": common.median(t) / common.median(times[meta[name]["baseline"]]),
    }
    for name, t in times.items()
  ]
  common.print_table(
    rows, ["variant", "median_ms", "min_ms", "speedup_vs_fp32_entropy", "overhead_vs_sgd"]
  )
  return common.model_record(model, spec, args, unroll=unroll, rows=rows)


def add_args(parser: argparse.ArgumentParser) -> None:
  common.add_unroll_arg(parser)
  parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
  common.add_timing_args(parser)


def main(argv=None):
  return common.benchmark_main(
    "benchmarks.precision",
    __doc__,
    add_args,
    run_model,
    argv,
  )


if __name__ == "__main__":
  main()
