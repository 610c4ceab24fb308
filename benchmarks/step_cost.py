"""One Entropy-SGD step against L plain SGD steps, same model and batches.

Targets: an Entropy-SGD step costs <= 1.5x L SGD steps for the 666k-parameter MLP and <= 1.15x
for a conv net on CPU, and <= 1.03x for All-CNN-BN at batch 128, L = 20 on an H100.

Both programs evaluate L gradients (see ``programs.py``), so the ratio is the cost of the Langevin
chain itself: the noise draw, the element-wise chain updates and the diagnostics. Printed side by
side in one run, calls interleaved:

* per unrolling (``auto`` = the core's default: full on CPU, rolled on GPU; ``rolled`` = 1;
  ``full`` = L), an SGD baseline with the same unrolling, and
* per noise sampler: ``irwin_hall`` (the core's default), ``gaussian`` (threefry
  ``jax.random.normal``), ``none`` (noise = 0: no draw at all, the floor).

A second table times each noise sampler in one Langevin step with a zero gradient (the public
``entropy_optax.langevin_mean`` with ``num_steps=1``): the noise draw, fused with the chain's
element-wise update and its diagnostics.

Example (the figures in RESULTS.md), from the repository root::

  python -m benchmarks.step_cost --model mlp --batch 128 --steps 20 --repeats 15
  python -m benchmarks.step_cost --model allcnn_bn --batch 128 --steps 20 --repeats 3 \
      --unroll auto --samplers irwin_hall
"""

from __future__ import annotations

import argparse
import time

import jax

import entropy_optax
from benchmarks import harness, programs, workloads

# The values of the public ``noise_distribution`` argument of entropy_optax's optimizers.
NOISE_SAMPLERS = ("irwin_hall", "gaussian")


def time_noise_draws(params, repeats: int) -> list[dict]:
  """Milliseconds of one zero-gradient Langevin step shaped like ``params``, per sampler."""
  key = jax.random.key(0)
  zeros = jax.tree.map(jax.numpy.zeros_like, params)

  def one_step(key, sampler):
    return entropy_optax.langevin_mean(
      lambda x, k: zeros,
      params,
      key,
      gamma=1.0,
      num_steps=1,
      langevin_lr=1.0,
      noise=1.0,
      alpha=1.0,
      grad_at_params=zeros,
      noise_distribution=sampler,
      unroll=1,
    )

  steps = {
    name: jax.jit(one_step, static_argnums=1).lower(key, name).compile() for name in NOISE_SAMPLERS
  }
  fns = {name: (lambda f=f: jax.block_until_ready(f(key))) for name, f in steps.items()}
  times = harness.time_interleaved(fns, repeats=max(repeats, 20), warmup=2)
  base = harness.median(times["gaussian"])
  return [
    {"sampler": name, "step_ms": 1e3 * harness.median(t), "vs_gaussian": harness.median(t) / base}
    for name, t in times.items()
  ]


def run_model(model: str, args) -> dict:
  spec = workloads.make_model(model)
  params, batch_stats = workloads.init_model(spec)
  batches = workloads.make_batches(spec, args.steps, args.batch)
  loss_fn = workloads.make_loss(spec)
  print(
    f"\n== {model} ({spec.source}): {workloads.num_params(params):,} parameters, "
    f"batch {args.batch}, L = {args.steps}, backend {jax.default_backend()}",
    flush=True,
  )

  runners, meta = {}, {}
  for unroll_name in args.unroll:
    unroll = programs.resolve_unroll(unroll_name, args.steps)
    sgd = programs.sgd_tx()
    name = f"sgd x{args.steps} [{unroll_name}]"
    sgd_steps = programs.build_sgd_steps(
      loss_fn, sgd, programs.baseline_unroll(unroll_name, spec, args.steps)
    )
    runners[name] = programs.Runner(sgd_steps, params, batch_stats, sgd.init(params), batches)
    meta[name] = dict(
      kind="sgd", sampler="-", unroll=unroll_name, unroll_value=unroll, baseline=name
    )
    for sampler in args.samplers:
      noise = 0.0 if sampler == "none" else 1e-4
      distribution = "gaussian" if sampler == "gaussian" else "irwin_hall"
      tx = programs.entropy_tx(
        args.steps, noise=noise, noise_distribution=distribution, unroll=unroll
      )
      ename = f"entropy [{sampler}, {unroll_name}]"
      runners[ename] = programs.Runner(
        programs.build_entropy_step(loss_fn, tx), params, batch_stats, tx.init(params), batches
      )
      meta[ename] = dict(
        kind="entropy", sampler=sampler, unroll=unroll_name, unroll_value=unroll, baseline=name
      )

  for name, runner in runners.items():
    print(f"compiling {name} ...", end=" ", flush=True)
    print(f"{runner.compile():.1f} s", flush=True)
  start = time.perf_counter()
  times = harness.time_interleaved(runners, repeats=args.repeats, warmup=args.warmup)
  rows = []
  for name, t in times.items():
    m = meta[name]
    rows.append(
      {
        "variant": name,
        "unroll": m["unroll_value"],
        "compile_s": runners[name].compile_s,
        "ratio": harness.median(t) / harness.median(times[m["baseline"]]),
        "paired_ratio": harness.paired_ratio(times, name, m["baseline"]),
        "min_ratio": min(t) / min(times[m["baseline"]]),
        **{k: m[k] for k in ("kind", "sampler")},
        **harness.timing_row(name, t),
      }
    )
  print(
    f"timed {args.repeats} interleaved rounds in {time.perf_counter() - start:.0f} s; "
    f"ratio = median(variant) / median(SGD x L, same unrolling); paired_ratio = median "
    "over rounds of the same-round ratio; min_ratio = fastest / fastest (least disturbed)"
  )
  harness.print_table(
    rows,
    ["variant", "unroll", "compile_s", "median_ms", "min_ms", "ratio", "paired_ratio", "min_ratio"],
  )
  draws = time_noise_draws(params, args.repeats) if args.draws else []
  if draws:
    print(f"one zero-gradient Langevin step, {workloads.num_params(params):,} parameters:")
    harness.print_table(draws)
  return harness.model_record(
    model, spec, args, num_params=workloads.num_params(params), rows=rows, noise_draws=draws
  )


def add_args(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    "--samplers",
    nargs="+",
    default=["irwin_hall", "gaussian", "none"],
    choices=["irwin_hall", "gaussian", "none"],
    help="irwin_hall: the core's default (counter-hash Irwin-Hall); gaussian: "
    "jax.random.normal; none: noise = 0, the floor",
  )
  harness.add_unroll_arg(parser, several=True)
  parser.add_argument(
    "--no-draws", dest="draws", action="store_false", help="skip the noise-sampler micro-benchmark"
  )
  harness.add_timing_args(parser)


def main(argv=None):
  return harness.benchmark_main(
    "benchmarks.step_cost",
    __doc__,
    add_args,
    run_model,
    argv,
    show=("device", "backend", "jax", "optax", "flax", "load_average_start"),
  )


if __name__ == "__main__":
  main()
