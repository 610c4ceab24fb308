"""Runs the MNIST-1D script on one device and over meshes of 8 devices; prints a JSON report.

Run by tests/test_scale_out.py in a fresh process with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (the device count is fixed at JAX start-up).
Every run goes through the command line (``experiments.mnist1d.main``); ``loop.train`` is
wrapped only to look at the final state's shardings. Also checks the library's data-parallel
recipe: a ``shard_map`` step whose ``grad_fn`` averages over the data axis equals the
one-device step.
"""

import contextlib
import functools
import io
import json
import pathlib
import shutil
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

import entropy_optax
from experiments import mnist1d
from experiments.launch import final_state
from experiments.run import directory
from experiments.trainer import loop

RUN = "mlp1d-entropy-sgd"
ARGS = [
  "--models", "mlp1d", "--optimizers", "entropy-sgd", "--recipe.entropy-sgd.langevin-steps", "2",
  "--num-train", "128", "--num-test", "64", "--batch-size", "32", "--num-seeds", "8",
  "--effective-epochs", "8", "--eval-every-effective-epochs", "2", "--no-progress",
  "--recipe.entropy-sgd.checkpoint-every-evals", "1",
]  # fmt: skip


def shard_map_steps() -> dict[str, float]:
  """max |params(data-parallel shard_map) - params(one device)| after 3 Entropy-SGD updates, for
  the two places a data-parallel ``grad_fn`` may average: the loss (jax.shard_map's default
  check_vma=True, under which the gradient of replicated parameters is already summed over the
  axis) or the gradient (check_vma=False, as under pmap)."""
  mesh = Mesh(np.array(jax.devices()), ("data",))
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 64, 5))  # L = 3 mini-batches of 64
  y = x @ jnp.arange(5.0) + 0.1
  tx = entropy_optax.entropy_sgd(0.1, num_langevin_steps=3, gamma=0.1, noise=1e-3, key=7)
  loss = lambda p, xb, yb: jnp.mean((xb @ p - yb) ** 2)  # noqa: E731
  grad_fns = {
    "one_device": lambda xs, ys: lambda p, k: jax.grad(loss)(p, xs[k], ys[k]),
    "mean_loss": lambda xs, ys: (
      lambda p, k: jax.grad(lambda q: jax.lax.pmean(loss(q, xs[k], ys[k]), "data"))(p)
    ),
    "mean_grad": lambda xs, ys: lambda p, k: jax.lax.pmean(jax.grad(loss)(p, xs[k], ys[k]), "data"),
  }

  def step(how, params, state, xs, ys):
    grad_fn = grad_fns[how](xs, ys)
    updates, state = tx.update(grad_fn(params, 0), state, params, grad_fn=grad_fn)
    return optax.apply_updates(params, updates), state

  def data_parallel(how, check_vma):
    specs = dict(in_specs=(P(), P(), P(None, "data"), P(None, "data")), out_specs=(P(), P()))
    fn = jax.shard_map(functools.partial(step, how), mesh=mesh, check_vma=check_vma, **specs)
    return jax.jit(fn)

  steps = {
    "one_device": jax.jit(functools.partial(step, "one_device")),
    "mean_loss": data_parallel("mean_loss", True),
    "mean_grad": data_parallel("mean_grad", False),
  }
  final = {}
  for how, fn in steps.items():
    params = jnp.zeros(5)
    state = tx.init(params)
    for _ in range(3):
      params, state = fn(params, state, x, y)
    final[how] = params
  return {
    how: float(jnp.max(jnp.abs(final[how] - final["one_device"])))
    for how in ("mean_loss", "mean_grad")
  }


def run(workdir: pathlib.Path, *extra: str) -> tuple[int, str, list]:
  """(exit code, stderr, the TrainResults) of the script with ``ARGS`` and ``extra``."""
  results, train = [], loop.train

  def spy(*args, **kwargs):
    results.append(train(*args, **kwargs))
    return results[-1]

  loop.train, err = spy, io.StringIO()
  try:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
      code = mnist1d.main([*ARGS, "--workdir", str(workdir), *extra])
  finally:
    loop.train = train
  return code, err.getvalue(), results


def max_diff(a, b) -> float:
  return max(jax.tree.leaves(jax.tree.map(lambda u, v: float(np.max(np.abs(u - v))), a, b)))


def main():
  root = pathlib.Path(tempfile.mkdtemp(prefix="scale-out-"))
  report = {"devices": jax.device_count(), "shard_map_diffs": shard_map_steps()}
  finals = {}
  meshes = {"one": [], "data8": ["--mesh", "data=8"], "seed8": ["--mesh", "seed=8"]}
  for name, extra in meshes.items():
    code, err, results = run(root / name, *extra)
    assert code == 0, err
    kernel = results[0].state.params["Dense_0"]["kernel"]
    finals[name] = final_state.load_final_variables(root / name / RUN)
    report[name] = {
      "param_devices": len(kernel.sharding.device_set),
      "seeds_per_device": sorted({s.data.shape[0] for s in kernel.addressable_shards}),
      "config_devices": json.loads((root / name / RUN / "config.json").read_text())["devices"],
      "records": [
        (r["step"], r["seed"], r["train_loss"]) for r in directory.read_records(root / name / RUN)
      ],
    }
  report["data8_diff"] = max_diff(finals["one"], finals["data8"])
  report["seed8_diff"] = max_diff(finals["one"], finals["seed8"])
  # Resume on another device count: the seed=8 run from its next-to-last checkpoint on data=4.
  resumed = root / "resumed"
  shutil.copytree(root / "seed8", resumed)
  (resumed / "results.json").unlink()
  (resumed / RUN / "results.json").unlink()
  last = max(int(p.name) for p in (resumed / RUN / "checkpoints").iterdir() if p.name.isdigit())
  shutil.rmtree(resumed / RUN / "checkpoints" / str(last))
  code, err, _ = run(resumed, "--resume", "--mesh", "seed=2,data=4")
  assert code == 0, err
  report["resumed_diff"] = max_diff(
    finals["seed8"], final_state.load_final_variables(resumed / RUN)
  )
  report["resumed_devices"] = json.loads((resumed / RUN / "config.json").read_text())[
    "device_history"
  ]
  errors = {}
  for name, extra in {
    "not_dividing_devices": ["--mesh", "data=3"],
    "more_than_the_devices": ["--mesh", "data=16"],
    "not_dividing_seeds": ["--mesh", "seed=8", "--num-seeds", "4"],
    "not_dividing_batch": ["--mesh", "data=8", "--batch-size", "20"],
    "unknown_axis": ["--mesh", "model=8"],
  }.items():
    code, err, results = run(root / name, *extra)
    written = sorted(str(p) for p in (root / name).rglob("*")) if (root / name).exists() else []
    errors[name] = {
      "code": code,
      "stderr": err.strip(),
      "trained": bool(results),
      "written": written,
    }
  report["errors"] = errors
  shutil.rmtree(root, ignore_errors=True)
  print(json.dumps(report))


if __name__ == "__main__":
  sys.exit(main())
