"""Shared pieces of the benchmark scripts: models, jitted steps, timing, tables, JSON and main().

Every script builds the same two programs from here, so that they are compared like for like:

* ``entropy_step``: one Entropy-SGD update, exactly as a user writes it (value_and_grad at x,
  ``tx.update(grads, ..., grad_fn=...)``, ``optax.apply_updates``), jitted with donation;
* ``sgd_steps``: L plain SGD steps (same outer optimizer: Nesterov momentum 0.9) over the same L
  mini-batches, a ``lax.scan`` with the same unrolling, jitted with donation.

Both cost L gradient evaluations, so their time ratio is the overhead of the Langevin chain.

Every script runs as a module from the repository root (``python -m benchmarks.step_cost``) and
its ``main`` is `benchmark_main`: the same options, environment record, loop over models and JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import entropy_optax
from experiments import models

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------------------------------------
# Models


class MLP(nn.Module):
  """784-784-64-10 ReLU MLP: 666,330 parameters (the ~670k-parameter MLP of the core's step-cost
  target: an Entropy-SGD step <= 1.5x the cost of L SGD steps)."""

  hidden: tuple[int, ...] = (784, 64)
  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = True):
    del train
    x = x.reshape((x.shape[0], -1)).astype(self.dtype)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


class ModelSpec(NamedTuple):
  module: nn.Module
  input_shape: tuple[int, ...]  # one example, channels last
  source: str
  convolves: bool  # decides the core's default unrolling on CPU (see `resolve_unroll`)


def make_model(name: str, dtype: Any = jnp.float32) -> ModelSpec:
  """``mlp`` (MNIST-shaped), ``lenet_bn`` (MNIST-shaped) or ``allcnn_bn`` (CIFAR-shaped).

  ``dtype`` is both the compute and the parameter dtype ("the model in bf16"); the core keeps
  the Langevin chain in float32 whatever it is. ``allcnn_bn`` is the paper's All-CNN-C + BN
  (1.37M parameters; ``experiments.models.AllCNNBN`` defaults), ``lenet_bn`` the authors' LeNet.
  """
  if name == "mlp":
    return ModelSpec(MLP(dtype=dtype), (28, 28, 1), "benchmarks.common.MLP", False)
  if name == "lenet_bn":
    module = models.LeNetBN(dtype=dtype, param_dtype=dtype)
    return ModelSpec(module, (28, 28, 1), "experiments.models.LeNetBN", True)
  if name == "allcnn_bn":
    module = models.AllCNNBN(dtype=dtype, param_dtype=dtype)
    return ModelSpec(module, (32, 32, 3), "experiments.models.AllCNNBN", True)
  raise ValueError(f"unknown model {name!r}; choose mlp, lenet_bn or allcnn_bn.")


MODELS = ("mlp", "lenet_bn", "allcnn_bn")


def init_model(spec: ModelSpec, seed: int = 0, param_dtype: Any = jnp.float32):
  """(params, batch_stats) of the model; params cast to ``param_dtype``."""
  x = jnp.zeros((2, *spec.input_shape), jnp.float32)
  variables = spec.module.init(
    {"params": jax.random.key(seed), "dropout": jax.random.key(1)}, x, train=False
  )
  params = jax.tree.map(lambda p: p.astype(param_dtype), variables["params"])
  return params, variables.get("batch_stats", {})


def num_params(tree: Any) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(tree))


def tree_bytes(tree: Any) -> int:
  return sum(int(np.prod(p.shape)) * p.dtype.itemsize for p in jax.tree.leaves(tree))


def make_batches(spec: ModelSpec, num_batches: int, batch_size: int, seed: int = 0):
  """Synthetic (images, labels) with a leading axis of ``num_batches``, already on device."""
  kx, ky = jax.random.split(jax.random.key(seed))
  images = jax.random.normal(kx, (num_batches, batch_size, *spec.input_shape), jnp.float32)
  labels = jax.random.randint(ky, (num_batches, batch_size), 0, 10)
  return images, labels


def _im2col_conv_interceptor(next_fun, args, kwargs, context):
  """Computes ``nn.Conv`` as patches @ kernel: under vmap, a batched matmul, not a grouped conv."""
  module = context.module
  if not isinstance(module, nn.Conv) or context.method_name != "__call__":
    return next_fun(*args, **kwargs)
  dilation = module.kernel_dilation or 1
  dilation = (dilation,) if isinstance(dilation, int) else tuple(dilation)
  if module.feature_group_count != 1 or any(d != 1 for d in dilation):
    return next_fun(*args, **kwargs)
  x = args[0]
  if "kernel" not in module.variables.get("params", {}):  # init: let flax create the params
    return next_fun(*args, **kwargs)
  kernel = module.variables["params"]["kernel"]
  *window, cin, cout = kernel.shape
  strides = module.strides or (1,) * len(window)
  strides = (strides,) * len(window) if isinstance(strides, int) else tuple(strides)
  padding = module.padding
  if isinstance(padding, int):
    padding = ((padding, padding),) * len(window)
  elif not isinstance(padding, str):
    padding = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
  dtype = module.dtype or x.dtype
  spatial = "HW" if len(window) == 2 else "W"
  patches = jax.lax.conv_general_dilated_patches(
    x.astype(dtype),
    tuple(window),
    strides,
    padding,
    dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"),
  )
  # The patches' features are ordered (cin, *window).
  w = jnp.moveaxis(kernel, -2, 0).reshape(cin * int(np.prod(window)), cout).astype(dtype)
  y = patches @ w
  if module.use_bias:
    y = y + module.variables["params"]["bias"].astype(dtype)
  return y


def make_loss(spec: ModelSpec, conv_impl: str = "xla") -> Callable:
  """loss(params, batch_stats, (images, labels), dropout_key) -> (loss, new_batch_stats).

  ``conv_impl="im2col"`` computes every ``nn.Conv`` as an explicit patches-times-kernel matmul
  (see ``multi_run.py``); "xla" leaves convolutions to XLA.
  """
  if conv_impl == "im2col":
    plain = make_loss(spec)

    def im2col_loss(*args):
      with nn.intercept_methods(_im2col_conv_interceptor):
        return plain(*args)

    return im2col_loss
  module = spec.module

  def loss_fn(params, batch_stats, batch, key):
    images, labels = batch
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
      logits, updates = module.apply(
        variables, images, train=True, rngs={"dropout": key}, mutable=["batch_stats"]
      )
      batch_stats = updates["batch_stats"]
    else:
      logits = module.apply(variables, images, train=True, rngs={"dropout": key})
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return loss.mean(), batch_stats

  return loss_fn


# ---------------------------------------------------------------------------------------------
# Steps


def entropy_tx(
  num_steps: int,
  *,
  noise: float = 1e-4,
  noise_sampler: str = "irwin_hall",
  unroll: int | None = None,
  key: int = 0,
) -> optax.GradientTransformation:
  """The paper's Entropy-SGD (Nesterov 0.9 outside; gamma 0.03, eta' 0.1, alpha 0.75)."""
  return entropy_optax.entropy_sgd(
    1.0,
    num_langevin_steps=num_steps,
    gamma=entropy_optax.exponential_scoping(0.03, 1e-3),
    langevin_lr=0.1,
    noise=noise,
    alpha=0.75,
    momentum=0.9,
    nesterov=True,
    noise_sampler=noise_sampler,
    unroll=unroll,
    key=key,
  )


def sgd_tx() -> optax.GradientTransformation:
  return optax.sgd(0.1, momentum=0.9, nesterov=True)


# The core's documented default (README, "Unrolling"): on CPU the chain of a model with
# convolutions is unrolled, up to this many steps; everywhere else it is a rolled loop.
CORE_CPU_UNROLL_CAP = 32


def resolve_unroll(unroll: str, num_steps: int) -> int | None:
  """'auto' (the core's default: None), 'full', 'rolled' or an int -> the scan's unroll."""
  if unroll == "auto":
    return None  # the core decides (full on CPU for conv nets, rolled otherwise)
  if unroll == "full":
    return max(num_steps, 1)
  if unroll == "rolled":
    return 1
  return int(unroll)


def core_default_unroll(spec: ModelSpec, num_steps: int) -> int:
  """The unrolling the core picks by default for this model, so that a baseline can match it.

  Follows the rule the README documents, from what the benchmark knows of its model; the core
  detects convolutions from ``grad_fn`` itself, through no public function.
  """
  if jax.default_backend() == "cpu" and spec.convolves:
    return min(max(num_steps, 1), CORE_CPU_UNROLL_CAP)
  return 1


def baseline_unroll(unroll: str, spec: ModelSpec, num_steps: int) -> int:
  """The SGD baseline's unroll for the Entropy-SGD setting ``unroll``: the same as the core's."""
  resolved = resolve_unroll(unroll, num_steps)
  return core_default_unroll(spec, num_steps) if resolved is None else resolved


def build_entropy_step(
  loss_fn: Callable, tx: optax.GradientTransformation, jit: bool = True
) -> Callable:
  """One Entropy-SGD update as a user writes it; batches has a leading axis L.

  (params, batch_stats, opt_state, key, batches) -> (params, batch_stats, opt_state, key, loss).
  BatchNorm statistics and the loss come from the evaluation at x (mini-batch 0); the chain's
  own forward passes (k >= 1) discard theirs.
  """

  def step(params, batch_stats, opt_state, key, batches):
    key, step_key = jax.random.split(key)
    batch = lambda k: jax.tree.map(lambda b: b[k], batches)
    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      params, batch_stats, batch(0), step_key
    )

    def grad_fn(p, k):
      return jax.grad(
        lambda q: loss_fn(q, batch_stats, batch(k), jax.random.fold_in(step_key, k))[0]
      )(p)

    updates, opt_state = tx.update(grads, opt_state, params, grad_fn=grad_fn)
    return optax.apply_updates(params, updates), new_stats, opt_state, key, loss

  return jax.jit(step, donate_argnums=(0, 1, 2, 3)) if jit else step


def build_sgd_steps(loss_fn: Callable, tx: optax.GradientTransformation, unroll: int) -> Callable:
  """L plain SGD steps over the L batches (one each), in one jitted ``lax.scan``.

  ``unroll``: the scan's unrolling; `baseline_unroll` gives the one that matches an
  Entropy-SGD step's, so that both sides of a comparison unroll alike.
  """

  def step(params, batch_stats, opt_state, key, batches):
    key, step_key = jax.random.split(key)

    def sgd_step(carry, inputs):
      params, batch_stats, opt_state = carry
      k, batch = inputs
      (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch_stats, batch, jax.random.fold_in(step_key, k)
      )
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

    num_steps = jax.tree.leaves(batches)[0].shape[0]
    (params, batch_stats, opt_state), losses = jax.lax.scan(
      sgd_step,
      (params, batch_stats, opt_state),
      (jnp.arange(num_steps, dtype=jnp.int32), batches),
      unroll=unroll,
    )
    return params, batch_stats, opt_state, key, losses[0]

  return jax.jit(step, donate_argnums=(0, 1, 2, 3))


class Runner:
  """Holds a (donated) training state and advances it by one call to ``fn`` per ``__call__``."""

  def __init__(
    self,
    fn: Callable,
    params,
    batch_stats,
    opt_state,
    batches,
    seed: int = 0,
    key: jax.Array | None = None,
  ):
    # Each runner owns the buffers it donates (an fp32 optimizer state may alias params).
    copy = lambda t: jax.tree.map(jnp.copy, t)
    self.fn = fn
    self.state = (
      copy(params),
      copy(batch_stats),
      copy(opt_state),
      jax.random.key(seed)
      if key is None
      else jax.random.wrap_key_data(jnp.copy(jax.random.key_data(key))),
    )
    self.batches = batches
    self.compile_s = None
    self.compiled = None

  def compile(self, compiler_options: dict[str, Any] | None = None) -> float:
    """Compiles once (timed); calls then run this executable, never a re-trace."""
    start = time.perf_counter()
    self.compiled = self.fn.lower(*self.state, self.batches).compile(compiler_options)
    self.compile_s = time.perf_counter() - start
    return self.compile_s

  def __call__(self):
    if self.compiled is None:
      self.compile()
    *state, loss = self.compiled(*self.state, self.batches)
    self.state = tuple(state)
    jax.block_until_ready((self.state, loss))
    return loss


# ---------------------------------------------------------------------------------------------
# Timing and reporting


def time_interleaved(
  fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
  """Seconds per call of each function, calls interleaved round-robin (shared, noisy machine).

  Interleaving spreads any change in background load evenly over the variants, so that their
  ratios stay meaningful even when the absolute times drift.
  """
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return times


def median(xs) -> float:
  return float(statistics.median(xs))


def paired_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
  """Median over rounds of time[num] / time[den] within the same round (robust to drift)."""
  return median([a / b for a, b in zip(times[num], times[den])])


def load_average() -> list[float]:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return []


def environment(module: str, argv: Sequence[str]) -> dict[str, Any]:
  """Device, library versions, load and the exact command: stored with every figure."""
  env = {
    "command": " ".join(["python", "-m", module, *argv]),
    "device": str(jax.devices()[0].device_kind),
    "backend": jax.default_backend(),
    "num_devices": jax.device_count(),
    "cpu_count": os.cpu_count(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "jaxlib": getattr(__import__("jaxlib"), "__version__", "?"),
    "optax": optax.__version__,
    "flax": flax.__version__,
    "numpy": np.__version__,
    "torch": _torch_version(),
    "load_average_start": load_average(),
    "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
  }
  try:
    env["git_commit"] = _git("rev-parse", "--short", "HEAD").strip()
    # Uncommitted changes to the library would make the figure unreproducible from the commit.
    env["core_uncommitted"] = _git("status", "--porcelain", "entropy_optax").split()[1::2]
  except OSError:  # no git on this machine
    pass
  return env


def _git(*args: str) -> str:
  """What ``git args`` prints in the repository."""
  return subprocess.run(
    ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
  ).stdout


def _torch_version() -> str | None:
  """torch's version if it is installed (only torch_reference uses it); None otherwise."""
  import importlib.util  # noqa: PLC0415 - only for this check

  if importlib.util.find_spec("torch") is None:
    return None
  import torch  # noqa: PLC0415 - optional dependency

  return torch.__version__


def print_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
  if not rows:
    return
  columns = columns or list(rows[0])
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
  cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
  print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
  print("  ".join("-" * w for w in widths))
  for row in cells:
    print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
  sys.stdout.flush()


def write_json(path: str | None, env: dict[str, Any], results: Any) -> None:
  if not path:
    return
  env = dict(env, load_average_end=load_average())
  with open(path, "w") as f:
    json.dump({"environment": env, "results": results}, f, indent=1, default=float)
  print(f"wrote {path}")


# XLA:CPU's default scheduler runs independent work concurrently at the price of memory: with a
# fully unrolled chain (the core's CPU default for conv nets) it keeps buffers of many Langevin
# steps alive at once. Compiling with this option orders for memory instead (per executable,
# no XLA_FLAGS needed): LeNet-BN, batch 128, L = 20: 1195x -> 64x the parameter bytes extra.
CPU_MEMORY_SCHEDULER = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


def add_workload_args(parser: argparse.ArgumentParser) -> None:
  """The options every benchmark shares: which models, batch size and L."""
  parser.add_argument("--model", nargs="+", default=["mlp", "allcnn_bn"], choices=MODELS)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=20, help="L, Langevin steps per update")


def add_timing_args(parser: argparse.ArgumentParser) -> None:
  """The options of the benchmarks that time calls."""
  parser.add_argument("--repeats", type=int, default=5, help="timed calls per variant")
  parser.add_argument("--warmup", type=int, default=1, help="untimed calls per variant")


def add_unroll_arg(parser: argparse.ArgumentParser, several: bool = False) -> None:
  """``--unroll``: auto (the core's default), full, rolled or an int; `resolve_unroll` reads it."""
  parser.add_argument(
    "--unroll",
    nargs="+" if several else None,
    default=["auto", "rolled"] if several else "auto",
    help="auto (the core's default), full, rolled, or an int",
  )


def timing_row(variant: str, times_s: Sequence[float]) -> dict[str, Any]:
  """The columns every timed variant reports: median and fastest call, and all calls, in ms."""
  return {
    "variant": variant,
    "median_ms": 1e3 * median(times_s),
    "min_ms": 1e3 * min(times_s),
    "times_ms": [1e3 * t for t in times_s],
  }


def model_record(model: str, spec: ModelSpec, args: argparse.Namespace, **fields) -> dict:
  """One model's result: what ran (model, batch, L) and ``fields``."""
  return {
    "model": model,
    "model_source": spec.source,
    "batch": args.batch,
    "steps": args.steps,
    **fields,
  }


def benchmark_main(
  module: str,
  doc: str,
  add_args: Callable[[argparse.ArgumentParser], None],
  run_model: Callable[[str, argparse.Namespace], dict[str, Any] | list[dict[str, Any]]],
  argv: Sequence[str] | None = None,
  show: Sequence[str] = ("device", "backend", "jax", "load_average_start"),
) -> list[dict[str, Any]]:
  """The ``main`` of every benchmark: parse, record the environment, run, print, write JSON.

  Args:
    module: the script's module name, e.g. ``benchmarks.step_cost`` (for ``--help`` and the
      recorded command).
    doc: the script's docstring; its first line is the description.
    add_args: adds the script's own options (``--model``, ``--batch``, ``--steps`` and
      ``--json`` are added here).
    run_model: ``run_model(model, args)``: a JSON-able dict of results for one ``--model``,
      or a list of them.
    argv: the arguments; ``sys.argv[1:]`` by default.
    show: the environment entries printed before the run.

  Returns:
    The results of every model in one list, also written to ``--json FILE`` with the
    environment.
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.splitlines()[0])
  add_workload_args(parser)
  parser.add_argument("--json", default=None, help="write the numbers and environment here")
  add_args(parser)
  args = parser.parse_args(argv)
  env = environment(module, argv)
  print({k: env[k] for k in show})
  results = []
  for model in args.model:
    result = run_model(model, args)
    results.extend(result if isinstance(result, list) else [result])
  write_json(args.json, env, results)
  return results
