"""Training speed of the recurrent experiments: tokens per second, Entropy-SGD vs L SGD steps.

    python -m benchmarks.recurrent_speed [--models char-lstm ptb-small] [--repeats 7]

For each model, one outer Entropy-SGD step (L Langevin steps on L consecutive segments) against
L plain SGD steps, both through the harness's jitted call (``experiments.trainer.step_runners``:
the step
of ``experiments.trainer.steps`` with the text's ``Task`` of ``experiments.trainer.bptt``,
clipping included):
both cost L gradient evaluations on the same L B T tokens, so their time ratio is the cost of
the Langevin chain (target <= 1.1). ``ratio unrolled`` is the same with the chain's loop
unrolled (``entropy_sgd(unroll=True)``; the default rolls it for models without
convolutions). Calls are interleaved round robin and the ratio is the median of per-round
ratios (the machine may be shared and noisy).
``--cells`` also times one gradient of the char-LSTM loss with this project's layer (input
projection for all steps, then a scan of the fused recurrent product) against Flax's
``nn.RNN(nn.OptimizedLSTMCell)``.
"""

from __future__ import annotations

import argparse
import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import entropy_optax
from benchmarks import harness
from experiments.models import recurrent
from experiments.run.schema import RunConfig
from experiments.trainer import bptt, step_runners, tasks

# name: (model factory(vocab), vocab size, batch streams, BPTT steps, clip norm)
WORKLOADS = {
  "char-lstm": (lambda v: recurrent.char_lstm(v), 103, 50, 50, 5.0),
  "ptb-small": (lambda v: recurrent.ptb_lstm("small", v), 10_000, 20, 35, 5.0),
  "ptb-small-t20": (lambda v: recurrent.ptb_lstm("small", v), 10_000, 20, 20, 5.0),
  "ptb-medium": (lambda v: recurrent.ptb_lstm("medium", v), 10_000, 20, 35, 5.0),
  "ptb-large": (lambda v: recurrent.ptb_lstm("large", v), 10_000, 20, 35, 10.0),
}


def _programs(name: str, langevin_steps: int):
  """The harness's jitted Entropy-SGD step and L SGD steps of a workload."""
  make_model, vocab, batch, num_steps, clip = WORKLOADS[name]
  model = make_model(vocab)
  rng = np.random.default_rng(0)
  # Enough tokens for a few outer steps; random tokens cost what text costs.
  tokens = rng.integers(0, vocab, batch * (num_steps * langevin_steps * 3 + 1))
  x, y = bptt.train_examples(tokens, batch, num_steps)
  data = (jnp.asarray(x), jnp.asarray(y))

  def entropy_tx(key, unroll=None):
    return entropy_optax.entropy_sgd(
      1.0,
      num_langevin_steps=langevin_steps,
      gamma=1e-3,
      langevin_lr=1.0,
      noise=1e-4,
      momentum=0.5,
      key=key,
      unroll=unroll,
    )

  unrolled_tx = functools.partial(entropy_tx, unroll=True)
  sgd_tx = lambda key: optax.sgd(1.0)
  fns = {}
  for label, make_tx, steps_l, calls in (
    ("entropy_sgd", entropy_tx, langevin_steps, 1),
    ("entropy_unrolled", unrolled_tx, langevin_steps, 1),
    (f"{langevin_steps}x_sgd", sgd_tx, 1, langevin_steps),
  ):
    order = bptt.SegmentOrder(steps_l)
    task = tasks.Task(
      batch_indices=order,
      carry_reset=order.starts_pass,
      init_carry=bptt.ZeroCarry(model),
      clip_norm=clip,
    )
    program = step_runners.compiled_functions(
      RunConfig(batch_size=batch, langevin_steps=steps_l),
      model,
      make_tx,
      task,
      mesh=None,
      num_examples=len(x),
      eval_batch_size=batch,
      runner="scan",
    )
    state = program.init(jnp.uint32(0), data[0][:1])
    state, _ = jax.block_until_ready(program.call(state, data, calls))  # compile
    holder = [state]

    def run(program=program, holder=holder, calls=calls):
      holder[0], metrics = program.call(holder[0], data, calls)
      jax.block_until_ready(metrics)

    fns[label] = run
  return fns, langevin_steps * batch * num_steps, recurrent.count_params(model)


def _nll(logits, targets):
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).sum()


def _cell_programs(batch: int = 50, num_steps: int = 50, vocab: int = 103, hidden: int = 128):
  """One gradient of the 2-layer char-LSTM loss: this project's layer vs nn.RNN(OptimizedLSTM)."""
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, vocab, (batch, num_steps + 1)))
  ours = recurrent.char_lstm(vocab, hidden)
  carry = recurrent.zero_state(ours, batch)
  ours_params = ours.init(jax.random.key(0), tokens[:, :-1], carry, train=False)["params"]

  class FlaxLSTM(nn.Module):
    @nn.compact
    def __call__(self, x):
      h = jax.nn.one_hot(x, vocab)
      for _ in range(2):
        h = nn.RNN(nn.OptimizedLSTMCell(hidden))(h)
      return nn.Dense(vocab)(h)

  theirs = FlaxLSTM()
  theirs_params = theirs.init(jax.random.key(0), tokens[:, :-1])["params"]

  def ours_loss(p):
    logits, _ = ours.apply({"params": p}, tokens[:, :-1], carry, train=False)
    return _nll(logits, tokens[:, 1:])

  def theirs_loss(p):
    return _nll(theirs.apply({"params": p}, tokens[:, :-1]), tokens[:, 1:])

  ours_grad, theirs_grad = jax.jit(jax.grad(ours_loss)), jax.jit(jax.grad(theirs_loss))
  return {
    "fused_scan": lambda: jax.block_until_ready(ours_grad(ours_params)),
    "flax_OptimizedLSTMCell": lambda: jax.block_until_ready(theirs_grad(theirs_params)),
  }


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--models",
    nargs="+",
    default=["char-lstm", "ptb-small", "ptb-small-t20"],
    choices=sorted(WORKLOADS),
  )
  parser.add_argument("--langevin-steps", type=int, default=5, help="L (the paper's: 5).")
  parser.add_argument("--repeats", type=int, default=7, help="timed rounds (medians reported).")
  parser.add_argument(
    "--cells",
    action="store_true",
    help="also compare the LSTM layer with Flax's OptimizedLSTMCell.",
  )
  args = parser.parse_args(argv)
  print(
    f"backend {jax.default_backend()}, load average {harness.load_average()} "
    "(a shared machine: compare ratios, not absolute times)"
  )
  rows = []
  for name in args.models:
    start = time.perf_counter()
    fns, tokens, params = _programs(name, args.langevin_steps)
    times = harness.time_interleaved(fns, args.repeats)
    sgd_name = f"{args.langevin_steps}x_sgd"
    rows.append(
      {
        "model": name,
        "params": params,
        "tokens/step": tokens,
        "entropy_sgd s": round(harness.median(times["entropy_sgd"]), 4),
        f"{sgd_name} s": round(harness.median(times[sgd_name]), 4),
        "entropy tok/s": round(tokens / harness.median(times["entropy_sgd"])),
        "sgd tok/s": round(tokens / harness.median(times[sgd_name])),
        "ratio": round(harness.paired_ratio(times, "entropy_sgd", sgd_name), 3),
        "ratio unrolled": round(harness.paired_ratio(times, "entropy_unrolled", sgd_name), 3),
        "setup s": round(time.perf_counter() - start, 1),
      }
    )
  harness.print_table(rows)
  if args.cells:
    times = harness.time_interleaved(_cell_programs(), args.repeats)
    harness.print_table(
      [{"layer": k, "grad s (median)": round(harness.median(v), 4)} for k, v in times.items()]
      + [
        {
          "layer": "ratio flax/fused",
          "grad s (median)": round(
            harness.paired_ratio(times, "flax_OptimizedLSTMCell", "fused_scan"), 3
          ),
        }
      ]
    )


if __name__ == "__main__":
  main()
