"""Throughput of k independent Entropy-SGD runs in one jit against the same k runs in sequence.

Targets (k = 8): >= 3x the sequential throughput for the MLP, >= 1x for All-CNN-BN. The k runs
differ in their seed (initial weights and Langevin noise) and share the mini-batches. Variants,
timed interleaved in one run:

* ``sequential``: one compiled single-run step, called k times per round (the baseline);
* ``vmap``: ``jax.vmap`` of the step over the stacked states, one call. Per-run weights turn
  every dense layer into a batched matmul, and every convolution after the first into a grouped
  convolution (``feature_group_count = k``);
* ``lax.map``: the k steps one after another inside one program (no batching; saves the
  per-call dispatch only);
* ``unrolled``: the k steps written out one after another in one program (a Python loop): no
  batching and no loop, so XLA may run independent runs side by side on idle cores or SMs;
* ``vmap+im2col`` (conv nets): ``vmap`` with each convolution written as patches @ kernel, so
  that the run axis becomes the batch axis of a batched matmul instead of a feature group.

``speedup`` = time(sequential) / time(variant): the throughput of k runs in one jit relative to
running them in sequence.

Example, from the repository root::

  python -m benchmarks.multi_run --model mlp --batch 128 --steps 20 --runs 8 --repeats 5
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from benchmarks import harness, programs, workloads


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def gradient_flops(loss_fn, params, batch_stats, batches) -> float:
  """FLOPs of one gradient evaluation on one mini-batch, from XLA's cost analysis.

  An Entropy-SGD step does L of them (its element-wise chain updates are negligible); the step's
  own cost analysis would count a rolled loop's body once, not L times.
  """
  batch = jax.tree.map(lambda b: b[0], batches)
  grad = jax.jit(jax.grad(lambda p: loss_fn(p, batch_stats, batch, jax.random.key(0))[0]))
  return float(grad.lower(params).compile().cost_analysis()["flops"])


def matmul_gflops(repeats: int = 7) -> float:
  """This device's float32 GEMM throughput: the fastest of ``repeats`` calls (what the device
  can do, not its average under a shared machine's load).

  No formulation of k runs can go faster than the device's arithmetic throughput, so
  GEMM GFLOP/s divided by what the sequential runs reach bounds the speedup any batching of
  them can give.
  """
  n = 2048 if jax.default_backend() == "cpu" else 8192
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  jax.block_until_ready(matmul(a))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a))
    times.append(time.perf_counter() - start)
  return 2 * n**3 / min(times) / 1e9


def multi_run_steps(single: Callable, runs: int) -> dict[str, Callable]:
  """The k-runs-in-one-program forms of ``single(params, batch_stats, opt_state, key, batches)``.

  Each takes the k runs' states stacked on axis 0 and the shared mini-batches, and returns the
  stacked results of one step of every run.
  """
  return {
    "vmap": jax.vmap(single, in_axes=(0, 0, 0, 0, None)),
    "lax.map": lambda p, bs, o, k, b: jax.lax.map(lambda s: single(*s, b), (p, bs, o, k)),
    "unrolled": lambda p, bs, o, k, b: _stack(
      [single(*jax.tree.map(lambda t: t[i], (p, bs, o, k)), b) for i in range(runs)]
    ),
  }


def run_model(model: str, runs: int, args) -> dict:
  spec = workloads.make_model(model)
  batches = workloads.make_batches(spec, args.steps, args.batch)
  inits = [workloads.init_model(spec, seed=i) for i in range(runs)]
  txs = [programs.entropy_tx(args.steps, key=i) for i in range(runs)]  # per-run noise keys
  states = [
    (p, bs, tx.init(p), jax.random.key(i)) for i, ((p, bs), tx) in enumerate(zip(inits, txs))
  ]
  stacked = _stack([s[:3] for s in states])
  keys = jnp.stack([s[3] for s in states])
  tx = txs[0]  # the update does not depend on the init key
  is_conv = model != "mlp"
  print(
    f"\n== {model} ({spec.source}): {runs} runs of {workloads.num_params(inits[0][0]):,} "
    f"parameters, batch {args.batch}, L = {args.steps}",
    flush=True,
  )

  fns = {}
  single = programs.build_entropy_step(workloads.make_loss(spec), tx, jit=False)
  seq_runners = [
    programs.Runner(jax.jit(single, donate_argnums=(0, 1, 2, 3)), *s[:3], batches, key=s[3])
    for s in states
  ]
  compiled = None
  for r in seq_runners:  # one executable shared by the k runs
    if compiled is None:
      r.compile()
      compiled, compile_s = r.compiled, r.compile_s
    r.compiled, r.compile_s = compiled, compile_s

  def sequential():
    for r in seq_runners:
      r()

  fns["sequential"] = sequential
  compile_times = {"sequential": compile_s}
  variants = multi_run_steps(single, runs)
  if is_conv:
    im2col = programs.build_entropy_step(workloads.make_loss(spec, "im2col"), tx, jit=False)
    variants["vmap+im2col"] = multi_run_steps(im2col, runs)["vmap"]
  for name, fn in variants.items():
    if args.variants and name not in args.variants:
      continue
    runner = programs.Runner(jax.jit(fn, donate_argnums=(0, 1, 2, 3)), *stacked, batches, key=keys)
    print(f"compiling {name} ...", end=" ", flush=True)
    print(f"{runner.compile():.1f} s", flush=True)
    fns[name], compile_times[name] = runner, runner.compile_s

  start = time.perf_counter()
  times = harness.time_interleaved(fns, repeats=args.repeats, warmup=args.warmup)
  print(
    f"timed {args.repeats} interleaved rounds in {time.perf_counter() - start:.0f} s; "
    f"speedup = median(sequential) / median(variant), {runs} runs per call"
  )
  rows = [
    {
      **harness.timing_row(name, t),
      "runs": runs,
      "compile_s": compile_times[name],
      "ms_per_run": 1e3 * harness.median(t) / runs,
      "speedup": harness.median(times["sequential"]) / harness.median(t),
      "paired_speedup": 1 / harness.paired_ratio(times, name, "sequential"),
    }
    for name, t in times.items()
  ]
  harness.print_table(
    rows, ["variant", "runs", "compile_s", "median_ms", "ms_per_run", "speedup", "paired_speedup"]
  )
  # How much arithmetic throughput the sequential runs leave unused: the ceiling for batching.
  step_flops = args.steps * gradient_flops(workloads.make_loss(spec), *inits[0], batches)
  sequential_gflops = runs * step_flops / harness.median(times["sequential"]) / 1e9
  gemm_gflops = matmul_gflops()
  bound = {
    "step_gflop": step_flops / 1e9,
    "sequential_gflops": sequential_gflops,
    "gemm_gflops": gemm_gflops,
    "max_speedup": gemm_gflops / sequential_gflops,
  }
  print(
    f"one step = {bound['step_gflop']:.2f} GFLOP; the sequential runs reach "
    f"{sequential_gflops:.1f} GFLOP/s, {100 / bound['max_speedup']:.0f}% of this device's "
    f"float32 GEMM throughput ({gemm_gflops:.1f} GFLOP/s): no formulation of the {runs} runs "
    f"can beat sequential by more than {bound['max_speedup']:.2f}x"
  )
  return harness.model_record(model, spec, args, runs=runs, rows=rows, compute_bound=bound)


def add_args(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--runs", type=int, nargs="+", default=[8], help="k, runs per jit")
  parser.add_argument(
    "--variants",
    nargs="*",
    default=None,
    help="subset of vmap, lax.map, unrolled, vmap+im2col (default: all)",
  )
  harness.add_timing_args(parser)


def main(argv=None):
  return harness.benchmark_main(
    "benchmarks.multi_run",
    __doc__,
    add_args,
    lambda model, args: [run_model(model, k, args) for k in args.runs],
    argv,
  )


if __name__ == "__main__":
  main()
