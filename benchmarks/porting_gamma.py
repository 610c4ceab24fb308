"""Choosing gamma with the diagnostics, on a real port: flax's NNX MNIST tutorial loop on MNIST-1D.

The loop is the tutorial's (an ``nnx.Optimizer``, a step-counted budget, an evaluation at the
end) ported as docs/porting.md says: L stacked mini-batches per step, the budget kept
in gradient evaluations (``train_steps // L`` steps), heavy-ball momentum kept
(``nesterov=False``). For each gamma it prints the diagnostics of ``langevin_stats`` averaged
over the last quarter of the steps (|grad f|, |gamma (x - mu)|, their ratio, the cosine, the
mean distance |x - x'|) and the final test accuracy, beside the loop's original ``optax.sgd``.

    python -m benchmarks.porting_gamma              # ~3 min on the shared 2-core CPU (load ~16)
    python -m benchmarks.porting_gamma --gammas 0.03 1 --train-steps 1000
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import entropy_optax
from entropy_optax.flax import nnx_grad_fn, nnx_update, stack_batches, take_batch
from experiments.data.datasets import load_mnist1d


class MLP(nnx.Module):
  """The MNIST-1D benchmark MLP (40 -> 100 -> 100 -> 10), in NNX."""

  def __init__(self, rngs: nnx.Rngs):
    self.linear1 = nnx.Linear(40, 100, rngs=rngs)
    self.linear2 = nnx.Linear(100, 100, rngs=rngs)
    self.linear3 = nnx.Linear(100, 10, rngs=rngs)

  def __call__(self, x):
    return self.linear3(nnx.relu(self.linear2(nnx.relu(self.linear1(x)))))


def loss_fn(model, batch):
  logits = model(batch["x"])
  return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), logits


@nnx.jit
def train_step(model, optimizer, batches):
  batch = take_batch(batches, 0)
  (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, batch)
  grad_fn = nnx_grad_fn(model, loss_fn, batches, has_aux=True)
  nnx_update(optimizer, model, grads, grad_fn=grad_fn)
  return loss


@nnx.jit
def accuracy(model, x, y):
  return jnp.mean(jnp.argmax(model(x), -1) == y)


def batches(data, batch_size: int, seed: int):
  """The tutorial's ``train_ds.repeat().shuffle().batch()``: an endless stream of batches."""
  rng = np.random.default_rng(seed)
  while True:
    perm = rng.permutation(len(data.train_x))
    for i in range(0, len(perm) - batch_size + 1, batch_size):
      idx = perm[i : i + batch_size]
      yield {"x": data.train_x[idx], "y": data.train_y[idx]}


def run(data, tx, num_langevin_steps: int, train_steps: int, batch_size: int) -> dict:
  """Trains for ``train_steps`` gradient evaluations; returns accuracy and mean diagnostics."""
  model = MLP(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  num_steps = train_steps // num_langevin_steps  # the budget in gradient evaluations
  stream = stack_batches(batches(data, batch_size, seed=0), num_langevin_steps)
  stats = []
  start = time.perf_counter()
  for step, stacked in zip(range(num_steps), stream):
    train_step(model, optimizer, stacked)
    if entropy_optax.flax.uses_local_entropy(optimizer.opt_state) and step >= 0.75 * num_steps:
      stats.append(jax.device_get(entropy_optax.flax.langevin_stats(optimizer)))
  out = {
    "test_accuracy": float(accuracy(model, data.test_x, data.test_y)),
    "seconds": time.perf_counter() - start,
  }
  if stats:
    for name in stats[0]._fields:
      out[name] = float(np.mean([getattr(s, name) for s in stats]))
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--gammas", type=float, nargs="+", default=[0.03, 0.3, 1.0, 3.0])
  parser.add_argument("--train-steps", type=int, default=2000, help="gradient evaluations")
  parser.add_argument("--langevin-steps", type=int, default=5)
  parser.add_argument("--learning-rate", type=float, default=0.1)
  parser.add_argument("--batch-size", type=int, default=100)
  args = parser.parse_args(argv)
  data = load_mnist1d()
  L = args.langevin_steps
  print(
    f"MNIST-1D MLP, {args.train_steps} gradient evaluations of batch {args.batch_size}, "
    f"learning rate {args.learning_rate}, momentum 0.9 (heavy-ball)"
  )
  print(
    "| optimizer | gamma | |grad f| | |gamma (x - mu)| | ratio | cosine | |x - x'| | test acc. |"
  )
  print("|---|---|---|---|---|---|---|---|")
  base = run(data, optax.sgd(args.learning_rate, 0.9), 1, args.train_steps, args.batch_size)
  print(f"| SGD | | | | | | | {100 * base['test_accuracy']:.1f} |")
  for gamma in args.gammas:
    tx = entropy_optax.entropy_sgd(
      args.learning_rate, momentum=0.9, nesterov=False, num_langevin_steps=L, gamma=gamma
    )
    r = run(data, tx, L, args.train_steps, args.batch_size)
    print(
      f"| Entropy-SGD L={L} | {gamma:g} | {r['grad_norm']:.3f} | {r['entropy_grad_norm']:.4f} | "
      f"{r['entropy_grad_norm'] / r['grad_norm']:.3f} | {r['cosine']:.2f} | "
      f"{r['mean_distance']:.3f} | {100 * r['test_accuracy']:.1f} |",
      flush=True,
    )


if __name__ == "__main__":
  main()
