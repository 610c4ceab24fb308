"""Outer steps inside the training loop vs the same steps as a standalone jitted step.

    python -m benchmarks.loop_speed                  # LeNet-BN b32, All-CNN-BN b8; SGD, Entropy-SGD
    python -m benchmarks.loop_speed --scan               # also the lax.scan runner for every model

For each model and optimizer it times, interleaved in one process, k outer steps:

* loop: ``experiments.trainer.step_runners``'s call, as ``experiments.trainer.loop.train`` runs it
  (the
  runner ``auto`` picks: on CPU one jitted step dispatched per step for conv nets), data
  gathered on the device from the whole (synthetic) data set;
* standalone: ``jax.jit(experiments.trainer.steps.train_step)`` called k times from Python on
  mini-batches gathered beforehand, synchronised once at the end;
* scan (LeNet-BN, or every model with ``--scan``): the same call with the ``scan`` runner.

and prints the medians and the ratio loop / standalone (target <= 1.15). Compilation is
excluded (one warm-up call each). Numbers depend on the machine's load: quote the medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import entropy_optax
from experiments.data import datasets as data
from experiments.models import feedforward as models
from experiments.run.schema import RunConfig
from experiments.trainer import step_runners, steps, tasks


def _tx(optimizer: str, langevin_steps: int):

  def make(key):
    if optimizer == "sgd":
      return optax.sgd(0.05, momentum=0.9, nesterov=True)
    return entropy_optax.entropy_sgd(
      0.5,
      num_langevin_steps=langevin_steps,
      gamma=0.03,
      langevin_lr=0.1,
      langevin_momentum=0.9,
      key=key,
    )

  return make


def _timed(fn) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def measure(
  model_name: str,
  batch: int,
  optimizer: str,
  langevin_steps: int,
  num_steps: int,
  repeats: int,
  with_scan: bool,
) -> dict[str, float]:
  """Median seconds of ``num_steps`` outer steps per variant."""
  dataset = {"lenet_bn": "mnist", "allcnn_bn": "cifar10"}[model_name]
  ds = data.synthetic_like(dataset, 8 * batch * langevin_steps, 16)
  model = models.create_model(model_name)
  make_tx = _tx(optimizer, langevin_steps)
  L = langevin_steps if optimizer != "sgd" else 1
  train = (jax.device_put(ds.train_x), jax.device_put(ds.train_y))
  runner = step_runners.choose_runner("auto", model, train[0][:1])
  variants = {"loop": runner} | ({"scan": "scan"} if with_scan and runner != "scan" else {})
  fns = {
    name: step_runners.compiled_functions(
      RunConfig(batch_size=batch, langevin_steps=L),
      model,
      make_tx,
      tasks.Task(),
      mesh=None,
      num_examples=len(ds.train_x),
      eval_batch_size=16,
      runner=r,
    )
    for name, r in variants.items()
  }
  init = fns["loop"].init
  states = {name: init(jnp.uint32(0), train[0][:1]) for name in list(variants) + ["standalone"]}
  step = jax.jit(steps.train_step, donate_argnums=0)
  xs = train[0][: L * batch].reshape(L, batch, *ds.input_shape)
  ys = train[1][: L * batch].reshape(L, batch)

  def run(name):
    if name == "standalone":
      state = states[name]
      for _ in range(num_steps):
        state, metrics = step(state, xs, ys)
      states[name] = state
      return metrics
    states[name], metrics = fns[name].call(states[name], train, num_steps)
    return metrics

  names = list(variants) + ["standalone"]
  for name in names:  # compile
    _timed(lambda: run(name))
  times = {name: [] for name in names}
  for _ in range(repeats):
    for name in names:
      times[name].append(_timed(lambda: run(name)))
  out = {name: statistics.median(t) for name, t in times.items()}
  out["runner"] = runner
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.loop_speed", description=__doc__.splitlines()[0]
  )
  parser.add_argument("--models", nargs="+", default=["lenet_bn", "allcnn_bn"])
  parser.add_argument(
    "--batch", nargs="+", type=int, default=[32, 8], help="batch size per model (default: 32 8)"
  )
  parser.add_argument("--optimizers", nargs="+", default=["sgd", "entropy-sgd"])
  parser.add_argument("--langevin-steps", type=int, default=5)
  parser.add_argument("--steps", type=int, default=5, help="outer steps per timing")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--scan", action="store_true", help="time the scan runner for every model")
  args = parser.parse_args(argv)
  print(
    f"jax {jax.__version__}, {jax.devices()[0].platform}; {args.steps} outer steps per "
    f"timing, median of {args.repeats}, L = {args.langevin_steps} for Entropy-SGD"
  )
  print(
    "| model | batch | optimizer | runner | loop (s) | standalone (s) | loop / standalone "
    "| scan (s) | scan / standalone |"
  )
  print("|---|---|---|---|---|---|---|---|---|")
  for model_name, batch in zip(args.models, args.batch):
    for optimizer in args.optimizers:
      with_scan = args.scan or model_name == "lenet_bn"
      t = measure(
        model_name, batch, optimizer, args.langevin_steps, args.steps, args.repeats, with_scan
      )
      scan = f"{t['scan']:.3f} | {t['scan'] / t['standalone']:.2f}" if "scan" in t else "not run | "
      print(
        f"| {model_name} | {batch} | {optimizer} | {t['runner']} | {t['loop']:.3f} | "
        f"{t['standalone']:.3f} | {t['loop'] / t['standalone']:.2f} | {scan} |",
        flush=True,
      )
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
