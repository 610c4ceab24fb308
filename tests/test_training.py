"""Tests of experiments/training.py: the jitted loop, metrics, checkpoints and resume, sharding."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import entropy_optax
from experiments import training

L = 3
REPO = pathlib.Path(__file__).resolve().parent.parent


class TinyNet(nn.Module):
  """Dense -> BatchNorm -> ReLU -> Dropout -> Dense, called as the experiments' models are."""

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.8)(nn.Dense(16)(x)))
    return nn.Dense(2)(nn.Dropout(0.2, deterministic=not train)(x))


def tiny_data(n_train=384, n_val=128, seed=0):
  """A learnable task: the label is the sign of the first input."""
  x = np.random.default_rng(seed).normal(size=(n_train + n_val, 8)).astype(np.float32)
  y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int32)
  return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


# One model and one optimizer object for all runs: train() reuses its compiled functions for
# runs with the same (model, tx, shapes), as a resumed run in the same process would.
MODEL = TinyNet()
TX = entropy_optax.entropy_sgd(0.5, num_langevin_steps=L, gamma=0.03, langevin_lr=0.1)


def config(**overrides):
  defaults = dict(batch_size=32, num_steps=40, langevin_steps=L, steps_per_call=10,
                  eval_every=20, checkpoint_every=10, keep_checkpoints=2, progress=False)
  return training.TrainConfig(**{**defaults, **overrides})


def assert_states_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, training._state_dict(a), training._state_dict(b))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The reference run: 40 Entropy-SGD steps, checkpoints every 10 steps."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  return training.train(config(), MODEL, TX, tiny_data(), workdir), workdir


def test_batch_indices_shuffle_every_pass_on_device():
  n, b = 10, 3  # 3 mini-batches per pass; the 10th example is dropped in each pass
  key = jax.random.PRNGKey(0)
  idx = np.asarray(training.batch_indices(key, jnp.int32(0), 9, n, b))
  passes = idx.reshape(3, 9)
  for p in passes:
    assert len(set(p)) == 9 and set(p) <= set(range(n))
  assert not np.array_equal(passes[0], passes[1])
  # Any window of mini-batches is the same slice of the sequence: the order depends on the step only.
  np.testing.assert_array_equal(training.batch_indices(key, jnp.int32(4), 4, n, b), idx[4:8])


def test_entropy_sgd_learns_and_logs_metrics(uninterrupted):
  result, workdir = uninterrupted
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert records == json.loads(json.dumps(result.records))
  assert [r["step"] for r in records] == [10, 20, 30, 40]
  last = records[-1]
  assert last["val_error"] < 0.1 and "val_error" not in records[0]
  assert records[-1]["train_loss"] < 0.6 * records[0]["train_loss"]
  np.testing.assert_allclose(last["epoch"], 40 * 32 / 384)
  np.testing.assert_allclose(last["effective_epochs"], L * last["epoch"])
  for name in entropy_optax.LangevinStats._fields:
    assert np.isfinite(last[name])
  np.testing.assert_allclose(last["langevin_gamma"], 0.03)
  assert last["mean_distance"] > 0
  assert all(a["wall_time"] <= b["wall_time"] for a, b in zip(records, records[1:]))
  info = json.loads((workdir / "config.json").read_text())
  assert info["config"]["langevin_steps"] == L and info["jax"] == jax.__version__
  assert int(result.state.step) == 40
  # The evaluation used the running statistics: recompute it independently.
  _, _, vx, vy = tiny_data()
  logits = MODEL.apply(result.state.variables, vx, train=False)
  np.testing.assert_allclose(last["val_error"], np.mean(np.argmax(logits, -1) != vy), atol=1e-6)


def test_resume_after_kill_is_bit_identical(uninterrupted, tmp_path):
  reference, reference_dir = uninterrupted
  workdir = tmp_path / "run"

  class Killed(Exception):
    pass

  def kill_at_30(records, state):
    if records[0]["step"] == 30:
      raise Killed

  with pytest.raises(Killed):
    training.train(config(), MODEL, TX, tiny_data(), workdir, callback=kill_at_30)
  assert training._Checkpoints(workdir, 2).steps() == [20, 30]
  # Keep a copy of the killed run for the corrupt-checkpoint test below.
  shutil.copytree(workdir, tmp_path / "killed")

  resumed = training.train(config(), MODEL, TX, tiny_data(), workdir)
  assert [r["step"] for r in resumed.records] == [40]
  assert_states_equal(resumed.state, reference.state)
  ours = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  theirs = [json.loads(line) for line in (reference_dir / "metrics.jsonl").read_text().splitlines()]
  drop_time = lambda rs: [{k: v for k, v in r.items() if k != "wall_time"} for r in rs]
  assert drop_time(ours) == drop_time(theirs)

  # Corrupt the last checkpoint of the killed run: a clear error, and nothing is replaced.
  killed = tmp_path / "killed"
  step_dir = killed / training.CHECKPOINT_DIR / "30"
  for path in step_dir.rglob("*"):
    if path.is_file() and path.name != "_CHECKPOINT_METADATA":
      path.write_bytes(b"garbage")
  with pytest.raises(training.CheckpointError, match=r"corrupt.*resume=20"):
    training.train(config(), MODEL, TX, tiny_data(), killed)
  checkpoints = training._Checkpoints(killed, 2)
  assert checkpoints.steps() == [20, 30]
  restored = checkpoints.restore(20, reference.state)  # the older checkpoint is still good
  assert int(restored.step) == 20
  checkpoints.close()

  # Missing checkpoints and another run's workdir give clear errors too.
  with pytest.raises(training.CheckpointError, match="available steps: \\[20, 30\\]"):
    training.train(config(), MODEL, TX, tiny_data(), killed, resume=25)
  with pytest.raises(training.CheckpointError, match="no checkpoint"):
    training.train(config(), MODEL, TX, tiny_data(), tmp_path / "empty", resume=True)
  with pytest.raises(training.CheckpointError, match="batch_size"):
    training.train(config(batch_size=16), MODEL, TX, tiny_data(), killed, resume=20)
  with pytest.raises(training.CheckpointError, match="has checkpoints"):
    training.train(config(), MODEL, TX, tiny_data(), killed, resume=False)


def test_unfinished_checkpoint_is_ignored(uninterrupted, tmp_path):
  """A save cut short leaves orbax's temporary directory, never a step that resume would use."""
  _, reference_dir = uninterrupted
  workdir = tmp_path / "run"
  shutil.copytree(reference_dir, workdir)
  tmp = workdir / training.CHECKPOINT_DIR / "50.orbax-checkpoint-tmp-1234"
  tmp.mkdir()
  (tmp / "partial").write_bytes(b"half")
  checkpoints = training._Checkpoints(workdir, 2)
  assert checkpoints.steps() == [30, 40]
  checkpoints.close()


def test_vmapped_seeds_match_single_seed_runs(uninterrupted):
  reference, _ = uninterrupted
  cfg = config(num_seeds=2, eval_every=0, checkpoint_every=0)
  result = training.train(cfg, MODEL, TX, tiny_data())
  assert result.state.params["Dense_0"]["kernel"].shape == (2, 8, 16)
  lane0 = jax.tree.map(lambda a: a[0], training._state_dict(result.state))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               lane0, training._state_dict(reference.state))
  k0, k1 = result.state.params["Dense_0"]["kernel"]
  assert not np.allclose(k0, k1)  # the seeds differ
  assert sorted({r["seed"] for r in result.records}) == [0, 1]
  noise_keys = optax.tree.get(result.state.opt_state, "langevin_key")
  assert not np.array_equal(noise_keys[0], noise_keys[1])


def test_plain_optax_and_one_batch_per_step():
  result = training.train(
      config(langevin_steps=1, num_steps=20, eval_every=0, checkpoint_every=0),
      MODEL, optax.sgd(0.1, momentum=0.9), tiny_data())
  last = result.records[-1]
  assert last["effective_epochs"] == last["epoch"] and "langevin_gamma" not in last
  assert last["val_error"] < 0.2
  with pytest.raises(ValueError, match="langevin_steps=1"):
    training.train(config(eval_every=0, checkpoint_every=0), MODEL, optax.sgd(0.1), tiny_data())


def test_one_batch_per_step_reuses_it_for_every_langevin_step():
  """fresh_batches=False on batch b equals fresh batches (b, b): same data, same dropout keys."""
  x, y, _, _ = tiny_data()
  tx = entropy_optax.entropy_sgd(0.5, num_langevin_steps=2, noise=0.0)  # compiles faster
  state = jax.jit(lambda s: training._init_state(MODEL, tx, x[:1], s))(jnp.uint32(0))
  xs, ys = jnp.asarray(x[:32])[None], jnp.asarray(y[:32])[None]
  one = training.train_step(state, xs, ys, fresh_batches=False)
  three = training.train_step(state, jnp.repeat(xs, L, 0), jnp.repeat(ys, L, 0))
  jax.tree.map(np.testing.assert_array_equal, one, three)
  assert training.TrainConfig(num_steps=1, langevin_steps=L, fresh_batches=False).batches_per_step == 1


def test_config_validation():
  with pytest.raises(ValueError, match="exactly one"):
    training.TrainConfig()
  with pytest.raises(ValueError, match="multiple of steps_per_call"):
    training.TrainConfig(num_steps=10, steps_per_call=4, eval_every=6)
  cfg = training.TrainConfig(effective_epochs=2.0, batch_size=32, langevin_steps=L)
  assert cfg.total_steps(384) == 8  # 2 x 384 / (32 x 3)


def test_sharded_over_eight_devices_matches_one_device():
  """The same run over a Mesh of 8 simulated CPU devices (in a fresh process)."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  out = subprocess.run([sys.executable, str(REPO / "tests" / "sharded_training_check.py")],
                       env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  assert report["devices"] == 8
  assert report["max_param_diff"] < 1e-4, report
  assert report["val_error_single"] == pytest.approx(report["val_error_mesh"], abs=1 / 128)
  assert report["param_sharding_replicated"] and report["all_reduces"] > 0
