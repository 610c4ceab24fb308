"""One effective epoch on real data: the harness's steps against standalone jitted steps and eager
PyTorch, in images per second.

    python -m benchmarks.epoch_speed                        # mnistfc and LeNet-BN, SGD, batch 128
    python -m benchmarks.epoch_speed --optimizers sgd entropy-sgd --data-dir DIR

One effective epoch of the 60,000 training images at batch 128 is 468 gradient evaluations
(SGD: 468 steps; Entropy-SGD with L = 20: 23 outer steps, 460 evaluations). It is timed in
``--chunks`` equal parts, the variants interleaved part by part (round robin) so that a change of
the machine's load spreads over all of them, after one untimed part each (compilation):

* harness: ``experiments.trainer.step_runners``' call as the training loop makes it (mini-batches
  gathered on the device from the whole data set, the runner that ``auto`` picks), with the
  recipe of ``experiments/configs/fashion_mnist.py`` (``sgd-lua``'s SGD step, or
  ``entropy-sgd``);
* standalone: ``jax.jit(experiments.trainer.steps.train_step)`` called once per step on
  mini-batches gathered beforehand, synchronised once per part;
* torch: the same model in eager PyTorch (``benchmarks/torch_models.py``) with
  ``torch.optim.SGD`` (Nesterov 0.9) or ``benchmarks.torch_reference.TorchEntropySGD`` with the
  recipe's settings, on the standalone's mini-batches.

It prints images per second (median over the parts), the epoch's seconds (sum of the parts;
extrapolated when ``--epoch-fraction`` times a part of the epoch) and
the ratios harness / standalone (target <= 1.15) and torch / standalone, in seconds per image.
The images are Fashion-MNIST's (``--data-dir``, default the Debian package's directory), else
random images of the same shape (said in the output).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from benchmarks.torch_models import tnn, torch, torch_model
from benchmarks.torch_reference import TorchEntropySGD
from experiments.configs import fashion_mnist as presets
from experiments.data import datasets, idx
from experiments.launch import components
from experiments.optimizers import registry as optimizers
from experiments.trainer import step_runners, steps

RECIPES = {"sgd": "sgd-lua", "entropy-sgd": "entropy-sgd"}
DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"


def load_images(data_dir: str | None) -> tuple[np.ndarray, np.ndarray, str]:
  """The training images (float32 / 255, NHWC) and labels, and what they are."""
  if data_dir and idx.has_files(data_dir):
    x, y, _, _ = idx.load_directory(data_dir)
    return (x.astype(np.float32) / 255.0)[..., None], y, f"Fashion-MNIST from {data_dir}"
  ds = datasets.synthetic_like("mnist", 60_000, 16)
  return ds.train_x, ds.train_y, "random images of Fashion-MNIST's shape (no --data-dir)"


class Torch:
  """The eager PyTorch variant: ``run(batches)`` takes one part's mini-batches (steps, L, ...)."""

  def __init__(self, model: str, config, threads: int):
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    self.model = torch_model(model).train()
    params = self.model.parameters()
    if config.langevin_steps > 1:
      self.opt = TorchEntropySGD(
        params,
        lr=config.learning_rate,
        num_langevin_steps=config.langevin_steps,
        gamma0=config.gamma0,
        gamma1=config.gamma1,
        langevin_lr=config.langevin_lr,
        noise=config.noise,
        alpha=config.alpha,
        momentum=config.momentum,
        nesterov=config.nesterov,
        langevin_momentum=config.langevin_momentum,
      )
    else:
      self.opt = torch.optim.SGD(
        params, lr=config.learning_rate, momentum=config.momentum, nesterov=config.nesterov
      )

  def _loss(self, x, y):
    return tnn.functional.cross_entropy(self.model(x), y)

  def run(self, xs, ys):
    loss = None
    for x_step, y_step in zip(xs, ys):  # x_step: (L, B, C, H, W)
      if isinstance(self.opt, TorchEntropySGD):

        def closure(k, x_step=x_step, y_step=y_step):
          self.opt_zero()
          loss = self._loss(x_step[k], y_step[k])
          loss.backward()
          return loss

        loss = self.opt.step(closure)
      else:
        self.opt.zero_grad(set_to_none=True)
        loss = self._loss(x_step[0], y_step[0])
        loss.backward()
        self.opt.step()
    return float(loss.detach())

  def opt_zero(self):
    for p in self.model.parameters():
      p.grad = None


def measure(model_name: str, optimizer: str, args, images, labels) -> dict:
  config = presets.PRESETS[RECIPES[optimizer]].config.replace(
    model=model_name, batch_size=args.batch
  )
  L, n = config.langevin_steps, len(images)
  outer_per_epoch = (n // args.batch) // L
  part = round(args.epoch_fraction * outer_per_epoch) // args.chunks  # outer steps per part
  if part < 1:
    raise SystemExit(
      f"{model_name} {optimizer}: {args.epoch_fraction:g} of an epoch is {outer_per_epoch} "
      f"outer steps, fewer than --chunks {args.chunks}: use more images or fewer chunks."
    )
  model = components.make_model(config, 10)
  make_tx = optimizers.optimizer_factory(config, n)
  task = components.make_task(config, model)
  train = (jax.device_put(images), jax.device_put(labels))
  runner = step_runners.choose_runner("auto", model, train[0][:1], task)
  fns = step_runners.compiled_functions(
    config, model, make_tx, task, mesh=None, num_examples=n, eval_batch_size=1000, runner=runner
  )
  states = {v: fns.init(jnp.uint32(0), train[0][:1]) for v in ("harness", "standalone")}
  step = jax.jit(functools.partial(steps.train_step, task=task), donate_argnums=0)
  # The standalone's and torch's mini-batches: a permutation, repeated for the untimed part.
  order = np.resize(
    np.random.default_rng(0).permutation(n), (args.chunks + 1) * part * L * args.batch
  )
  shape = (args.chunks + 1, part, L, args.batch)
  batches_x = jax.device_put(images[order].reshape(*shape, *images.shape[1:]))
  batches_y = jax.device_put(labels[order].reshape(shape))
  parts = [
    [(batches_x[c, s], batches_y[c, s]) for s in range(part)] for c in range(args.chunks + 1)
  ]

  def harness_part(c):
    states["harness"], metrics = fns.call(states["harness"], train, part)
    return jax.block_until_ready(metrics)

  def standalone_part(c):
    state = states["standalone"]
    for xs, ys in parts[c]:
      state, metrics = step(state, xs, ys)
    states["standalone"] = state
    return jax.block_until_ready(metrics)

  variants = {"harness": harness_part, "standalone": standalone_part}
  if torch is not None:
    reference = Torch(model_name, config, args.torch_threads or os.cpu_count())
    nchw = np.moveaxis(np.asarray(batches_x), -1, -3)
    torch_x = torch.from_numpy(np.array(nchw, copy=True))  # writable, contiguous
    torch_y = torch.from_numpy(np.asarray(batches_y).astype(np.int64))
    variants["torch"] = lambda c: reference.run(torch_x[c], torch_y[c])
  seconds = {v: [] for v in variants}
  for c in range(args.chunks + 1):  # part 0: compilation and warm-up, untimed
    for name, fn in variants.items():
      start = time.perf_counter()
      fn(c)
      if c:
        seconds[name].append(time.perf_counter() - start)
  images_per_part = part * L * args.batch
  rows = []
  for name, times in seconds.items():
    rows.append(
      {
        "model": model_name,
        "optimizer": optimizer,
        "variant": name + (f" ({runner})" if name == "harness" else ""),
        "images_per_s": images_per_part / harness.median(times),
        "epoch_s": sum(times) * (n // args.batch) / (args.chunks * part * L),
        "ratio_to_standalone": harness.paired_ratio(seconds, name, "standalone"),
        "times_s": times,
      }
    )
  harness.print_table(
    rows, ["model", "optimizer", "variant", "images_per_s", "epoch_s", "ratio_to_standalone"]
  )
  return {"model": model_name, "optimizer": optimizer, "batch": args.batch, "rows": rows}


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.epoch_speed", description=__doc__.splitlines()[0]
  )
  parser.add_argument("--models", nargs="+", default=["mnistfc", "lenet_bn"])
  parser.add_argument("--optimizers", nargs="+", default=["sgd"], choices=list(RECIPES))
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--chunks", type=int, default=4, help="timed parts of the epoch")
  parser.add_argument(
    "--epoch-fraction",
    type=float,
    default=1.0,
    help="time this fraction of the effective epoch (the epoch's seconds are extrapolated)",
  )
  parser.add_argument("--data-dir", default=DEFAULT_DATA, help="the four IDX files")
  parser.add_argument("--num-train", type=int, default=0, help="first N images (0: all)")
  parser.add_argument("--torch-threads", type=int, default=None, help="default: all cores")
  parser.add_argument("--json", default=None, help="write the numbers and environment here")
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parser.parse_args(argv)
  env = harness.environment("benchmarks.epoch_speed", argv)
  images, labels, what = load_images(args.data_dir)
  if args.num_train:
    images, labels = images[: args.num_train], labels[: args.num_train]
  print(
    f"{what}: {len(images)} images; jax {jax.__version__} on {jax.devices()[0].platform}, "
    f"torch {torch.__version__ if torch is not None else 'absent'}; load average "
    f"{harness.load_average()}; medians over {args.chunks} parts of {args.epoch_fraction:g} "
    "effective epoch"
  )
  results = [
    measure(model, optimizer, args, images, labels)
    for model in args.models
    for optimizer in args.optimizers
  ]
  print(f"load average at the end: {harness.load_average()}")
  harness.write_json(args.json, dict(env, data=what), results)
  return results


if __name__ == "__main__":
  main()
