"""One Entropy-SGD step against L plain SGD steps, same model and batches (issues 2 and 7.1).

Both programs evaluate L gradients (see ``common.py``), so the ratio is the cost of the Langevin
chain itself: the noise draw, the element-wise chain updates and the diagnostics. Printed side by
side in one run, calls interleaved:

* per unrolling (``auto`` = the core's default: full on CPU, rolled on GPU; ``rolled`` = 1;
  ``full`` = L), an SGD baseline with the same unrolling, and
* per noise sampler: ``irwin_hall`` (the core's default), ``gaussian`` (threefry
  ``jax.random.normal``), ``none`` (noise = 0: no draw at all, the floor).

A second table times the noise draw alone over the model's parameters.

Example (the figures in RESULTS.md)::

  python benchmarks/step_cost.py --model mlp --batch 128 --steps 20 --repeats 15
  python benchmarks/step_cost.py --model allcnn_bn --batch 128 --steps 20 --repeats 3 \
      --unroll auto --samplers irwin_hall
"""

from __future__ import annotations

import argparse
import time

import jax

from entropy_optax import _noise

try:
  from benchmarks import common
except ImportError:  # run as a script: python benchmarks/step_cost.py
  import common  # type: ignore[no-redef]


def time_noise_draws(params, repeats: int) -> list[dict]:
  """Milliseconds to draw unit noise shaped like ``params`` with each sampler."""
  key = jax.random.PRNGKey(0)
  draws = {}
  for name in _noise.NOISE_SAMPLERS:
    draws[name] = jax.jit(lambda key, s=name: _noise.tree_noise(key, params, s)).lower(
        key).compile()
  fns = {name: (lambda f=f: jax.block_until_ready(f(key))) for name, f in draws.items()}
  times = common.time_interleaved(fns, repeats=max(repeats, 20), warmup=2)
  base = common.median(times["gaussian"])
  return [{"sampler": name, "draw_ms": 1e3 * common.median(t),
           "vs_gaussian": common.median(t) / base} for name, t in times.items()]


def run_model(model: str, args) -> dict:
  spec = common.make_model(model)
  params, batch_stats = common.init_model(spec)
  batches = common.make_batches(spec, args.steps, args.batch)
  loss_fn = common.make_loss(spec)
  print(f"\n== {model} ({spec.source}): {common.num_params(params):,} parameters, "
        f"batch {args.batch}, L = {args.steps}, backend {jax.default_backend()}", flush=True)

  runners, meta = {}, {}
  for unroll_name in args.unroll:
    unroll = common.resolve_unroll(unroll_name, args.steps)
    sgd = common.sgd_tx()
    name = f"sgd x{args.steps} [{unroll_name}]"
    runners[name] = common.Runner(common.build_sgd_steps(loss_fn, sgd, unroll), params,
                                  batch_stats, sgd.init(params), batches)
    meta[name] = dict(kind="sgd", sampler="-", unroll=unroll_name, unroll_value=unroll,
                      baseline=name)
    for sampler in args.samplers:
      noise = 0.0 if sampler == "none" else 1e-4
      noise_sampler = "gaussian" if sampler == "gaussian" else "irwin_hall"
      tx = common.entropy_tx(args.steps, noise=noise, noise_sampler=noise_sampler, unroll=unroll)
      ename = f"entropy [{sampler}, {unroll_name}]"
      runners[ename] = common.Runner(common.build_entropy_step(loss_fn, tx), params, batch_stats,
                                     tx.init(params), batches)
      meta[ename] = dict(kind="entropy", sampler=sampler, unroll=unroll_name,
                         unroll_value=unroll, baseline=name)

  for name, runner in runners.items():
    print(f"compiling {name} ...", end=" ", flush=True)
    print(f"{runner.compile():.1f} s", flush=True)
  start = time.perf_counter()
  times = common.time_interleaved(runners, repeats=args.repeats, warmup=args.warmup)
  rows = []
  for name, t in times.items():
    m = meta[name]
    rows.append({
        "variant": name, "unroll": m["unroll_value"], "compile_s": runners[name].compile_s,
        "median_ms": 1e3 * common.median(t), "min_ms": 1e3 * min(t),
        "ratio": common.median(t) / common.median(times[m["baseline"]]),
        "paired_ratio": common.paired_ratio(times, name, m["baseline"]),
        "min_ratio": min(t) / min(times[m["baseline"]]),
        **{k: m[k] for k in ("kind", "sampler")}, "times_ms": [1e3 * x for x in t],
    })
  print(f"timed {args.repeats} interleaved rounds in {time.perf_counter() - start:.0f} s; "
        f"ratio = median(variant) / median(SGD x L, same unrolling); paired_ratio = median "
        "over rounds of the same-round ratio; min_ratio = fastest / fastest (least disturbed)")
  common.print_table(rows, ["variant", "unroll", "compile_s", "median_ms", "min_ms", "ratio",
                            "paired_ratio", "min_ratio"])
  draws = time_noise_draws(params, args.repeats) if args.draws else []
  if draws:
    print(f"noise draw alone, {common.num_params(params):,} parameters:")
    common.print_table(draws)
  return {"model": model, "model_source": spec.source, "num_params": common.num_params(params),
          "batch": args.batch, "steps": args.steps, "rows": rows, "noise_draws": draws}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  common.add_workload_args(parser)
  parser.add_argument(
      "--samplers", nargs="+", default=["irwin_hall", "gaussian", "none"],
      choices=["irwin_hall", "gaussian", "none"],
      help="irwin_hall: the core's default (counter-hash Irwin-Hall); gaussian: "
      "jax.random.normal; none: noise = 0, the floor")
  parser.add_argument("--unroll", nargs="+", default=["auto", "rolled"],
                      help="auto (core default), full, rolled, or an int")
  parser.add_argument("--no-draws", dest="draws", action="store_false",
                      help="skip the noise-draw micro-benchmark")
  common.add_common_args(parser)
  args = parser.parse_args(argv)
  env = common.environment()
  print({k: env[k] for k in ("device", "backend", "jax", "optax", "flax", "load_average_start")})
  results = [run_model(model, args) for model in args.model]
  common.write_json(args.json, env, results)
  return results


if __name__ == "__main__":
  main()
