"""Text corpora and stateful BPTT batching, on files written by the tests (offline)."""

import numpy as np
import pytest

from experiments.data import text as text_data

TRAIN = "the cat sat on the mat\nthe dog <unk> \n\n a cat ran\n"
VALID = "the cat <unk>\na dog\n"
TEST = "the mat\n"


def _write_ptb(folder, train=TRAIN, valid=VALID, test=TEST):
  for split, text in (("train", train), ("valid", valid), ("test", test)):
    (folder / f"ptb.{split}.txt").write_text(text, encoding="utf-8")
  return folder


def test_ptb_vocabulary_unk_and_end_of_sentence_tokens(tmp_path):
  corpus = text_data.read_ptb(_write_ptb(tmp_path))
  # Counts: <eos> 3, the 3, cat 2, then once each; ties alphabetical; blank lines carry no <eos>.
  assert corpus.vocabulary == (
    "<eos>",
    "the",
    "cat",
    "<unk>",
    "a",
    "dog",
    "mat",
    "on",
    "ran",
    "sat",
  )
  assert corpus.decode(corpus.train) == (
    "the cat sat on the mat <eos> the dog <unk> <eos> a cat ran <eos>".split()
  )
  assert corpus.decode(corpus.valid) == "the cat <unk> <eos> a dog <eos>".split()
  assert corpus.decode(corpus.test) == ["the", "mat", "<eos>"]
  assert corpus.train.dtype == np.int32 and corpus.vocab_size == 10


@pytest.mark.parametrize("missing", ["train", "valid", "test"])
def test_ptb_missing_file_says_where_to_get_it(tmp_path, missing):
  _write_ptb(tmp_path)
  (tmp_path / f"ptb.{missing}.txt").unlink()
  with pytest.raises(
    text_data.CorpusError,
    match=rf"ptb\.{missing}\.txt not found.*"
    r"simple-examples\.tgz",
  ):
    text_data.read_ptb(tmp_path)


def test_ptb_empty_file_is_an_error(tmp_path):
  _write_ptb(tmp_path, test="\n  \n")
  with pytest.raises(text_data.CorpusError, match=r"ptb\.test\.txt is empty"):
    text_data.read_ptb(tmp_path)


def test_ptb_word_outside_the_vocabulary_names_file_and_word(tmp_path):
  _write_ptb(tmp_path, valid="the cat\nthe zebra sat\n")
  with pytest.raises(
    text_data.CorpusError, match=r"ptb\.valid\.txt has 1 words .* \(first: 'zebra'\).*<unk>"
  ):
    text_data.read_ptb(tmp_path)


def test_char_corpus_splits_80_10_10_in_order():
  text = "".join(chr(ord("a") + (i * 7) % 26) for i in range(1000)) + "é!"
  corpus = text_data.char_corpus(text)
  assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (801, 100, 101)
  assert "".join(corpus.decode(np.concatenate([corpus.train, corpus.valid, corpus.test]))) == text
  assert corpus.vocabulary == tuple(sorted(set(text)))


def test_char_corpus_file_errors(tmp_path):
  with pytest.raises(text_data.CorpusError, match="not found"):
    text_data.read_char_corpus(tmp_path / "war_and_peace.txt")
  (tmp_path / "empty.txt").write_text("")
  with pytest.raises(text_data.CorpusError, match="is empty"):
    text_data.read_char_corpus(tmp_path / "empty.txt")
  (tmp_path / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 10)
  with pytest.raises(text_data.CorpusError, match="not UTF-8"):
    text_data.read_char_corpus(tmp_path / "latin1.txt")
  (tmp_path / "ok.txt").write_text("Война и мир. " * 3, encoding="utf-8")
  assert (
    "".join(
      text_data.read_char_corpus(tmp_path / "ok.txt").decode(
        text_data.read_char_corpus(tmp_path / "ok.txt").train
      )
    )[:5]
    == "Война"
  )


def test_pydoc_corpus_is_the_whole_topics_text():
  from pydoc_data import topics

  text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
  corpus = text_data.pydoc_corpus()
  total = len(corpus.train) + len(corpus.valid) + len(corpus.test)
  assert total == len(text) > 100_000
  assert "".join(corpus.decode(corpus.valid[:200])) == text[len(corpus.train) :][:200]


def test_bptt_segments_follow_each_other_in_every_stream():
  tokens = np.arange(103, dtype=np.int32)
  streams = text_data.bptt_streams(tokens, 4)  # 25 tokens a stream, 3 tokens dropped
  num_steps = 6
  n = text_data.num_segments(streams, num_steps)
  assert n == 4
  segments = [
    tuple(np.asarray(a) for a in text_data.segment(streams, s, num_steps)) for s in range(n)
  ]
  for b in range(4):
    inputs = np.concatenate([x[b] for x, _ in segments])
    targets = np.concatenate([y[b] for _, y in segments])
    np.testing.assert_array_equal(inputs, tokens[25 * b : 25 * b + n * num_steps])
    np.testing.assert_array_equal(targets, inputs + 1)


@pytest.mark.parametrize("length,batch,steps", [(50, 3, 4), (7, 2, 5), (100, 1, 7)])
def test_eval_streams_score_every_prediction_once(length, batch, steps):
  tokens = np.random.default_rng(length).integers(0, 1000, length).astype(np.int32)
  inputs, targets = text_data.eval_streams(tokens, batch, steps)
  pairs = []
  for b in range(batch):  # stream b, segments in order
    x, y = inputs[:, b].reshape(-1), targets[:, b].reshape(-1)
    pairs += [(int(i), int(t)) for i, t in zip(x, y) if t >= 0]
  assert pairs == list(zip(tokens[:-1].tolist(), tokens[1:].tolist()))


def test_streams_too_short_are_errors():
  with pytest.raises(text_data.CorpusError, match="smaller batch size"):
    text_data.bptt_streams(np.arange(5), 4)
  with pytest.raises(text_data.CorpusError, match="at least 20 characters"):
    text_data.char_corpus("abc")
