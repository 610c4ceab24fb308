"""A Flax-example-shaped port with the library's defaults: fixed gamma 0.03 against auto_scoping.

The model is flax's Linen ``examples/mnist`` CNN (conv 32, conv 64, 3x3, average pooling,
dense 256, dense 10), the loop its shape (shuffle every epoch, SGD with momentum 0.9, lr 0.1),
ported to Entropy-SGD as a user would: ``entropy_sgd(0.1, momentum=0.9)`` with every other
setting the library's default (L = 20, gamma 0.03, Langevin step 0.1, noise 1e-4), against the
same with ``gamma=auto_scoping()`` (its defaults too), and flax's own SGD. The data are real
handwritten digits that ship with scikit-learn (1797 images of 8x8 pixels, 1437 train / 360
test): flax's MNIST cannot be downloaded here. Every optimizer gets the same effective epochs
(L gradient evaluations per Entropy-SGD update); seeds run one after another.

Printed: test accuracy (mean and std over seeds) and, for Entropy-SGD, the ratio
norm(gamma (x - mu)) / norm(grad f) and gamma at the first and last update.

    python -m benchmarks.auto_scope_port --effective-epochs 40 --seeds 3
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import entropy_optax
from benchmarks import harness


class CNN(nn.Module):
  """flax examples/mnist's CNN."""

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(features=32, kernel_size=(3, 3))(x)
    x = nn.avg_pool(nn.relu(x), window_shape=(2, 2), strides=(2, 2))
    x = nn.Conv(features=64, kernel_size=(3, 3))(x)
    x = nn.avg_pool(nn.relu(x), window_shape=(2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(features=256)(x))
    return nn.Dense(features=10)(x)


def digits(test_fraction: float = 0.2, seed: int = 0):
  """scikit-learn's 8x8 digits in [0, 1], shuffled once and split."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

  data = load_digits()
  order = np.random.default_rng(seed).permutation(len(data.target))
  x = (data.images[order] / 16.0).astype(np.float32)[..., None]
  y = data.target[order].astype(np.int32)
  n_test = int(len(y) * test_fraction)
  return x[n_test:], y[n_test:], x[:n_test], y[:n_test]


def make_optimizer(name: str, learning_rate: float, key):
  if name == "sgd":
    return optax.sgd(learning_rate, momentum=0.9)
  if name == "entropy-sgd":
    return entropy_optax.entropy_sgd(learning_rate, momentum=0.9, key=key)
  if name == "entropy-sgd-auto":
    scope = entropy_optax.auto_scoping()
    return entropy_optax.entropy_sgd(learning_rate, momentum=0.9, gamma=scope, key=key)
  raise ValueError(f"unknown optimizer {name!r}")


def train(name: str, data, *, effective_epochs: float, batch_size: int, lr: float, seeds: int):
  """Test accuracy per seed, and per seed the Langevin stats of the first and last update."""
  train_x, train_y, test_x, test_y = (jnp.asarray(a) for a in data)
  model = CNN()
  num_langevin = 1 if name == "sgd" else 20
  steps_per_epoch = train_x.shape[0] // batch_size
  num_updates = int(effective_epochs * steps_per_epoch / num_langevin)

  def loss(params, x, y):
    logits = model.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def run(seed):
    init_key, data_key, noise_key = jax.random.split(jax.random.key(seed), 3)
    params = model.init(init_key, train_x[:1])["params"]
    tx = make_optimizer(name, lr, noise_key)
    state = tx.init(params)

    def batches(key):
      """num_langevin mini-batches of a permutation (a fresh one per update: each epoch
      reshuffled, as flax's example; with L = 20 one update spans about half an epoch)."""
      idx = jax.random.permutation(key, train_x.shape[0])[: num_langevin * batch_size]
      idx = idx.reshape(num_langevin, batch_size)
      return train_x[idx], train_y[idx]

    def step(carry, key):
      params, state = carry
      xs, ys = batches(key)
      grads = jax.grad(loss)(params, xs[0], ys[0])
      if num_langevin == 1:
        updates, state = tx.update(grads, state, params)
        stats = jnp.zeros(2)
      else:
        grad_fn = lambda p, k: jax.grad(loss)(p, xs[k], ys[k])
        updates, state = tx.update(grads, state, params, grad_fn=grad_fn)
        s = optax.tree.get(state, "langevin_stats")
        stats = jnp.stack([s.entropy_grad_norm / s.grad_norm, s.langevin_gamma])
      return (optax.apply_updates(params, updates), state), stats

    (params, _), stats = jax.lax.scan(
      step, (params, state), jax.random.split(data_key, num_updates)
    )
    logits = model.apply({"params": params}, test_x)
    return jnp.mean(jnp.argmax(logits, -1) == test_y), stats[jnp.array([0, -1])]

  start = time.perf_counter()
  # Seeds one after another, one compilation: vmapping over the weights would turn the
  # convolutions into grouped ones, which XLA:CPU runs many times slower.
  program = jax.jit(run)
  results = [jax.device_get(program(jnp.int32(seed))) for seed in range(seeds)]
  accuracy = np.array([a for a, _ in results])
  stats = np.stack([s for _, s in results])
  return accuracy, stats, num_updates, time.perf_counter() - start


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--effective-epochs", type=float, default=40.0)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--learning-rate", type=float, default=0.1)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--optimizers", nargs="+", default=["sgd", "entropy-sgd", "entropy-sgd-auto"])
  args = parser.parse_args(argv)
  data = digits()
  print(f"load average at start: {harness.load_average()}", flush=True)
  for name in args.optimizers:
    accuracy, stats, updates, seconds = train(
      name,
      data,
      effective_epochs=args.effective_epochs,
      batch_size=args.batch_size,
      lr=args.learning_rate,
      seeds=args.seeds,
    )
    line = (
      f"{name}: test accuracy {100 * accuracy.mean():.1f} ± {100 * accuracy.std():.1f}% "
      f"({args.seeds} seeds, {updates} updates, {args.effective_epochs:g} effective epochs, "
      f"{seconds:.0f} s; seeds {np.round(100 * accuracy, 1).tolist()})"
    )
    if name != "sgd":
      (r0, g0), (r1, g1) = stats.mean(0)
      line += f"; ratio first {r0:.4f} last {r1:.4f}, gamma first {g0:.3f} last {g1:.3f}"
    print(line, flush=True)
  print(f"load average at end: {harness.load_average()}")


if __name__ == "__main__":
  main()
