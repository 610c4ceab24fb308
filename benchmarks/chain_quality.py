"""How good is the chain's estimate of -grad F, per gradient evaluation: SGLD against SGHMC.

For a small MLP on MNIST-1D at a fixed x (a few hundred SGD steps from initialisation), every
variant estimates -grad F(x) = gamma (x - mu) with L = 5, 10, 20 Langevin steps on fresh
mini-batches, many times (independent keys and batches, one vmapped program per variant). The
reference is one long SGLD chain on full-batch gradients at the same temperature and step size:
mu_ref is the mean of x' over the second half of ``--reference-steps`` steps (one chain;
two at the warm temperature). Printed per variant: the relative RMS error
sqrt(E |g - g_ref|^2) / |g_ref| over the repeats, its bias part |E g - g_ref| / |g_ref|, and for
SGHMC the ratio of SGLD's error to its own at the same L (> 1: SGHMC better per evaluation).

    python -m benchmarks.chain_quality      # gamma 0.03 and 1: ~1 h on the shared 2-core CPU
    python -m benchmarks.chain_quality --gammas 1.0 --repeats 32 --reference-steps 600  # 11 min

Temperatures: the paper's cold one (noise 1e-4, T = 5e-9 in this library's convention) and a
warmer one (``--warm-noise``). gamma: 0.03 (the paper's CIFAR-10 gamma0; its MNIST gamma0 = 1e-4
makes the Gibbs measure so wide that no short chain comes near its mean) and 1 (a scope whose
relaxation time, ~1 / (langevin_lr gamma) = 10 steps, the chains of L = 5..20 can cover).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax

import entropy_optax
from experiments.data import datasets

PAPER_NOISE = 1e-4


def load_data(num_train: int):
  dataset = datasets.load_mnist1d(num_train=num_train)
  return jnp.asarray(dataset.train_x), jnp.asarray(dataset.train_y)


def init_mlp(key, sizes=(40, 100, 10)):
  params = []
  for fan_in, fan_out, k in zip(sizes[:-1], sizes[1:], jax.random.split(key, len(sizes) - 1)):
    params.append(
      {"w": jax.random.normal(k, (fan_in, fan_out)) * np.sqrt(2 / fan_in), "b": jnp.zeros(fan_out)}
    )
  return params


def loss(params, x, y):
  for layer in params[:-1]:
    x = jax.nn.relu(x @ layer["w"] + layer["b"])
  logits = x @ params[-1]["w"] + params[-1]["b"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def fixed_point(train_x, train_y, steps: int, batch: int):
  """x: ``steps`` SGD steps (lr 0.1, momentum 0.9) from a seeded initialisation."""
  tx = optax.sgd(0.1, momentum=0.9)
  params = init_mlp(jax.random.key(0))

  def body(carry, key, train_x, train_y):
    params, state = carry
    idx = jax.random.randint(key, (batch,), 0, train_x.shape[0])
    grads = jax.grad(loss)(params, train_x[idx], train_y[idx])
    updates, state = tx.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), None

  keys = jax.random.split(jax.random.key(1), steps)
  run = lambda p, x, y: jax.lax.scan(lambda c, k: body(c, k, x, y), (p, tx.init(p)), keys)[0][0]
  return jax.jit(run)(params, train_x, train_y)


def reference_gradient(params, train_x, train_y, *, gamma, lr, noise, steps, chains):
  """gamma (x - mu_ref): full-batch SGLD, mu_ref the mean of x' over the second half."""
  burn_in = steps // 2

  def one_chain(key, params, train_x, train_y):
    full_grad = lambda p, k: jax.grad(loss)(p, train_x, train_y)
    # alpha = 1/(k - burn_in + 1) after burn-in is a running mean; langevin_mean's alpha is one
    # number, so run the burn-in and then average the samples of a second run by hand.
    x_start, _ = entropy_optax.langevin_mean(
      full_grad, params, key, gamma=gamma, num_steps=burn_in, langevin_lr=lr, noise=noise, alpha=1.0
    )
    # Continue the chain from x_start, still coupled to the fixed x = params.
    x = jax.tree.map(jnp.asarray, params)

    def step(carry, k):
      xp, total = carry
      g = full_grad(xp, k)
      xp = jax.tree.map(lambda a, gg, c: a - lr * (gg - gamma * (c - a)), xp, g, x)
      if (
        noise
      ):  # Gaussian: the reference is exact SGLD (the library's chain defaults to Irwin-Hall)
        eps = optax.tree.random_like(jax.random.fold_in(key, k), xp, jax.random.normal)
        xp = jax.tree.map(lambda a, e: a + np.sqrt(lr) * noise * e, xp, eps)
      return (xp, jax.tree.map(jnp.add, total, xp)), None

    zeros = jax.tree.map(jnp.zeros_like, x_start)
    (_, total), _ = jax.lax.scan(step, (x_start, zeros), jnp.arange(steps - burn_in))
    return jax.tree.map(lambda t: t / (steps - burn_in), total)

  mus = jax.jit(jax.vmap(one_chain, (0, None, None, None)))(
    jax.random.split(jax.random.key(7), chains), params, train_x, train_y
  )
  mu = jax.tree.map(lambda m: m.mean(0), mus)
  return optax.tree.scale(gamma, optax.tree.sub(params, mu))


def estimates(
  params, train_x, train_y, *, sampler, friction, num_steps, gamma, lr, noise, alpha, batch, repeats
):
  """``repeats`` estimates gamma (x - mu), each with its own key and mini-batches: (repeats, n)."""

  def one(key, params, train_x, train_y):
    noise_key, batch_key = jax.random.split(key)
    idx = jax.random.randint(batch_key, (num_steps, batch), 0, train_x.shape[0])
    grad_fn = lambda p, k: jax.grad(loss)(p, train_x[idx[k]], train_y[idx[k]])
    mu, _ = entropy_optax.langevin_mean(
      grad_fn,
      params,
      noise_key,
      gamma=gamma,
      num_steps=num_steps,
      langevin_lr=lr,
      noise=noise,
      alpha=alpha,
      sampler=sampler,
      friction=friction,
    )
    return jax.flatten_util.ravel_pytree(optax.tree.scale(gamma, optax.tree.sub(params, mu)))[0]

  return jax.jit(jax.vmap(one, (0, None, None, None)))(
    jax.random.split(jax.random.key(11), repeats), params, train_x, train_y
  )


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20], help="L values")
  parser.add_argument("--gammas", type=float, nargs="+", default=[0.03, 1.0])
  parser.add_argument("--langevin-lr", type=float, default=0.1)
  parser.add_argument("--alpha", type=float, default=0.25, help="the authors' code: 0.25")
  parser.add_argument("--warm-noise", type=float, default=1e-2)
  parser.add_argument("--frictions", type=float, nargs="+", default=[0.1, 0.5])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=64)
  parser.add_argument("--reference-steps", type=int, default=2000)
  parser.add_argument("--json", default=None, help="write the rows here")
  parser.add_argument("--train-steps", type=int, default=300, help="SGD steps to reach x")
  parser.add_argument("--num-train", type=int, default=4000)
  args = parser.parse_args(argv)

  start = time.perf_counter()
  jax.config.update("jax_enable_x64", False)
  train_x, train_y = load_data(args.num_train)
  params = fixed_point(train_x, train_y, args.train_steps, args.batch)
  flat = lambda t: jax.flatten_util.ravel_pytree(t)[0]
  print(
    f"MLP 40-100-10 on MNIST-1D ({args.num_train} train), x after {args.train_steps} SGD "
    f"steps: loss {float(loss(params, train_x, train_y)):.3f}; "
    f"langevin_lr {args.langevin_lr}, alpha {args.alpha}, batch {args.batch}, "
    f"{args.repeats} repeats"
  )
  rows = []
  for gamma, noise in [(g, n) for g in args.gammas for n in (PAPER_NOISE, args.warm_noise)]:
    ref = flat(
      reference_gradient(
        params,
        train_x,
        train_y,
        gamma=gamma,
        lr=args.langevin_lr,
        noise=noise,
        steps=args.reference_steps,
        chains=1 if noise == PAPER_NOISE else 2,
      )
    )
    ref_norm = float(jnp.linalg.norm(ref))
    errors = {}  # (sampler, L) -> error, at this gamma and temperature
    for num_steps in args.steps:
      for sampler, friction in [("sgld", None)] + [("sghmc", f) for f in args.frictions]:
        got = estimates(
          params,
          train_x,
          train_y,
          sampler=sampler,
          friction=friction,
          num_steps=num_steps,
          gamma=gamma,
          lr=args.langevin_lr,
          noise=noise,
          alpha=args.alpha,
          batch=args.batch,
          repeats=args.repeats,
        )
        rms = float(jnp.sqrt(jnp.mean(jnp.sum((got - ref) ** 2, axis=1)))) / ref_norm
        bias = float(jnp.linalg.norm(got.mean(0) - ref)) / ref_norm
        name = sampler if friction is None else f"sghmc(friction={friction})"
        errors[(name, num_steps)] = rms
        rows.append(
          {
            "gamma": gamma,
            "T": noise**2 / 2,
            "L": num_steps,
            "sampler": name,
            "rel_rms_error": rms,
            "rel_bias": bias,
            "sgld_error/this": errors[("sgld", num_steps)] / rms,
            "|g_ref|": ref_norm,
          }
        )
        print(
          "  ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()
          ),
          flush=True,
        )
  print(f"total {time.perf_counter() - start:.0f} s")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(
        {
          "command": "python -m benchmarks.chain_quality " + " ".join(argv or sys.argv[1:]),
          "jax": jax.__version__,
          "load_average_end": os.getloadavg(),
          "rows": rows,
        },
        f,
        indent=1,
      )
  return rows


if __name__ == "__main__":
  main()
