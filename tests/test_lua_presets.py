"""The Table-1 presets in their two forms (the paper's text, the authors' Lua code): labels,
the Lua code's learning-rate regimes, its optimizer, its mini-batch sampling, and a run whose
evaluation uses BatchNorm statistics re-estimated on the training set."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import entropy_optax
from experiments import configs, mnist
from experiments.launch import components, final_state
from experiments.models import feedforward as models
from experiments.optimizers import registry as optimizers
from experiments.run import directory, saved_config
from experiments.run import schema as config_lib
from experiments.trainer import batchnorm, tasks

# Runs of the harness end to end: CI runs them, `pytest -m "not slow"` leaves them out.
pytestmark = pytest.mark.slow

# train.lua's learning_rate_schedule: (first epoch, last epoch, lr) rows, and its max_epochs.
LUA_REGIMES = {
  ("mnist", "entropy-sgd-lua"): ([(1, 2, 1.0), (3, 15, 0.1)], 5),  # mnistfc (LeNet: 3-7, 8-15)
  ("mnist", "sgd-lua"): ([(1, 30, 0.1), (30, 60, 0.02), (60, 150, 0.004)], 100),
  ("cifar10", "entropy-sgd-lua"): ([(1, 3, 1.0), (4, 6, 0.2), (7, 12, 0.04)], 10),
  ("cifar10", "sgd-lua"): (
    [(1, 60, 0.1), (60, 120, 0.02), (120, 180, 0.004), (180, 250, 0.0008)],
    200,
  ),
}


def lua_lr(regimes, epoch):
  """The first row whose [first, last] holds epoch, as train.lua's loop picks it."""
  return next(lr for first, last, lr in regimes if first <= epoch <= last)


@pytest.mark.parametrize("experiment", ["mnist", "cifar10"])
def test_every_table1_preset_says_which_form_and_figure(experiment):
  figure = {"mnist": "Fig. 4", "cifar10": "Fig. 5"}[experiment]
  for name, preset in getattr(configs, experiment).PRESETS.items():
    lua = name.endswith("-lua")
    if preset.config.optimizer == "sgld":  # App. C.1's baseline: the paper has no figure of it
      assert preset.description.startswith("paper's App. C.1 (no figure)"), name
    elif preset.config.optimizer == "parle":  # the Parle paper's recipe, not Entropy-SGD's
      assert preset.description.startswith("Parle, "), name
      assert "authors' code" in preset.description, name
    else:
      assert preset.description.startswith("Lua code" if lua else "paper's text"), name
      assert figure in preset.description, name
    assert preset.config.bn_reestimate == lua and (preset.config.sampling == "replacement") == lua


@pytest.mark.parametrize("experiment,name", sorted(LUA_REGIMES))
def test_lua_presets_follow_train_lua_regimes(experiment, name):
  config = components.validate(getattr(configs, experiment).PRESETS[name].config)
  regimes, max_epochs = LUA_REGIMES[experiment, name]
  assert config.outer_epochs == max_epochs and config.batch_size == 128
  num_train = 50_000 if experiment == "cifar10" else 60_000
  per_epoch = config_lib.schedule(config, num_train).steps_per_epoch
  schedule = optimizers.learning_rate(config, per_epoch)
  for epoch in range(1, max_epochs + 1):  # the first and the last step of every epoch
    for step in ((epoch - 1) * per_epoch, epoch * per_epoch - 1):
      np.testing.assert_allclose(schedule(step), lua_lr(regimes, epoch), rtol=1e-6)
  lua = config.optimizer == "entropy-sgd-lua"
  assert config.langevin_steps == (20 if lua else 1)
  if experiment == "cifar10":
    assert config.weight_decay == 1e-3 and (not lua or config.gamma0 == 0.03)
    assert components.make_model(config).authors_code  # the layout both codes ran
  elif lua:
    assert (config.gamma0, config.gamma1, config.noise) == (1e-4, 1e-3, 1e-4)


def test_lua_optimizer_entry_is_authors_entropy_sgd_lua():
  config = configs.cifar10.PRESETS["entropy-sgd-lua"].config.replace(langevin_steps=3, noise=0.0)
  tx = optimizers.OPTIMIZERS["entropy-sgd-lua"].make(config, 0.5, 7)
  want = entropy_optax.authors_entropy_sgd(
    0.5,
    code="lua",
    num_langevin_steps=3,
    gamma=0.03,
    scoping=1e-3,
    noise=0.0,
    langevin_lr=0.1,
    momentum=0.9,
    weight_decay=1e-3,
    key=7,
  )
  grad_fn = lambda p, k: jnp.sin(p) * (k + 1.0)
  params = jnp.linspace(-1.0, 1.0, 5)
  got = [
    t.update(grad_fn(params, 0), t.init(params), params, grad_fn=grad_fn)[0] for t in (tx, want)
  ]
  np.testing.assert_allclose(got[0], got[1], rtol=1e-6)
  with pytest.raises(components.ConfigError, match="nesterov"):
    optimizers.OPTIMIZERS["entropy-sgd-lua"].make(config.replace(nesterov=False), 0.5, 7)


def test_replacement_sampling_draws_like_the_codes():
  key = jax.random.key_data(jax.random.PRNGKey(3))
  n, batch, num_batches = 100, 50, 400
  idx = np.asarray(tasks.replacement_batch_indices(key, jnp.int32(0), num_batches, n, batch))
  assert idx.shape == (num_batches, batch) and idx.min() == 0 and idx.max() == n - 1
  # A batch depends only on its number: a resumed run draws the same ones.
  later = tasks.replacement_batch_indices(key, jnp.int32(10), 5, n, batch)
  np.testing.assert_array_equal(later, idx[10:15])
  # With replacement: a batch of 50 out of 100 holds on average 100 (1 - 0.99^50) = 39.5
  # distinct examples (a permutation's slice holds 50), and the counts are uniform.
  distinct = np.mean([len(set(row)) for row in idx])
  assert abs(distinct - 100 * (1 - 0.99**50)) < 0.5
  counts = np.bincount(idx.ravel(), minlength=n)
  assert abs(counts.mean() - 200) < 1e-9 and counts.std() < 1.3 * np.sqrt(200)


class NarrowFC(models.MnistFC):
  hidden: int = 16


def test_lua_preset_run_evaluates_with_statistics_reestimated_on_the_training_set(
  monkeypatch, capsys, tmp_path
):
  """A one-epoch run of the Lua MNIST preset (mock data, narrow mnistfc, L = 2): its final test
  loss is the one of the saved weights with BatchNorm statistics re-estimated on the training
  set, not the one of the statistics the training steps left."""
  from experiments.data import datasets as data

  monkeypatch.setitem(models.MODELS, "mnistfc", NarrowFC)
  tfds = data._import_tfds()
  workdir = tmp_path / "lua"
  argv = [
    "entropy-sgd-lua",
    "--model",
    "mnistfc",
    "--outer-epochs",
    1,
    "--batch-size",
    8,
    "--langevin-steps",
    2,
    "--eval-every-effective-epochs",
    2,
    "--workdir",
    workdir,
    "--no-progress",
  ]
  with tfds.testing.mock_data(num_examples=32):
    code = mnist.main([str(a) for a in argv])
    _, err = capsys.readouterr()
    assert code == 0, err
    config = saved_config.saved_config(workdir, {})
    ds = components.load_data(config)
  assert config.sampling == "replacement" and config.bn_reestimate
  res = directory.read_json(workdir / directory.RESULTS_FILE)
  assert res["optimizer"] == "entropy-sgd-lua" and res["paper"] == "1.37 ± 0.03 (120)"
  variables = final_state.load_final_variables(workdir)
  model = components.make_model(config)

  @jax.jit
  def loss(batch_stats):
    logits = model.apply(
      {"params": variables["params"], "batch_stats": batch_stats},
      jnp.asarray(ds.test_x),
      train=False,
    )
    return tasks.cross_entropy(logits, jnp.asarray(ds.test_y))

  test_loss = lambda batch_stats: float(loss(batch_stats))
  stats = jax.jit(
    lambda p, s, x: batchnorm.reestimate_batch_stats(
      batchnorm.without_dropout(model).apply, p, s, x
    )
  )(variables["params"], variables["batch_stats"], jnp.asarray(ds.train_x))
  logged = [r["val_loss"] for r in directory.read_records(workdir) if "val_loss" in r][-1]
  assert logged == pytest.approx(test_loss(stats), rel=1e-5)
  assert abs(logged - test_loss(variables["batch_stats"])) > 1e-3 * logged
