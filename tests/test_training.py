"""Tests of the training loop (experiments/trainer/loop.py, steps.py, compiled.py, checkpoints.py):
metrics, checkpoints verified by checksums, resume after a kill, seeds, runners, sharding."""

from __future__ import annotations

import dataclasses
import io
import json
import pathlib
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import entropy_optax
from experiments.launch import components
from experiments.run import checkpoints, directory, schema
from experiments.run.directory import read_records
from experiments.run.schema import RunConfig
from experiments.trainer import loop, loop_state, tasks
from tests.fresh_process import run_check

# Runs of the harness end to end: CI runs them, `pytest -m "not slow"` leaves them out.
pytestmark = pytest.mark.slow

L = 3


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


# One model and one optimizer factory for all runs: train() reuses its compiled functions for
# runs with the same (model, tx, shapes), as a resumed run in the same process would.
MODEL = TinyNet()


def TX(key):
  """The optimizer of a seed: each seed gets its noise key through the public ``key``."""
  return entropy_optax.entropy_sgd(0.5, num_langevin_steps=L, gamma=0.03, langevin_lr=0.1, key=key)


def config(
  num_steps=40, eval_every_steps=10, checkpoint_every_steps=10, num_examples=384, **fields
) -> RunConfig:
  """The ``RunConfig`` of a loop test, its counts given in outer steps on ``num_examples``
  training examples: ``eval_every_steps`` (0: at the end only) and ``checkpoint_every_steps``
  (0: none; a multiple of ``eval_every_steps``); checked against ``schema.schedule``."""
  defaults = dict(optimizer="entropy-sgd", batch_size=32, langevin_steps=L, steps_per_call=10)
  fields = {**defaults, **fields}
  per_epoch = num_examples // fields["batch_size"]
  eval_every_steps = eval_every_steps or num_steps
  assert checkpoint_every_steps % eval_every_steps == 0
  made = RunConfig(
    outer_epochs=num_steps / per_epoch,
    eval_every_effective_epochs=eval_every_steps * fields["langevin_steps"] / per_epoch,
    checkpoint_every_evals=checkpoint_every_steps // eval_every_steps,
    **fields,
  )
  plan = schema.schedule(made, num_examples)
  assert (plan.num_steps, plan.eval_every_steps) == (num_steps, eval_every_steps), plan
  assert plan.checkpoint_every_steps == checkpoint_every_steps, plan
  return made


class Killed(Exception):
  """What ``kill_at`` raises: a run stopped as a kill would stop it."""


def kill_at(step: int):
  """The loop's callback that stops a run (``Killed``) once the call ending at ``step`` is
  written and checkpointed, as a kill would."""

  def callback(records, state):
    del state
    if records[0]["step"] == step:
      raise Killed

  return callback


def assert_states_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, loop_state.state_dict(a), loop_state.state_dict(b))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The reference run: 40 Entropy-SGD steps, checkpoints every 10 steps."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  return loop.train(config(), MODEL, TX, tiny_data(), workdir), workdir


def test_batch_indices_shuffle_every_pass_on_device():
  n, b = 10, 3  # 3 mini-batches per pass; the 10th example is dropped in each pass
  key = jax.random.PRNGKey(0)
  idx = np.asarray(tasks.shuffled_batch_indices(key, jnp.int32(0), 9, n, b))
  passes = idx.reshape(3, 9)
  for p in passes:
    assert len(set(p)) == 9 and set(p) <= set(range(n))
  assert not np.array_equal(passes[0], passes[1])
  # Any window of mini-batches is the same slice of the sequence: the order depends on the step.
  np.testing.assert_array_equal(tasks.shuffled_batch_indices(key, jnp.int32(4), 4, n, b), idx[4:8])


def test_entropy_sgd_learns_and_logs_metrics(uninterrupted):
  result, workdir = uninterrupted
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert records == json.loads(json.dumps(result.records))
  assert [r["step"] for r in records] == [10, 20, 30, 40]
  last = records[-1]
  assert last["val_error"] < 0.1 and all("val_error" in r for r in records)
  assert records[-1]["train_loss"] < 0.6 * records[0]["train_loss"]
  np.testing.assert_allclose(last["epoch"], 40 * 32 / 384)
  np.testing.assert_allclose(last["effective_epochs"], L * last["epoch"])
  for name in entropy_optax.LangevinStats._fields:
    assert np.isfinite(last[name])
  np.testing.assert_allclose(last["langevin_gamma"], 0.03)
  assert last["mean_distance"] > 0
  assert all(a["wall_time"] <= b["wall_time"] for a, b in zip(records, records[1:]))
  info = json.loads((workdir / "config.json").read_text())
  assert schema.from_json(info["config"]) == config() and info["jax"] == jax.__version__
  # The versions that decide the numbers, so that two environments' results can be told apart.
  assert info["packages"]["jaxlib"] == jax.lib.__version__ and info["packages"]["numpy"]
  assert info["schedule"]["num_steps"] == 40
  assert int(result.state.step) == 40
  # The evaluation used the running statistics: recompute it independently.
  _, _, vx, vy = tiny_data()
  logits = MODEL.apply(result.state.variables, vx, train=False)
  np.testing.assert_allclose(last["val_error"], np.mean(np.argmax(logits, -1) != vy), atol=1e-6)


def garble(step_dir: pathlib.Path) -> pathlib.Path:
  """XORs 64 bytes inside the largest file of a checkpoint's ocdbt data, as a bad disk would."""
  largest = max(
    (p for p in step_dir.rglob("*") if p.is_file() and "ocdbt" in str(p)),
    key=lambda p: p.stat().st_size,
  )
  data = bytearray(largest.read_bytes())
  middle = len(data) // 2
  for i in range(middle, min(middle + 64, len(data))):
    data[i] ^= 0xFF
  largest.write_bytes(bytes(data))
  return largest


def test_resume_after_kill_is_bit_identical(uninterrupted, tmp_path):
  reference, reference_dir = uninterrupted
  workdir = tmp_path / "run"

  with pytest.raises(Killed):
    loop.train(config(), MODEL, TX, tiny_data(), workdir, callback=kill_at(30))
  with checkpoints.Checkpoints(workdir) as ckpts:
    assert ckpts.steps() == [20, 30]
  shutil.copytree(workdir, tmp_path / "garbled")
  shutil.copytree(workdir, tmp_path / "emptied")

  resumed = loop.train(config(), MODEL, TX, tiny_data(), workdir)
  assert [r["step"] for r in resumed.records] == [40]
  assert_states_equal(resumed.state, reference.state)
  drop_time = lambda rs: [{k: v for k, v in r.items() if k != "wall_time"} for r in rs]
  assert drop_time(read_records(workdir)) == drop_time(read_records(reference_dir))

  # Garbled data in the newest checkpoint: never restored; the run falls back to step 20 and
  # still ends bit for bit where the uninterrupted one did.
  garbled = tmp_path / "garbled"
  garble(garbled / "checkpoints" / "30")
  logged = []
  resumed = loop.train(config(), MODEL, TX, tiny_data(), garbled, log=logged.append)
  assert len(logged) == 1 and "checkpoints/30 is unusable" in logged[0]
  assert [r["step"] for r in resumed.records] == [30, 40]
  assert_states_equal(resumed.state, reference.state)
  assert any(p.name.startswith("checkpoints_set_aside") for p in garbled.iterdir())

  # Every checkpoint unreadable (an emptied manifest in each): one clear error, nothing deleted.
  emptied = tmp_path / "emptied"
  for manifest in (emptied / "checkpoints").rglob("manifest.ocdbt"):
    manifest.write_bytes(b"")
  with pytest.raises(checkpoints.CheckpointError, match=r"unusable.*--overwrite"):
    loop.train(config(), MODEL, TX, tiny_data(), emptied, log=lambda _: None)
  with checkpoints.Checkpoints(emptied) as ckpts:
    assert ckpts.steps() == [20, 30]

  # Nothing to resume, another run's directory, starting afresh over checkpoints: clear errors.
  with pytest.raises(checkpoints.CheckpointError, match="nothing to resume"):
    loop.train(config(), MODEL, TX, tiny_data(), tmp_path / "empty", resume=True)
  with pytest.raises(checkpoints.CheckpointError, match="batch_size"):
    loop.train(config(batch_size=16), MODEL, TX, tiny_data(), workdir)
  with pytest.raises(checkpoints.CheckpointError, match="--resume"):
    loop.train(config(), MODEL, TX, tiny_data(), workdir, resume=False)


def test_unfinished_checkpoint_is_ignored(uninterrupted, tmp_path):
  """A save cut short leaves orbax's temporary directory (never a step), or a step without its
  checksum (never restored)."""
  _, reference_dir = uninterrupted
  workdir = tmp_path / "run"
  shutil.copytree(reference_dir, workdir)
  tmp = workdir / "checkpoints" / "50.orbax-checkpoint-tmp-1234"
  tmp.mkdir()
  (tmp / "partial").write_bytes(b"half")
  (workdir / checkpoints.CHECKSUM_DIR / "40.json").unlink()
  with checkpoints.Checkpoints(workdir) as ckpts:
    assert ckpts.steps() == [30, 40]
    assert "no checksum" in ckpts.problem(40) and ckpts.problem(30) is None
    assert ckpts.latest_good(log=lambda _: None) == 30


def test_metrics_reader_survives_a_cut_line(tmp_path):
  path = tmp_path / directory.METRICS_FILE
  directory.rewrite_records(path, [{"step": 1}, {"step": 2}])
  with open(path, "a") as f:
    f.write('{"step": 3, "train_lo')  # a kill in the middle of a write
  assert read_records(tmp_path) == [{"step": 1}, {"step": 2}]
  assert read_records(tmp_path / "absent") == []


def test_vmapped_seeds_match_single_seed_runs(uninterrupted):
  reference, _ = uninterrupted
  cfg = config(num_seeds=2, eval_every_steps=0, checkpoint_every_steps=0)
  result = loop.train(cfg, MODEL, TX, tiny_data())
  assert result.state.params["Dense_0"]["kernel"].shape == (2, 8, 16)
  lane0 = jax.tree.map(lambda a: a[0], loop_state.state_dict(result.state))
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    lane0,
    loop_state.state_dict(reference.state),
  )
  k0, k1 = result.state.params["Dense_0"]["kernel"]
  assert not np.allclose(k0, k1)  # the seeds differ
  assert sorted({r["seed"] for r in result.records}) == [0, 1]
  noise_keys = optax.tree.get(result.state.opt_state, "langevin_key")
  assert not np.array_equal(noise_keys[0], noise_keys[1])


def test_plain_optax_and_one_batch_per_step():
  result = loop.train(
    config(langevin_steps=1, num_steps=20, eval_every_steps=0, checkpoint_every_steps=0),
    MODEL,
    optax.sgd(0.1, momentum=0.9),
    tiny_data(),
  )
  last = result.records[-1]
  assert last["effective_epochs"] == last["epoch"] and "langevin_gamma" not in last
  assert last["val_error"] < 0.2
  with pytest.raises(ValueError, match="langevin_steps=1"):
    loop.train(
      config(eval_every_steps=0, checkpoint_every_steps=0), MODEL, optax.sgd(0.1), tiny_data()
    )


def test_schedule_counts_in_steps_and_checks():
  """Evaluations fall between calls: their period is rounded to whole calls."""
  plan = schema.schedule(
    RunConfig(
      batch_size=32, outer_epochs=10 / 12, steps_per_call=4, eval_every_effective_epochs=0.5
    ),
    384,
  )
  assert (plan.steps_per_epoch, plan.num_steps, plan.steps_per_call) == (12, 10, 4)
  assert plan.eval_every_steps == 8 and plan.checkpoint_every_steps == 8
  with pytest.raises(schema.ConfigError, match="--batch-size 400 exceeds the 384"):
    schema.schedule(RunConfig(batch_size=400), 384)
  with pytest.raises(schema.ConfigError, match="--step-runner must be one of auto, scan"):
    components.validate(RunConfig(step_runner="fast"))


def test_dispatch_runner_matches_scan():
  """One jitted step per step (the CPU path for conv nets) = the scan, up to rounding."""
  cfg = config(num_steps=10, eval_every_steps=0, checkpoint_every_steps=0)
  scan = loop.train(cfg, MODEL, TX, tiny_data())
  dispatch = loop.train(dataclasses.replace(cfg, step_runner="dispatch"), MODEL, TX, tiny_data())
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    loop_state.state_dict(scan.state),
    loop_state.state_dict(dispatch.state),
  )
  for a, b in zip(scan.records, dispatch.records):
    np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-5)


def test_sharded_over_eight_devices_matches_one_device():
  """The same run over a Mesh of 8 simulated CPU devices (in a fresh process)."""
  report = run_check("sharded_training_check.py", devices=8, timeout_s=600)
  assert report["devices"] == 8
  assert report["max_param_diff"] < 1e-4, report
  assert report["val_error_single"] == pytest.approx(report["val_error_mesh"], abs=1 / 128)
  assert report["param_sharding_replicated"] and report["all_reduces"] > 0


class CarryNet(nn.Module):
  """A recurrent toy: h = tanh(W x + h_prev), logits = V h; returns (logits, h)."""

  @nn.compact
  def __call__(self, x, carry, *, train: bool):
    del train
    h = jnp.tanh(nn.Dense(4)(x) + carry)
    return nn.Dense(2)(h), h


def test_task_extensions_carry_and_before_eval():
  """A carried state (Task.init_carry) is threaded through the steps and kept in the state; a
  pre-evaluation hook (Task.before_eval) changes what is evaluated, not what is trained."""
  model, batch = CarryNet(), 32
  task = tasks.Task(
    init_carry=lambda n: jnp.zeros((n, 4)),
    before_eval=lambda state, x, y: state.replace(
      params=jax.tree.map(jnp.zeros_like, state.params)
    ),
  )
  sgd = optax.sgd(0.1)
  x, y, vx, vy = tiny_data()
  cfg = config(
    batch_size=batch, num_steps=2, steps_per_call=2, langevin_steps=1, checkpoint_every_steps=0
  )
  result = loop.train(cfg, model, sgd, (x, y, vx, vy), task=task)
  # With zero weights every logit is 0 and argmax is class 0.
  np.testing.assert_allclose(result.records[-1]["val_error"], np.mean(vy != 0), atol=1e-6)
  # The carry is the hidden state of step 2's mini-batch, from step 1's carry, computed here
  # independently with the parameters of step 1.
  init = jax.jit(lambda s: loop_state.init_state(model, lambda k: sgd, task, x[:1], s, batch))
  state0 = init(jnp.uint32(0))
  idx = np.asarray(tasks.shuffled_batch_indices(state0.data_key, jnp.int32(0), 2, len(x), batch))
  params0 = state0.params
  h1 = jnp.tanh(x[idx[0]] @ params0["Dense_0"]["kernel"] + params0["Dense_0"]["bias"])
  grads = jax.grad(
    lambda p: tasks.cross_entropy(
      model.apply({"params": p}, x[idx[0]], jnp.zeros((batch, 4)), train=True)[0], y[idx[0]]
    )
  )(params0)
  params1 = jax.tree.map(lambda p, g: p - 0.1 * g, params0, grads)
  h2 = jnp.tanh(x[idx[1]] @ params1["Dense_0"]["kernel"] + params1["Dense_0"]["bias"] + h1)
  np.testing.assert_allclose(result.state.carry, h2, rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(result.state.params["Dense_0"]["kernel"]).sum()) > 0  # trained as usual


class _Terminal(io.StringIO):
  def isatty(self):
    return True


@pytest.mark.parametrize("progress", [True, False])
def test_progress_bar_only_on_a_terminal(progress, capsys, monkeypatch):
  """The loop lets tqdm decide (disable=None): a bar on a terminal, none in a log file."""
  seen = []
  real_tqdm = loop.tqdm

  def recording_tqdm(*args, **kwargs):
    seen.append(kwargs["disable"])
    return real_tqdm(*args, **kwargs)

  monkeypatch.setattr(loop, "tqdm", recording_tqdm)
  cfg = config(langevin_steps=1, num_steps=4, eval_every_steps=0, checkpoint_every_steps=0)
  loop.train(cfg, MODEL, optax.sgd(0.1), tiny_data(), progress=progress)
  assert seen == [None if progress else True]
  err = capsys.readouterr().err  # not a terminal: nothing drawn either way
  assert "\r" not in err and "step/s" not in err
  # What disable=None means to tqdm: drawn on a terminal only.
  terminal, log = _Terminal(), io.StringIO()
  for file in (terminal, log):
    for _ in real_tqdm(range(3), disable=None if progress else True, file=file):
      pass
  assert ("\r" in terminal.getvalue()) == progress and log.getvalue() == ""


def test_a_mesh_without_the_loop_axes_is_refused_before_compiling():
  """The loop checks a mesh it is given as ``--mesh`` is checked (distributed.check_mesh)."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("x",))
  cfg = config(num_steps=10, eval_every_steps=0, checkpoint_every_steps=0)
  with pytest.raises(schema.ConfigError, match="needs an axis named 'seed' or 'data'"):
    loop.train(cfg, MODEL, TX, tiny_data(), mesh=mesh)


def test_a_saved_config_reads_back_equal_even_with_an_infinite_rho():
  """config.json is strict JSON (inf is written as null): a resumed hard-coupled Parle run
  (--rho inf) must read its rho back as inf, not None."""
  config = RunConfig(optimizer="parle", replicas=2, rho=float("inf"), dropout=None)
  saved = json.loads(directory.to_json(dataclasses.asdict(config)))
  assert saved["rho"] is None and saved["dropout"] is None
  assert schema.from_json(saved) == config


def test_old_checkpoints_go_only_after_the_new_one_verifies(monkeypatch, tmp_path):
  """keep=2: a kill after orbax completed step 3 but before its checksums leaves steps 1 and 2
  both verified (orbax's own max_to_keep would have deleted step 1 already); the next complete
  save deletes the oldest."""
  state = {"step": np.int32(0), "w": np.arange(4, dtype=np.float32)}
  with checkpoints.Checkpoints(tmp_path, keep=2) as ckpts:
    for step in (1, 2):
      ckpts.save(step, dict(state, step=np.int32(step)))
    assert ckpts.steps() == [1, 2]

    def killed(step_dir):
      raise KeyboardInterrupt  # a kill between orbax's rename and the checksums

    digests = checkpoints._file_digests
    monkeypatch.setattr(checkpoints, "_file_digests", killed)
    with pytest.raises(KeyboardInterrupt):
      ckpts.save(3, dict(state, step=np.int32(3)))
    monkeypatch.setattr(checkpoints, "_file_digests", digests)
    assert ckpts.steps() == [1, 2, 3]
    assert [ckpts.problem(s) is None for s in (1, 2)] == [True, True]
    assert "no checksum" in ckpts.problem(3)
  with checkpoints.Checkpoints(tmp_path, keep=2) as ckpts:
    assert ckpts.latest_good(log=lambda _: None) == 2  # step 3 set aside
    assert ckpts.steps() == [1, 2]
    ckpts.save(4, dict(state, step=np.int32(4)))
    assert ckpts.steps() == [2, 4]
    assert sorted(p.name for p in ckpts.checksums.iterdir()) == ["2.json", "4.json"]
    np.testing.assert_array_equal(ckpts.restore(2, None)["w"], state["w"])
