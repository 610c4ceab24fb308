"""The text jobs end to end on small inputs, through the harness: the char-LSTM main job, the
PTB presets on written files, kill + resume bit for bit, the Table-1 rows."""

import json
import math
import pathlib

import jax
import numpy as np
import pytest

import entropy_optax
from experiments import charlstm, ptb
from experiments.configs import charlstm as charlstm_configs
from experiments.data import text
from experiments.launch import final_state
from experiments.models import recurrent as rm
from experiments.optimizers import registry as optimizers
from experiments.reporting import tables
from experiments.run import checkpoints
from experiments.run.directory import read_records
from experiments.trainer import bptt, loop, loop_state, tasks
from tests import test_training as t

# Runs of the harness end to end: CI runs them, `pytest -m "not slow"` leaves them out.
pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parent.parent
QUIET = ["--no-progress"]


def test_charlstm_job_trains_both_optimizers_at_equal_effective_epochs(tmp_path, capsys):
  # 12,550 training characters: 50 streams of 251, 5 segments of 50 a pass; one effective
  # epoch is 5 Adam steps and 1 Entropy-Adam step (L = 5).
  code = charlstm.main(
    [
      "--batch-size",
      "50",
      "--num-train",
      "12550",
      "--num-test",
      "2600",
      "--effective-epochs",
      "1",
      "--num-seeds",
      "2",
      "--eval-every-effective-epochs",
      "1",
      "--workdir",
      str(tmp_path / "run"),
      *QUIET,
    ]
  )
  assert code == 0
  out = capsys.readouterr().out
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert (tmp_path / "run" / "valid_cross_entropy.png").stat().st_size > 1000
  vocab = text.pydoc_corpus().vocab_size
  for name, updates in (("adam", 5), ("entropy-adam", 1)):
    result = results[f"char_lstm-{name}"]
    assert result["effective_epochs"] == 1 and result["outer_steps"] == updates
    valid, test = np.array(result["val_loss"]), np.array(result["heldout_loss"])
    assert valid.shape == test.shape == (2,) and np.all(test < math.log(vocab) + 0.5)
    assert valid[0] != valid[1]  # seeds differ (init, Langevin noise)
    # The validation loss is the last evaluated record's.
    last = [r for r in read_records(tmp_path / "run" / f"char_lstm-{name}") if "val_loss" in r]
    np.testing.assert_allclose(valid, [r["val_loss"] for r in last[-2:]], rtol=1e-6)
    np.testing.assert_allclose(last[-1]["val_bits"], last[-1]["val_loss"] / math.log(2))
  assert "| char-LSTM | Entropy-Adam |" in out and "War and Peace: 1.217 ± 0.005 nats" in out
  assert "bits" in out and "| 1 | 5 | 2 |" in out and "| 1 | 1 | 2 |" in out


def test_charlstm_job_missing_text_is_a_one_line_error(tmp_path, capsys):
  code = charlstm.main(["--text-file", str(tmp_path / "missing.txt"), "--workdir", str(tmp_path)])
  err = capsys.readouterr().err
  assert code == 1 and "--text-file" in err and "missing.txt not found" in err
  assert len(err.strip().splitlines()) == 1


def _write_ptb(folder, rng):
  words = [f"w{i}" for i in range(30)] + ["<unk>"]
  for split, lines in (("train", 400), ("valid", 20), ("test", 20)):
    text = "\n".join(" " + " ".join(rng.choice(words, 8)) for _ in range(lines))
    (folder / f"ptb.{split}.txt").write_text(text + "\n")
  return folder


def test_ptb_preset_on_written_files(tmp_path, capsys):
  data = _write_ptb(tmp_path, np.random.default_rng(0))
  # 3,600 training words: 20 streams of 180, 5 segments of 35; L = 5: one outer step a pass.
  argv = ["entropy-sgd", "--data-dir", str(data), "--model", "ptb_small", "--clip-norm", "5"]
  code = ptb.main(argv + ["--outer-epochs", "0.2", "--workdir", str(tmp_path / "run"), *QUIET])
  assert code == 0
  out = capsys.readouterr().out
  result = json.loads((tmp_path / "run" / "results.json").read_text())
  assert result["effective_epochs"] == pytest.approx(1.0) and result["outer_steps"] == 1
  ppl = math.exp(result["heldout_loss"][0])
  assert 1 < ppl < 2 * 32  # about uniform over 32 words after one step
  assert "test ppl" in out and "paper: 77.656" not in out  # the paper's is for ptb_large
  assert "effective epochs" in out


def test_ptb_without_data_says_where_to_get_it(tmp_path, capsys):
  code = ptb.main(["sgd", "--data-dir", str(tmp_path), "--workdir", str(tmp_path / "run")])
  err = capsys.readouterr().err
  assert code == 1 and "simple-examples.tgz" in err and len(err.strip().splitlines()) == 1
  code = ptb.main(["sgd", "--workdir", str(tmp_path / "run")])
  assert code == 1 and "--data-dir" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    ptb.main(["--help"])
  assert "simple-examples.tgz" in capsys.readouterr().out


def test_presets_say_which_figure_and_follow_the_paper():
  from experiments.configs import ptb as ptb_configs

  for module, figure in ((ptb_configs, "Fig. 6a"), (charlstm_configs, "Fig. 6b")):
    for preset in module.PRESETS.values():
      assert preset.description.startswith(f"Table 1 / {figure}")
  sgd, esgd = ptb_configs.PRESETS["sgd"].config, ptb_configs.PRESETS["entropy-sgd"].config
  adam, eadam = (charlstm_configs.PRESETS[n].config for n in ("adam", "entropy-adam"))
  assert [c.effective_epochs for c in (sgd, esgd, adam, eadam)] == [55, 25, 50, 25]
  # Learning rates per outer epoch: (epoch, lr) pairs from the paper's text.
  expected = {
    sgd: [(0, 1.0), (13.9, 1.0), (14, 1 / 1.15), (16.5, 1.15**-3), (54.9, 1.15**-41)],
    esgd: [(0, 1.0), (2.9, 1.0), (3, 0.1), (4, 0.01)],
    adam: [(0, 2e-3), (4.9, 2e-3), (5, 1e-3), (49, 2e-3 / 2**9)],
    eadam: [(0, 1e-2), (1, 5e-3), (4.5, 1e-2 / 16)],
  }
  for config, pairs in expected.items():
    schedule = optimizers.learning_rate(config, 10)  # 10 steps an outer epoch
    for epoch, lr in pairs:
      np.testing.assert_allclose(schedule(round(epoch * 10)), lr, rtol=1e-5)
  assert (esgd.momentum, esgd.nesterov, esgd.scoping, esgd.gamma0) == (0.5, True, "none", 1e-3)
  assert (eadam.b1, eadam.gamma0, eadam.scoping) == (0.5, 0.01, "none")


def test_table1_rows_of_the_language_models():
  def run(dataset, model, optimizer, nats, paper):
    return {
      "path": "runs/x/" + optimizer,
      "dataset": dataset,
      "model": model,
      "optimizer": optimizer,
      "seeds": [0, 1],
      "test_error_mean": 50.0,
      "test_error_std": 1.0,
      "heldout_loss": nats,
      "effective_epochs": 25,
      "paper": paper,
    }

  table = tables.table1(
    [
      run("ptb", "ptb_large", "sgd", [math.log(80), math.log(82)], "78.6 ± 0.26 (55)"),
      run("ptb", "ptb_large", "entropy-sgd", [math.log(77)] * 2, "77.656 ± 0.171 (25)"),
      run("chars:2600-0.txt", "char_lstm", "adam", [1.2, 1.3], "1.226"),
      run("chars:2600-0.txt", "char_lstm", "entropy-adam", [1.25, 1.25], "1.217"),
    ]
  )
  rows = table.splitlines()[2:]
  assert rows[0].startswith("| PTB-LSTM | PTB | Entropy-SGD | ppl 77.00 ± 0.00 (2) | 25 |")
  assert f"| SGD | ppl 81.00 ± {np.std([80, 82], ddof=1):.2f} (2) |" in rows[0]
  assert "77.656 ± 0.171 (25)" in rows[0] and "78.6 ± 0.26 (55)" in rows[0]
  bits = 1.25 / math.log(2)
  assert rows[1].startswith(
    f"| char-LSTM | War and Peace | Entropy-Adam | 1.250 ± 0.000 nats, {bits:.3f} bits (2) |"
  )
  assert "| Adam | 1.250 ± 0.071 nats" in rows[1]


def test_charlstm_run_killed_and_resumed_equals_the_uninterrupted_run(tmp_path):
  corpus = text.pydoc_corpus()
  model = rm.char_lstm(corpus.vocab_size, hidden_size=16)
  data = (
    *bptt.train_examples(corpus.train[:6000], 4, 10),  # 149 segments: 29 outer steps a pass
    *bptt.eval_examples(corpus.valid[:400], 4, 10),
  )
  # Entropy-Adam: Adam's moments, the Langevin noise key, dropout key and LSTM carry all
  # resume; 36 steps cross the pass boundary at 29 (the carry restarts there).
  make_tx = lambda key: entropy_optax.entropy_adam(
    1e-2, b1=0.5, num_langevin_steps=5, gamma=0.01, langevin_lr=0.1, noise=1e-4, key=key
  )
  order = bptt.SegmentOrder(5)
  task = tasks.Task(
    batch_indices=order,
    carry_reset=order.starts_pass,
    init_carry=bptt.ZeroCarry(model),
    clip_norm=5.0,
  )
  config = t.config(
    num_steps=36,
    eval_every_steps=12,
    checkpoint_every_steps=12,
    num_examples=len(data[0]),
    optimizer="entropy-adam",
    batch_size=4,
    langevin_steps=5,
    steps_per_call=12,
    eval_batch_size=4,
    num_seeds=2,
  )
  run = lambda workdir, **kw: loop.train(config, model, make_tx, data, workdir, task=task, **kw)
  whole = run(tmp_path / "whole")

  with pytest.raises(t.Killed):
    run(tmp_path / "cut", callback=t.kill_at(24))
  resumed = run(tmp_path / "cut")
  assert [r["step"] for r in resumed.records] == [36, 36]
  jax.tree.map(
    np.testing.assert_array_equal,
    loop_state.state_dict(resumed.state),
    loop_state.state_dict(whole.state),
  )
  drop_time = lambda rs: [{k: v for k, v in r.items() if k != "wall_time"} for r in rs]
  assert drop_time(read_records(tmp_path / "cut")) == drop_time(read_records(tmp_path / "whole"))
  with checkpoints.Checkpoints(tmp_path / "cut") as ckpts:
    assert ckpts.steps() == [24, 36]


def test_flatness_of_the_small_char_lstm(tmp_path, capsys):
  from experiments import flatness
  from experiments.configs.flatness import JOBS
  from experiments.launch import components

  workdir = tmp_path / "flat"
  argv = ["charlstm", "--effective-epochs", "1", "--num-train", "20000", "--num-test", "3000"]
  argv += ["--lanczos-iters", "4", "--slq-samples", "1", "--hessian-examples", "64"]
  assert flatness.main(argv + ["--hessian-batch", "32", "--workdir", str(workdir), *QUIET]) == 0
  columns = json.loads((workdir / "flatness.json").read_text())
  vocab = text.pydoc_corpus().vocab_size
  assert set(columns) == {"Adam", "Entropy-Adam"}
  # The training loss of the first 64 segments of 32 characters, each from the zero state,
  # recomputed here from the final parameters.
  config = JOBS["charlstm"][1].recipe["adam"]
  config = config.replace(model="small_char_lstm", num_train=20000, num_test=3000)
  x, y = bptt.text_split(config, None, "train")
  model = rm.small_char_lstm(vocab)
  params = final_state.load_final_variables(workdir / "adam")["params"]
  logits, _ = model.apply({"params": params}, x[:64], rm.zero_state(model, 64), train=False)
  expected = float(
    np.mean(-jax.nn.log_softmax(logits)[np.arange(64)[:, None], np.arange(32), y[:64]])
  )
  np.testing.assert_allclose(columns["Adam"]["loss"], expected, rtol=1e-5)
  assert components.make_model(config, vocab) == model
  assert columns["Adam"]["num_params"] == rm.count_params(model) == 32_544 + 241 * (vocab - 96)
  assert columns["Adam"]["method"] == "lanczos" and columns["Adam"]["examples"] == 64
