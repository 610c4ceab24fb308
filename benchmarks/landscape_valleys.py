"""Which valley: Entropy-SGD (smoothing exp(-f)) against Gaussian smoothing of f, same starts.

The 1-D landscape of tests/test_core.py: a wide shallow valley at -2 (depth 1, width 1) and a
deeper sharp one at 1.5 (depth 1.5, width 0.2). Both methods smooth at the same width,
sigma^2 = T / gamma. For each setting and each start in [-4, 4]:

* ideal: gradient descent on the exact smoothed objective (-F by quadrature for local entropy,
  E f(x + sigma eps) by quadrature for smoothing), which valley it ends in;
* stochastic: Entropy-SGD (L-step SGLD chain at temperature T, langevin_lr 0.02; and the same
  with the SGHMC chain, friction 0.1) and SGD on ``gaussian_smoothing``
  (L samples), the same outer step schedule and the same L gradient evaluations per step,
  ``--seeds`` runs per start, one vmapped program per method.

Printed: the fraction of starts (ideal) and of runs (stochastic) ending in the wide valley.

    python -m benchmarks.landscape_valleys
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import entropy_optax

WIDE, SHARP = (1.0, -2.0, 1.0), (1.5, 1.5, 0.2)  # (depth, centre, width), as tests/test_core.py


def landscape(x, xp=jnp):
  return -sum(a * xp.exp(-((x - c) ** 2) / (2 * s**2)) for a, c, s in (WIDE, SHARP))


landscape_grad = jax.grad(lambda x: jnp.sum(landscape(x)))
GRID = np.linspace(-15, 15, 30_001)
F_GRID = landscape(GRID, np)
F_PRIME = np.gradient(F_GRID, GRID)


def local_entropy_grad(x, gamma, temperature):
  """-grad F = gamma (x - <x'>), <x'> under exp(-(f(x') + gamma/2 (x - x')^2) / T)."""
  energy = (F_GRID + gamma / 2 * (x - GRID) ** 2) / temperature
  w = np.exp(-(energy - energy.min()))
  return gamma * (x - (w * GRID).sum() / w.sum())


def smoothed_grad(x, sigma):
  """d/dx E f(x + sigma u) = E f'(x + sigma u)."""
  w = np.exp(-((GRID - x) ** 2) / (2 * sigma**2))
  return (w * F_PRIME).sum() / w.sum()


def ideal_ends(grad, starts, steps=4000, lr=0.05):
  """Gradient descent from every start on the gradient tabulated on [-6, 6], interpolated."""
  table_x = np.linspace(-6, 6, 2401)
  table = np.array([grad(x) for x in table_x])
  x = np.array(starts, np.float64)
  for _ in range(steps):
    x = x - lr * np.interp(x, table_x, table)
  return x


def stochastic_ends(tx_for_seed, starts, seeds, steps, lr):
  schedule = optax.linear_schedule(lr, lr / 50, steps)

  def run(x0, seed):
    tx = optax.chain(tx_for_seed(seed), optax.sgd(schedule))
    grad_fn = lambda p, k: landscape_grad(p)

    def body(carry, _):
      x, state = carry
      updates, state = tx.update(landscape_grad(x), state, x, grad_fn=grad_fn)
      return (optax.apply_updates(x, updates), state), None

    return jax.lax.scan(body, (x0, tx.init(x0)), None, length=steps)[0][0]

  return jax.jit(jax.vmap(jax.vmap(run, (None, 0)), (0, None)))(
    jnp.asarray(starts, jnp.float32), jnp.arange(seeds)
  )


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num-steps", type=int, default=20, help="L per outer step")
  parser.add_argument("--outer-steps", type=int, default=400)
  parser.add_argument("--seeds", type=int, default=4)
  parser.add_argument("--starts", type=int, default=33)
  parser.add_argument("--settings", type=int, default=5, help="the first N (T, sigma) settings")
  args = parser.parse_args(argv)
  start_time = time.perf_counter()
  starts = np.linspace(-4, 4, args.starts)
  rows = []
  settings = [(1.0, 0.7), (1.0, 1.0), (1.0, 1.41), (0.05, 1.0), (0.05, 1.41)]
  for temperature, sigma in settings[: args.settings]:
    gamma = temperature / sigma**2
    ideal_entropy = ideal_ends(lambda x: local_entropy_grad(x, gamma, temperature), starts)
    ideal_smooth = ideal_ends(lambda x: smoothed_grad(x, sigma), starts)
    L = args.num_steps
    # Outer lr: Entropy-SGD's update is x - mu (gamma dropped, as the paper); scale it back so
    # both methods take steps lr * (a gradient).
    entropy = stochastic_ends(
      lambda seed: entropy_optax.local_entropy(
        L, gamma, 0.02, float(np.sqrt(2 * temperature)), 0.25, key=seed, scale_by_gamma=True
      ),
      starts,
      args.seeds,
      args.outer_steps,
      0.5,
    )
    entropy_sghmc = stochastic_ends(
      lambda seed: entropy_optax.local_entropy(
        L,
        gamma,
        0.02,
        float(np.sqrt(2 * temperature)),
        0.25,
        key=seed,
        scale_by_gamma=True,
        sampler="sghmc",
        friction=0.1,
      ),
      starts,
      args.seeds,
      args.outer_steps,
      0.5,
    )
    smooth = stochastic_ends(
      lambda seed: entropy_optax.gaussian_smoothing(L, sigma, key=seed),
      starts,
      args.seeds,
      args.outer_steps,
      0.5,
    )
    wide = lambda ends: float(np.mean(np.asarray(ends) < 0))
    rows.append(
      {
        "T": temperature,
        "sigma": sigma,
        "gamma": round(gamma, 3),
        "ideal_entropy_wide": wide(ideal_entropy),
        "ideal_smooth_wide": wide(ideal_smooth),
        "entropy_sgd_wide": wide(entropy),
        "entropy_sghmc_wide": wide(entropy_sghmc),
        "smooth_sgd_wide": wide(smooth),
      }
    )
    print(
      "  ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()
      ),
      flush=True,
    )
  print(
    f"starts {starts[0]}..{starts[-1]} ({args.starts}), L = {args.num_steps}, "
    f"{args.outer_steps} outer steps, {args.seeds} seeds; total "
    f"{time.perf_counter() - start_time:.0f} s"
  )
  return rows


if __name__ == "__main__":
  main()
