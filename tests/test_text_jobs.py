"""The text jobs end to end on small files: the char-LSTM main job and the PTB recipes."""

import json
import math

import numpy as np
import pytest

from experiments import charlstm, text_data


def test_charlstm_job_trains_both_optimizers_at_equal_effective_epochs(tmp_path, capsys):
  text = "".join(text_data.pydoc_corpus().decode(text_data.pydoc_corpus().train[:20_000]))
  path = tmp_path / "book.txt"
  path.write_text(text, encoding="utf-8")
  # 16,000 training characters: 50 streams of 320, 6 segments of 50 a pass; 5/6 of an
  # effective epoch is 5 Adam steps and 1 Entropy-Adam step (L = 5).
  charlstm.main(
    [
      "--text",
      str(path),
      "--effective-epochs",
      str(5 / 6),
      "--seeds",
      "2",
      "--evals",
      "1",
      "--workdir",
      str(tmp_path / "run"),
    ]
  )
  out = capsys.readouterr().out
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert (tmp_path / "run" / "valid_cross_entropy.png").stat().st_size > 1000
  for name in ("adam", "entropy_adam"):
    result = results[name]
    assert result["effective_epochs"] == pytest.approx(5 / 6)
    nats, bits = np.array(result["test"]["nats"]), np.array(result["test"]["bits"])
    assert nats.shape == (2,) and np.all(nats < math.log(len(set(text))) + 0.5)
    np.testing.assert_allclose(bits, nats / math.log(2), rtol=1e-6)
    assert f"{name:13s}   0.83" in out
  # Seeds differ (their own init, dropout and Langevin noise keys).
  assert results["entropy_adam"]["test"]["nats"][0] != results["entropy_adam"]["test"]["nats"][1]


def test_charlstm_job_missing_text_is_a_one_line_error(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    charlstm.main(["--text", str(tmp_path / "missing.txt")])
  assert exit_info.value.code == 2
  assert "missing.txt not found" in capsys.readouterr().err


def test_ptb_job_on_written_files(tmp_path, capsys):
  from experiments import ptb

  rng = np.random.default_rng(0)
  words = [f"w{i}" for i in range(30)] + ["<unk>"]
  for split, lines in (("train", 400), ("valid", 20), ("test", 20)):
    text = "\n".join(" " + " ".join(rng.choice(words, 8)) for _ in range(lines))
    (tmp_path / f"ptb.{split}.txt").write_text(text + "\n")
  # 3,600 training words: 20 streams of 180, 5 segments of 35; L = 5 takes one outer step.
  ptb.main(
    [
      "--data-dir",
      str(tmp_path),
      "--size",
      "small",
      "--presets",
      "ptb-entropy-sgd",
      "--outer-epochs",
      "0.2",
      "--evals",
      "1",
      "--workdir",
      str(tmp_path / "run"),
    ]
  )
  out = capsys.readouterr().out
  result = json.loads((tmp_path / "run" / "results.json").read_text())["ptb-entropy-sgd"]
  assert result["effective_epochs"] == pytest.approx(1.0)
  ppl = result["test"]["perplexity"][0]
  assert 1 < ppl < 2 * 32  # about uniform over 32 words after one step
  assert "ptb-entropy-sgd     1.00" in out and "77.656" in out


def test_ptb_job_without_data_says_where_to_get_it(tmp_path, capsys):
  from experiments import ptb

  with pytest.raises(SystemExit) as exit_info:
    ptb.main(["--data-dir", str(tmp_path)])
  assert exit_info.value.code == 2
  assert "simple-examples.tgz" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    ptb.main(["--help"])
  assert "simple-examples.tgz" in capsys.readouterr().out


def test_readme_commands_of_the_recurrent_section_parse():
  import pathlib
  import re

  from experiments import ptb

  readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
  section = readme.split("## Recurrent experiments")[1].split("\n## ")[0]
  commands = [
    line.split("#")[0].split()
    for block in re.findall(r"```bash\n(.*?)```", section, re.S)
    for line in block.splitlines()
    if line.startswith("python -m experiments.")
  ]
  parsers = {"experiments.charlstm": charlstm.build_parser, "experiments.ptb": ptb.build_parser}
  assert sorted({argv[2] for argv in commands}) == sorted(parsers)
  for argv in commands:
    parsers[argv[2]]().parse_args(argv[3:])


def test_charlstm_run_interrupted_and_resumed_equals_the_uninterrupted_run(tmp_path):
  import dataclasses

  import jax

  from experiments import checkpoints as ckpt_lib
  from experiments import lm_training, recurrent_models, recurrent_recipes

  corpus = text_data.char_corpus(
    "".join(text_data.pydoc_corpus().decode(text_data.pydoc_corpus().train[:6000]))
  )
  model = recurrent_models.char_lstm(corpus.vocab_size, hidden_size=16)
  # Entropy-Adam: Adam's moments, the Langevin noise key, dropout key and LSTM carry all resume.
  recipe = dataclasses.replace(
    recurrent_recipes.RECIPES["charlstm-entropy-adam"], batch_size=4, num_steps=10, outer_epochs=0.3
  )  # 120 segments: 36 outer steps
  run = lambda workdir, **kw: lm_training.train_and_evaluate(
    recipe, model, corpus, [0, 1], num_evals=3, workdir=workdir, **kw
  )
  whole = run(tmp_path / "whole")
  assert run(tmp_path / "cut", stop_after_calls=1) is None  # "killed" after its first checkpoint
  with pytest.raises(ckpt_lib.CheckpointError, match="--resume"):
    run(tmp_path / "cut")
  resumed = run(tmp_path / "cut", resume=True)
  assert resumed["curve"] == whole["curve"] and resumed["test"] == whole["test"]
  final = [ckpt_lib.Checkpoints(tmp_path / d).restore(36, None) for d in ("whole", "cut")]
  jax.tree.map(np.testing.assert_array_equal, *final)
  with pytest.raises(ckpt_lib.CheckpointError, match="nothing to resume"):
    run(tmp_path / "empty", resume=True)
