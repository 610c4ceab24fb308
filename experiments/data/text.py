"""Text corpora for the recurrent experiments, and their stateful truncated-BPTT batching.

Three corpora, each a ``TextCorpus`` of int32 token ids (train/valid/test) and its vocabulary:

* ``read_ptb(directory)``: Penn Treebank as Mikolov prepared it (``ptb.train.txt``,
  ``ptb.valid.txt``, ``ptb.test.txt``: one sentence a line, rare words already ``<unk>``).
  As in Zaremba et al.'s reader, every line ends with an ``<eos>`` token and the vocabulary
  (10,000 words with ``<eos>``) is built from the training file, most frequent first. TensorFlow
  Datasets has no PTB builder (checked: tfds 4.9), so the files are read directly.
* ``char_corpus(text)``: characters of any text, split 80/10/10 in order (the paper's War and
  Peace split); the vocabulary is every character of the whole text (as char-rnn does), sorted.
* ``pydoc_corpus()``: the Python documentation topics that ship with CPython
  (``pydoc_data.topics``, ~465,000 characters, 103 symbols): a real English text that needs no
  download, the offline default.

Training data is cut the way Zaremba et al. and char-rnn cut it (``bptt_streams``): the token
sequence is split into ``batch_size`` parallel streams, and segment s of every stream is
tokens [s T, (s + 1) T) with targets one token later, so consecutive segments of a stream follow
each other and the LSTM state can be carried from one to the next. ``eval_streams`` does the same
for evaluation, padded and masked so that every token of a split is scored exactly once.
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
from pydoc_data import topics

import jax
import numpy as np

PTB_FILES = {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"}
PTB_SOURCE = (
  "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz (its data/ folder holds "
  "ptb.train.txt, ptb.valid.txt and ptb.test.txt)"
)
END_OF_SENTENCE = "<eos>"
UNKNOWN = "<unk>"
CHAR_SPLIT = (0.8, 0.1, 0.1)


class CorpusError(ValueError):
  """A corpus file is missing, empty, or does not fit the vocabulary."""


@dataclasses.dataclass(frozen=True, eq=False)
class TextCorpus:
  """Token ids of the three splits of a text corpus.

  Attributes:
    train: int32 token ids of the training split, in text order.
    valid: int32 token ids of the validation split.
    test: int32 token ids of the test split.
    vocabulary: the token of each id (words, or single characters).
    name: what the corpus is, e.g. ``"ptb"`` or ``"chars:pydoc_data.topics"``.
  """

  train: np.ndarray
  valid: np.ndarray
  test: np.ndarray
  vocabulary: tuple[str, ...]
  name: str = ""

  @property
  def vocab_size(self) -> int:
    return len(self.vocabulary)

  def decode(self, ids) -> list[str]:
    """The tokens of ``ids``."""
    return [self.vocabulary[i] for i in np.asarray(ids).reshape(-1)]


# ---------------------------------------------------------------------------
# Penn Treebank.
# ---------------------------------------------------------------------------


def _read_words(path: pathlib.Path) -> list[str]:
  """The words of a PTB file, ``<eos>`` after every non-blank line (PTB has no blank lines)."""
  if not path.is_file():
    raise CorpusError(
      f"{path} not found. Penn Treebank is not downloaded automatically: get {PTB_SOURCE} "
      "and pass the folder holding the three files."
    )
  lines = path.read_text(encoding="utf-8").splitlines()
  words = []
  for line in lines:
    if line.strip():
      words.extend(line.split())
      words.append(END_OF_SENTENCE)
  if not words:
    raise CorpusError(f"{path} is empty: a PTB file holds one sentence per line.")
  return words


def read_ptb(directory: str | pathlib.Path) -> TextCorpus:
  """Penn Treebank from ``ptb.{train,valid,test}.txt`` in ``directory``.

  Args:
    directory: the folder with the three files (Mikolov's ``simple-examples/data``).

  Returns:
    A ``TextCorpus``; the vocabulary is the training file's words sorted by decreasing count
    (ties alphabetically), ``<eos>`` included.

  Raises:
    CorpusError: a file is missing or empty (the message says where to get PTB), or the
      validation or test file has a word the training file does not (PTB has ``<unk>`` in place
      of every rare word, so this means the files are not PTB's).

  Examples:
    >>> import pathlib, tempfile
    >>> from experiments.data.text import read_ptb
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for split in ("train", "valid", "test"):
    ...   _ = (folder / f"ptb.{split}.txt").write_text(" the cat <unk> \\n the dog \\n")
    >>> corpus = read_ptb(folder)
    >>> corpus.vocabulary, corpus.train.tolist()
    (('<eos>', 'the', '<unk>', 'cat', 'dog'), [1, 3, 2, 0, 1, 4, 0])
  """
  directory = pathlib.Path(directory)
  words = {split: _read_words(directory / name) for split, name in PTB_FILES.items()}
  counts = collections.Counter(words["train"])
  vocabulary = tuple(word for word, _ in sorted(counts.items(), key=lambda wc: (-wc[1], wc[0])))
  ids = {word: i for i, word in enumerate(vocabulary)}
  splits = {}
  for split, split_words in words.items():
    unknown = [w for w in split_words if w not in ids]
    if unknown:
      raise CorpusError(
        f"{directory / PTB_FILES[split]} has {len(unknown)} words that "
        f"{PTB_FILES['train']} does not (first: {unknown[0]!r}); in PTB every rare word is "
        f"already {UNKNOWN}: use the files of {PTB_SOURCE}."
      )
    splits[split] = np.array([ids[w] for w in split_words], np.int32)
  return TextCorpus(**splits, vocabulary=vocabulary, name="ptb")


# ---------------------------------------------------------------------------
# Character corpora.
# ---------------------------------------------------------------------------


def char_corpus(text: str, name: str = "chars") -> TextCorpus:
  """Characters of ``text`` split 80/10/10 in order (train, validation, test).

  Args:
    text: the whole text.
    name: a label for the corpus.

  Returns:
    A ``TextCorpus`` over the sorted set of the text's characters.

  Raises:
    CorpusError: the text is too short to give every split at least two characters.

  Examples:
    >>> from experiments.data.text import char_corpus
    >>> corpus = char_corpus("abcabcabcaxyzxyzxyzx")
    >>> corpus.vocab_size, len(corpus.train), corpus.decode(corpus.test)
    (6, 16, ['z', 'x'])
  """
  if len(text) < 20:
    raise CorpusError(
      f"A character corpus needs at least 20 characters (2 per 10% split); got {len(text)}."
    )
  vocabulary = tuple(sorted(set(text)))
  lookup = np.zeros(max(map(ord, vocabulary)) + 1, np.int32)
  lookup[[ord(c) for c in vocabulary]] = np.arange(len(vocabulary), dtype=np.int32)
  ids = lookup[np.frombuffer(text.encode("utf-32-le"), np.uint32)]
  train_end = int(len(ids) * CHAR_SPLIT[0])
  valid_end = int(len(ids) * (CHAR_SPLIT[0] + CHAR_SPLIT[1]))
  return TextCorpus(
    ids[:train_end], ids[train_end:valid_end], ids[valid_end:], vocabulary=vocabulary, name=name
  )


def read_char_corpus(path: str | pathlib.Path) -> TextCorpus:
  """``char_corpus`` of a UTF-8 text file (e.g. Project Gutenberg's War and Peace, 2600-0.txt).

  Raises:
    CorpusError: the file is missing, empty, or not UTF-8.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise CorpusError(f"{path} not found: pass a UTF-8 text file.")
  try:
    text = path.read_text(encoding="utf-8")
  except UnicodeDecodeError as error:
    raise CorpusError(f"{path} is not UTF-8 text ({error}).") from None
  if not text:
    raise CorpusError(f"{path} is empty.")
  return char_corpus(text, name=f"chars:{path.name}")


def pydoc_corpus() -> TextCorpus:
  """The offline default: ``pydoc_data.topics`` (ships with CPython), topics in sorted order."""

  text = "\n\n".join(topics.topics[key] for key in sorted(topics.topics))
  return char_corpus(text, name="chars:pydoc_data.topics")


# ---------------------------------------------------------------------------
# Stateful truncated BPTT.
# ---------------------------------------------------------------------------


def bptt_streams(tokens: np.ndarray, batch_size: int) -> np.ndarray:
  """Cuts ``tokens`` into ``batch_size`` parallel streams, the tail dropped (Zaremba's reader).

  Stream b is ``tokens[b n : (b + 1) n]`` with n = len(tokens) // batch_size. Segment s of
  length T has inputs ``streams[:, s T : (s + 1) T]`` and targets one token later, so there are
  ``num_segments(streams, T) = (n - 1) // T`` segments per pass.

  Raises:
    CorpusError: fewer than 2 tokens per stream.

  Examples:
    >>> import numpy as np
    >>> from experiments.data.text import bptt_streams, segment
    >>> streams = bptt_streams(np.arange(10), 2)
    >>> streams.tolist()
    [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    >>> [a.tolist() for a in segment(streams, 1, 2)]
    [[[2, 3], [7, 8]], [[3, 4], [8, 9]]]
  """
  stream_length = len(tokens) // batch_size
  if stream_length < 2:
    raise CorpusError(
      f"{len(tokens)} tokens cannot make {batch_size} streams of at least 2 tokens: use a "
      "smaller batch size or a longer text."
    )
  return np.asarray(tokens[: batch_size * stream_length], np.int32).reshape(batch_size, -1)


def num_segments(streams: np.ndarray, num_steps: int) -> int:
  """Segments of ``num_steps`` tokens (with their next-token targets) in one pass of the streams."""
  return (streams.shape[-1] - 1) // num_steps


def segment(streams, index, num_steps: int):
  """``(inputs, targets)`` of segment ``index`` (may be traced), each (batch, num_steps)."""

  start = index * num_steps
  batch = streams.shape[0]
  inputs = jax.lax.dynamic_slice(streams, (0, start), (batch, num_steps))
  targets = jax.lax.dynamic_slice(streams, (0, start + 1), (batch, num_steps))
  return inputs, targets


def eval_streams(
  tokens: np.ndarray, batch_size: int, num_steps: int
) -> tuple[np.ndarray, np.ndarray]:
  """Streams that score every next-token prediction of ``tokens`` exactly once.

  The len(tokens) - 1 (input, target) pairs are cut into ``batch_size`` consecutive streams, each
  padded to a multiple of ``num_steps``; padding has target -1.

  Returns:
    ``(inputs, targets)``, int32 arrays (num_segments, batch_size, num_steps); segment s of every
    stream follows segment s - 1, so the LSTM state is carried across them.

  Examples:
    >>> import numpy as np
    >>> from experiments.data.text import eval_streams
    >>> inputs, targets = eval_streams(np.arange(6), 2, 2)
    >>> inputs.tolist(), targets.tolist()
    ([[[0, 1], [3, 4]], [[2, 0], [0, 0]]], [[[1, 2], [4, 5]], [[3, -1], [-1, -1]]])
  """
  pairs = len(tokens) - 1
  if pairs < 1:
    raise CorpusError("An evaluation split needs at least 2 tokens.")
  # Stream b takes pairs [b m, (b + 1) m) with m = ceil(pairs / batch_size), padded to a multiple
  # of num_steps.
  m = -(-pairs // batch_size)
  per_stream = -(-m // num_steps) * num_steps
  inputs = np.zeros(batch_size * per_stream, np.int32)
  targets = np.full(batch_size * per_stream, -1, np.int32)
  for b in range(batch_size):
    lo, hi = b * m, min((b + 1) * m, pairs)
    if lo < hi:
      inputs[b * per_stream : b * per_stream + hi - lo] = tokens[lo:hi]
      targets[b * per_stream : b * per_stream + hi - lo] = tokens[lo + 1 : hi + 1]
  shape = (batch_size, per_stream // num_steps, num_steps)
  return (inputs.reshape(shape).transpose(1, 0, 2), targets.reshape(shape).transpose(1, 0, 2))
