"""Smoke tests of the benchmark scripts (tiny sizes), and the checks their comparisons rest on.

The benchmarks are not timed here: each script runs once on a tiny model/batch, and the test
checks that every number it prints and writes to JSON is finite and positive.
"""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import entropy_optax
from benchmarks import (
  memory,
  multi_run,
  precision,
  programs,
  step_cost,
  torch_models,
  torch_reference,
  workloads,
)

# Runs of the harness end to end: CI runs them, `pytest -m "not slow"` leaves them out.
pytestmark = pytest.mark.slow

TINY = ["--batch", "4", "--steps", "2"]
_NO_TORCH = "torch is not installed: `pip install -r requirements/benchmarks.txt` (part of all.txt)"


def _numbers(tree):
  """All numbers in a JSON-like tree (bools excluded)."""
  if isinstance(tree, dict):
    for v in tree.values():
      yield from _numbers(v)
  elif isinstance(tree, (list, tuple)):
    for v in tree:
      yield from _numbers(v)
  elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
    yield tree


def _check_json(path, results):
  with open(path) as f:
    data = json.load(f)
  env = data["environment"]
  assert env["command"].startswith("python -m benchmarks.") and env["jax"] == jax.__version__
  assert data["results"]
  numbers = list(_numbers(results))
  assert numbers and all(math.isfinite(x) for x in numbers)
  return data


def _check_rows(rows, keys):
  for row in rows:
    for key in keys:
      assert math.isfinite(row[key]) and row[key] > 0, (row["variant"], key, row[key])


def test_step_cost_smoke(tmp_path, capsys):
  path = str(tmp_path / "step.json")
  results = step_cost.main(
    [
      "--model",
      "mlp",
      *TINY,
      "--repeats",
      "2",
      "--samplers",
      "irwin_hall",
      "none",
      "--unroll",
      "auto",
      "--json",
      path,
    ]
  )
  _check_json(path, results)
  (result,) = results
  assert {r["variant"] for r in result["rows"]} == {
    "sgd x2 [auto]",
    "entropy [irwin_hall, auto]",
    "entropy [none, auto]",
  }
  _check_rows(result["rows"], ["median_ms", "ratio", "paired_ratio", "min_ratio", "compile_s"])
  assert {d["sampler"] for d in result["noise_draws"]} == {"irwin_hall", "gaussian"}
  assert all(d["step_ms"] > 0 for d in result["noise_draws"])
  assert "ratio" in capsys.readouterr().out


def test_memory_smoke(tmp_path):
  path = str(tmp_path / "memory.json")
  results = memory.main(["--model", "mlp", *TINY, "--json", path])
  _check_json(path, results)
  (result,) = results
  assert result["param_bytes"] == 4 * result["num_params"]
  for row in result["rows"]:
    assert row["peak_bytes"] > 0 and row["argument_bytes"] > 0
  # The Entropy-SGD step keeps at least mu and x' beyond SGD's state.
  assert result["extra_bytes"] > 0


def test_memory_scheduler_option_cuts_the_unrolled_chains_temporaries():
  args = ["--model", "lenet_bn", *TINY, "--unroll", "full", "--no-live"]
  (default,) = memory.main(args)
  (ordered,) = memory.main(args + ["--scheduler", "memory"])
  assert ordered["scheduler"] == "memory"
  temp = lambda result: {r["step"]: r["temp_bytes"] for r in result["rows"]}
  assert temp(ordered)["entropy_sgd"] <= temp(default)["entropy_sgd"]


def test_multi_run_smoke(tmp_path):
  path = str(tmp_path / "multi.json")
  results = multi_run.main(
    [
      "--model",
      "mlp",
      *TINY,
      "--runs",
      "2",
      "--repeats",
      "1",
      "--variants",
      "vmap",
      "unrolled",
      "--json",
      path,
    ]
  )
  _check_json(path, results)
  _check_rows(results[0]["rows"], ["median_ms", "speedup", "paired_speedup"])
  assert {r["variant"] for r in results[0]["rows"]} == {"sequential", "vmap", "unrolled"}
  bound = results[0]["compute_bound"]
  assert bound["gemm_gflops"] > 0 and bound["sequential_gflops"] > 0
  assert bound["max_speedup"] == pytest.approx(bound["gemm_gflops"] / bound["sequential_gflops"])


def test_multi_run_forms_match_runs_one_after_another():
  spec = workloads.make_model("mlp")
  tx = programs.entropy_tx(2)
  single = programs.build_entropy_step(workloads.make_loss(spec), tx, jit=False)
  batches = workloads.make_batches(spec, 2, 4)
  states = []
  for seed in range(3):
    params, batch_stats = workloads.init_model(spec, seed=seed)
    states.append((params, batch_stats, tx.init(params), jax.random.key(seed)))
  expected = [jax.jit(single)(*state, batches) for state in states]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
  for name, fn in multi_run.multi_run_steps(single, 3).items():
    got = jax.jit(fn)(*stacked, batches)
    for i, want in enumerate(expected):
      got_i = jax.tree.map(lambda t: t[i], got)
      for a, b in zip(jax.tree.leaves(got_i), jax.tree.leaves(want), strict=True):
        a, b = (
          jax.random.key_data(t) if jnp.issubdtype(t.dtype, jax.dtypes.prng_key) else t
          for t in (a, b)
        )
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=name)


def test_gradient_flops_counts_forward_and_weight_gradients():
  # One gradient of a dense net = the forward matmuls + the weight-gradient matmuls (+ the input
  # gradients of every layer but the first): between 2x and 3x the forward FLOPs.
  spec = workloads.make_model("mlp")
  params, batch_stats = workloads.init_model(spec)
  flops = multi_run.gradient_flops(
    workloads.make_loss(spec), params, batch_stats, workloads.make_batches(spec, 1, 16)
  )
  forward = 2 * 16 * (784 * 784 + 784 * 64 + 64 * 10)
  assert 2 * forward <= flops <= 3 * forward


def test_precision_smoke(tmp_path):
  path = str(tmp_path / "precision.json")
  results = precision.main(["--model", "mlp", *TINY, "--repeats", "1", "--json", path])
  _check_json(path, results)
  _check_rows(results[0]["rows"], ["median_ms", "speedup_vs_fp32_entropy", "overhead_vs_sgd"])


def test_torch_reference_smoke(tmp_path, capsys):
  path = str(tmp_path / "torch.json")
  results = torch_reference.main(
    ["--model", "mlp", *TINY, "--repeats", "1", "--torch-threads", "1", "--json", path]
  )
  _check_json(path, results)
  rows = results[0]["rows"]
  if torch_reference.torch is None:
    assert "torch is not installed" in capsys.readouterr().out
    assert [r["variant"] for r in rows] == ["jax entropy_sgd", "jax sgd xL"]
  else:
    _check_rows(rows, ["median_ms", "speedup_vs_torch", "paired_speedup_vs_torch"])


def test_im2col_conv_matches_xla_conv():
  """multi_run's vmap+im2col variant computes the same loss and gradients as nn.Conv."""
  spec = workloads.make_model("lenet_bn")
  params, batch_stats = workloads.init_model(spec)
  batch = jax.tree.map(lambda b: b[0], workloads.make_batches(spec, 1, 4))
  key = jax.random.key(0)
  losses = [workloads.make_loss(spec, impl) for impl in ("xla", "im2col")]
  (a, _), (b, _) = (loss(params, batch_stats, batch, key) for loss in losses)
  np.testing.assert_allclose(a, b, rtol=1e-5)
  ga, gb = (jax.grad(lambda p, f=f: f(p, batch_stats, batch, key)[0])(params) for f in losses)
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-4 * float(jnp.abs(x).max()) + 1e-7)


def test_torch_reference_matches_core():
  """The eager PyTorch Entropy-SGD takes the same steps as entropy_optax (noise off, MLP)."""
  torch = pytest.importorskip("torch", reason=_NO_TORCH)
  steps, batch = 3, 8
  spec = workloads.make_model("mlp")
  params, _ = workloads.init_model(spec)
  images, labels = workloads.make_batches(spec, steps, batch)
  loss_fn = workloads.make_loss(spec)
  tx = optax.chain(
    # weight decay and Langevin momentum on, to cover their placement too
    entropy_optax.local_entropy(
      steps,
      entropy_optax.exponential_scoping(0.03, 1e-3),
      0.1,
      0.0,
      0.75,
      langevin_momentum=0.9,
      weight_decay=1e-3,
    ),
    optax.add_decayed_weights(1e-3),
    optax.sgd(1.0, momentum=0.9, nesterov=True),
  )
  step = programs.build_entropy_step(loss_fn, tx)
  # Copies: the step donates its inputs, and an fp32 state's mu may alias params.
  jparams = jax.tree.map(jnp.copy, params)
  opt_state, key = jax.tree.map(jnp.copy, tx.init(params)), jax.random.key(0)

  runner = torch_reference.TorchRunner(
    "mlp", np.asarray(images), np.asarray(labels), steps, device=torch.device("cpu")
  )
  runner.model.double()  # float64 reference: the comparison then measures only JAX's rounding
  runner.images = runner.images.double()
  torch_models.load_jax_mlp_params(runner.model, params)
  runner.opt = torch_reference.TorchEntropySGD(
    runner.model.parameters(),
    num_langevin_steps=steps,
    noise=0.0,
    langevin_momentum=0.9,
    weight_decay=1e-3,
  )
  for _ in range(2):  # two outer steps: the outer momentum and the gamma schedule advance
    jparams, _, opt_state, key, _ = step(jparams, {}, opt_state, key, (images, labels))
    runner()
  linears = [m for m in runner.model if isinstance(m, torch_models.tnn.Linear)]
  for i, linear in enumerate(linears):
    np.testing.assert_allclose(
      np.asarray(jparams[f"Dense_{i}"]["kernel"]),
      linear.weight.detach().numpy().T,
      rtol=1e-4,
      atol=1e-6,
    )
    np.testing.assert_allclose(
      np.asarray(jparams[f"Dense_{i}"]["bias"]), linear.bias.detach().numpy(), rtol=1e-4, atol=1e-6
    )


SCRIPTS = ("step_cost", "memory", "multi_run", "precision", "torch_reference", "epoch_speed")


def test_scripts_document_their_command():
  here = os.path.dirname(step_cost.__file__)
  for script in SCRIPTS:
    with open(os.path.join(here, f"{script}.py")) as f:
      assert f"python -m benchmarks.{script}" in f.read(), script


def test_scripts_run_as_modules_from_the_repository_root():
  root = os.path.dirname(os.path.dirname(step_cost.__file__))
  out = subprocess.run(
    [sys.executable, "-m", "benchmarks.precision", "--help"],
    cwd=root,
    capture_output=True,
    text=True,
    check=True,
  )
  assert out.stdout.startswith("usage: python -m benchmarks.precision")
  assert "--repeats" in out.stdout and "--json" in out.stdout


def test_baseline_unroll_follows_the_core_rule():
  """'auto' gives the SGD baseline the core's documented default: full (<= 32) for conv nets
  on CPU, rolled otherwise; explicit settings pass through."""
  mlp, lenet = workloads.make_model("mlp"), workloads.make_model("lenet_bn")
  on_cpu = jax.default_backend() == "cpu"
  assert programs.baseline_unroll("auto", mlp, 20) == 1
  assert programs.baseline_unroll("auto", lenet, 20) == (20 if on_cpu else 1)
  assert programs.baseline_unroll("auto", lenet, 50) == (32 if on_cpu else 1)
  assert programs.baseline_unroll("rolled", lenet, 20) == 1
  assert programs.baseline_unroll("full", mlp, 20) == 20
  assert programs.baseline_unroll("7", mlp, 20) == 7


def test_epoch_speed_rows_are_the_timed_parts(tmp_path):
  """One epoch of 512 random images at batch 32 in 2 parts: every variant is timed on the same
  parts, and images/s and the epoch's seconds are those of its timed parts."""
  from benchmarks import epoch_speed

  out = tmp_path / "epoch.json"
  argv = ["--models", "mnistfc", "--num-train", "512", "--batch", "32", "--chunks", "2"]
  (result,) = epoch_speed.main([*argv, "--data-dir", str(tmp_path / "none"), "--json", str(out)])
  rows = {r["variant"].split(" ")[0]: r for r in result["rows"]}
  assert set(rows) == {"harness", "standalone"} | ({"torch"} if torch_models.torch else set())
  for row in rows.values():
    times = row["times_s"]
    assert len(times) == 2  # 16 steps of 32 images: 2 parts of 8 steps
    np.testing.assert_allclose(row["images_per_s"], 8 * 32 / np.median(times), rtol=1e-9)
    np.testing.assert_allclose(row["epoch_s"], sum(times), rtol=1e-9)
  assert rows["standalone"]["ratio_to_standalone"] == 1.0
  saved = json.loads(out.read_text())
  assert saved["environment"]["data"].startswith("random images")
