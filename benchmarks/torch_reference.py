"""entropy_optax against an eager PyTorch implementation of the authors' algorithm.

Targets (H100): entropy_optax >= 2.5x the speed of eager PyTorch in fp32, >= 4x in bf16.

``TorchEntropySGD`` is written from the semantics of the core (``entropy_optax.langevin_mean``
and ``entropy_sgd``), not ported from the authors' code, and uses the same conventions:

* Langevin step k (k = 0..L-1, the first at x' = x, its gradient also the one a trainer logs)::

    g   = grad f(x'; batch_k) + wd x'         (optional momentum on g, buffer zeroed per step)
    x' <- x' - eta' (g - gamma (x - x')) + sqrt(eta') eps N(0, I)
    mu <- (1 - alpha) mu + alpha x'

* outer: g = x - mu (+ wd x), SGD with Nesterov momentum on g; gamma = gamma0 (1 + gamma1)^t.

Eager means one kernel launch per op, as the authors' code; it is written with the fused
``torch._foreach_*`` list ops (one call per op for all tensors) to be a fair, fast baseline.
PyTorch is optional (``pip install -r requirements/benchmarks.txt``): without it, the script
prints a message and times only the JAX columns.

Example (CPU figures in RESULTS.md), from the repository root::

  python -m benchmarks.torch_reference --model mlp allcnn_bn --batch 128 --steps 20
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np

from benchmarks import harness, programs, workloads
from benchmarks.torch_models import tnn, torch, torch_model

# ---------------------------------------------------------------------------------------------
# The algorithm, eager.


class TorchEntropySGD:
  """Entropy-SGD with the core's semantics; the model's parameters serve as the chain x'."""

  def __init__(
    self,
    params,
    *,
    lr=1.0,
    num_langevin_steps=20,
    gamma0=0.03,
    gamma1=1e-3,
    langevin_lr=0.1,
    noise=1e-4,
    alpha=0.75,
    momentum=0.9,
    nesterov=True,
    langevin_momentum=0.0,
    weight_decay=0.0,
    seed=0,
  ):
    self.params = [p for p in params if p.requires_grad]
    self.lr, self.num_steps = lr, num_langevin_steps
    self.gamma0, self.gamma1 = gamma0, gamma1
    self.langevin_lr, self.noise, self.alpha = langevin_lr, noise, alpha
    self.momentum, self.nesterov = momentum, nesterov
    self.langevin_momentum, self.weight_decay = langevin_momentum, weight_decay
    self.count = 0
    self.outer_buffer = [torch.zeros_like(p) for p in self.params]
    self.generator = torch.Generator(device=self.params[0].device).manual_seed(seed)

  def _noise(self):
    with torch.no_grad():
      return [
        torch.randn(p.shape, generator=self.generator, device=p.device, dtype=p.dtype)
        for p in self.params
      ]

  def step(self, closure):
    """closure(k) zeroes the grads, evaluates the loss on mini-batch k at the model's current
    parameters, calls backward and returns the loss. Returns the loss of k = 0 (at x)."""
    gamma = self.gamma0 * (1 + self.gamma1) ** self.count
    ps = self.params
    with torch.no_grad():
      x = [p.detach().clone() for p in ps]
      mu = [p.detach().clone() for p in ps]
      buffer = [torch.zeros_like(p) for p in ps] if self.langevin_momentum else None
    first_loss = None
    for k in range(self.num_steps):
      loss = closure(k)
      first_loss = loss if first_loss is None else first_loss
      with torch.no_grad():
        g = [p.grad for p in ps]
        if self.weight_decay:
          g = torch._foreach_add(g, ps, alpha=self.weight_decay)
        if buffer is not None:
          torch._foreach_mul_(buffer, self.langevin_momentum)
          torch._foreach_add_(buffer, g)
          g = (
            torch._foreach_add(g, buffer, alpha=self.langevin_momentum) if self.nesterov else buffer
          )
        # x' <- x' - eta' g + eta' gamma (x - x')
        gap = torch._foreach_sub(x, ps)
        torch._foreach_add_(ps, g, alpha=-self.langevin_lr)
        torch._foreach_add_(ps, gap, alpha=self.langevin_lr * gamma)
        if self.noise:
          torch._foreach_add_(ps, self._noise(), alpha=math.sqrt(self.langevin_lr) * self.noise)
        torch._foreach_lerp_(mu, ps, self.alpha)  # mu <- (1 - alpha) mu + alpha x'
    with torch.no_grad():
      outer = torch._foreach_sub(x, mu)
      if self.weight_decay:
        torch._foreach_add_(outer, x, alpha=self.weight_decay)
      torch._foreach_mul_(self.outer_buffer, self.momentum)
      torch._foreach_add_(self.outer_buffer, outer)
      direction = (
        torch._foreach_add(outer, self.outer_buffer, alpha=self.momentum)
        if self.nesterov
        else self.outer_buffer
      )
      torch._foreach_add_(x, direction, alpha=-self.lr)
      for p, new in zip(ps, x):
        p.copy_(new)
    self.count += 1
    return first_loss


def _sync(device):
  if device.type == "cuda":
    torch.cuda.synchronize()


class TorchRunner:
  """One Entropy-SGD step (or L SGD steps) of the torch model per call, on fixed batches."""

  def __init__(
    self,
    model_name,
    images,
    labels,
    steps,
    *,
    method="entropy",
    dtype="float32",
    device=None,
    seed=0,
    threads=None,
  ):
    torch.manual_seed(seed)
    self.threads = threads
    self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    self.model = torch_model(model_name).to(self.device).train()
    # NHWC (JAX) -> NCHW (torch); one host->device copy, outside the timed calls.
    images = np.moveaxis(np.asarray(images), -1, 2)
    self.images = torch.from_numpy(images.copy()).to(self.device)
    self.labels = torch.from_numpy(np.asarray(labels).astype(np.int64)).to(self.device)
    self.steps, self.method = steps, method
    self.autocast = dtype == "bfloat16"
    if method == "entropy":
      self.opt = TorchEntropySGD(self.model.parameters(), num_langevin_steps=steps)
    else:
      self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, nesterov=True)

  def loss(self, k):
    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
      logits = self.model(self.images[k])
    return tnn.functional.cross_entropy(logits.to(self.images.dtype), self.labels[k])

  def closure(self, k):
    for p in self.model.parameters():
      p.grad = None
    loss = self.loss(k)
    loss.backward()
    return loss

  def __call__(self):
    if self.threads:
      torch.set_num_threads(self.threads)
    if self.method == "entropy":
      loss = self.opt.step(self.closure)
    else:
      for k in range(self.steps):
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(k)
        loss.backward()
        self.opt.step()
    _sync(self.device)
    return float(loss.detach())


def run_model(model: str, args) -> dict:
  spec = workloads.make_model(model)
  params, batch_stats = workloads.init_model(spec)
  batches = workloads.make_batches(spec, args.steps, args.batch)
  loss_fn = workloads.make_loss(spec)
  tx = programs.entropy_tx(args.steps, unroll=programs.resolve_unroll(args.unroll, args.steps))
  print(
    f"\n== {model} ({spec.source}): {workloads.num_params(params):,} parameters, batch "
    f"{args.batch}, L = {args.steps}",
    flush=True,
  )
  fns = {
    "jax entropy_sgd": programs.Runner(
      programs.build_entropy_step(loss_fn, tx), params, batch_stats, tx.init(params), batches
    )
  }
  sgd = programs.sgd_tx()
  fns["jax sgd xL"] = programs.Runner(
    programs.build_sgd_steps(loss_fn, sgd, programs.baseline_unroll(args.unroll, spec, args.steps)),
    params,
    batch_stats,
    sgd.init(params),
    batches,
  )
  for name, runner in fns.items():
    print(f"compiling {name} ... {runner.compile():.1f} s", flush=True)
  if torch is None:
    print(
      "torch is not installed: skipping the PyTorch columns "
      "(pip install -r requirements/benchmarks.txt for torch 2.13.0 on CPU; any CUDA build on a "
      "GPU)."
    )
  else:
    images, labels = (np.asarray(b) for b in batches)
    # On a shared CPU, OpenMP's spinning threads can collapse when cores are contested, so
    # several thread counts are timed and the fastest torch row is the reference.
    for threads in args.torch_threads or [os.cpu_count()]:
      tag = (
        f"eager, {threads} thr"
        if torch.device("cuda" if torch.cuda.is_available() else "cpu").type == "cpu"
        else "eager"
      )
      fns[f"torch entropy_sgd ({tag})"] = TorchRunner(
        model, images, labels, args.steps, threads=threads
      )
      fns[f"torch sgd xL ({tag})"] = TorchRunner(
        model, images, labels, args.steps, method="sgd", threads=threads
      )
  start = time.perf_counter()
  times = harness.time_interleaved(fns, repeats=args.repeats, warmup=args.warmup)
  torch_rows = [n for n in times if n.startswith("torch entropy_sgd")]
  ref = min(torch_rows, key=lambda n: harness.median(times[n])) if torch_rows else None
  print(
    f"timed {args.repeats} interleaved rounds in {time.perf_counter() - start:.0f} s; "
    f"speedup = median({ref}) / median(row)"
  )
  rows = [
    {
      **harness.timing_row(name, t),
      "speedup_vs_torch": (harness.median(times[ref]) / harness.median(t)) if ref else None,
      "paired_speedup_vs_torch": (1 / harness.paired_ratio(times, name, ref)) if ref else None,
    }
    for name, t in times.items()
  ]
  harness.print_table(
    rows, ["variant", "median_ms", "min_ms", "speedup_vs_torch", "paired_speedup_vs_torch"]
  )
  return harness.model_record(
    model, spec, args, num_params=workloads.num_params(params), rows=rows, torch_reference=ref
  )


def add_args(parser: argparse.ArgumentParser) -> None:
  harness.add_unroll_arg(parser)
  parser.add_argument(
    "--torch-threads",
    type=int,
    nargs="+",
    default=None,
    help="torch CPU thread counts to time (default: all cores)",
  )
  harness.add_timing_args(parser)


def main(argv=None):
  return harness.benchmark_main(
    "benchmarks.torch_reference",
    __doc__,
    add_args,
    run_model,
    argv,
    show=("device", "backend", "jax", "torch", "load_average_start"),
  )


if __name__ == "__main__":
  main()
