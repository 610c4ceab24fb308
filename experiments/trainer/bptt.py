"""Stateful truncated BPTT on the experiments harness: a text's examples, their order, the carry.

A text enters the loop (``experiments.trainer.loop``) as examples that are (stream, segment) pairs:
``train_examples`` cuts the tokens into ``batch_size`` parallel streams (``text_data``) and
example ``s B + b`` is segment s of stream b (T tokens, targets one token later), so mini-batch
s of the loop's index-based batching, indices ``s B .. s B + B - 1``, is segment s of every
stream. ``SegmentOrder`` is the loop's ``Task.batch_indices``: an outer step takes L consecutive
segments (L = 1 for SGD and Adam, L = ``num_langevin_steps`` for Entropy-SGD / Entropy-Adam):
outer step t of a data pass uses segments t L .. t L + L - 1, so every gradient evaluation sees
fresh text, as the paper's fresh mini-batch per Langevin step, and one data pass is
``num_segments // L`` outer steps (the last ``num_segments mod L`` segments of a pass are not
used). ``SegmentOrder.starts_pass`` is ``Task.carry_reset``: the LSTM state is reset to zero
(``ZeroCarry``, ``Task.init_carry``) at the start of each pass. ``eval_examples`` lays out a
split for ``steps.evaluate``, which carries the state through consecutive evaluation batches.

The LSTM state during an Entropy-SGD step (the policy, beside the BatchNorm one of
``entropy_optax.flax``):

* Step 0 is the caller's own forward and backward pass at the kept weights x on segment t L,
  from the carried state. Its gradient is Langevin step 0 (``local_entropy``'s contract), and
  its final state, computed with x, is what is carried: the state always describes x, never a
  Langevin sample.
* Langevin steps k = 1..L-1 (``grad_fn``) run at x' on segment t L + k from that same state, the
  one step 0 ends with, and their final states are discarded. Step 1's initial state is thus
  exact (segment t L + 1 follows t L, and the state comes from x); step k's is k - 1 segments
  old. Carrying each Langevin step's state to the next would make it a sample's and would need
  ``grad_fn`` to return it; re-running x over the skipped segments would cost forward passes.
* An outer step costs exactly L gradient evaluations, and the state the next step starts from
  is L - 1 segments behind its segment: with L = 1 (SGD) it is ordinary stateful truncated BPTT.

Gradient clipping by global norm (Zaremba: 10 for the large PTB model, 5 otherwise; char-rnn: 5)
acts on every gradient evaluation before the optimizer sees it: the caller's gradient at x and
each ``grad_fn`` gradient inside the Langevin chain, so that with the paper's Langevin learning
rate of 1 each Langevin step is a clipped SGD step, as a step of the baseline is. The outer
gradient x - mu is not clipped: it is at most L times a clipped Langevin step plus the noise,
and clipping it too would change the method's update rather than guard it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax.numpy as jnp
import numpy as np

from experiments.data import datasets as data_lib
from experiments.data import text
from experiments.models import recurrent
from experiments.run.schema import ConfigError, RunConfig
from experiments.trainer import tasks


def train_examples(
  tokens: np.ndarray, batch_size: int, num_steps: int
) -> tuple[np.ndarray, np.ndarray]:
  """The training examples of a text: example ``s B + b`` is segment s of stream b.

  Returns:
    ``(inputs, targets)``, int32 (num_segments * batch_size, num_steps), targets one token
    later than inputs.

  Examples:
    >>> import numpy as np
    >>> from experiments.trainer.bptt import train_examples
    >>> inputs, targets = train_examples(np.arange(10), 2, 2)  # streams 0-4 and 5-9
    >>> inputs.tolist(), targets.tolist()
    ([[0, 1], [5, 6], [2, 3], [7, 8]], [[1, 2], [6, 7], [3, 4], [8, 9]])
  """
  streams = text.bptt_streams(tokens, batch_size)
  count = text.num_segments(streams, num_steps) * num_steps
  if count == 0:
    raise text.CorpusError(
      f"{len(tokens)} tokens in {batch_size} streams hold no segment of {num_steps} tokens: "
      "use a longer text, a smaller batch size or fewer BPTT steps."
    )

  def cut(a):
    return a.reshape(batch_size, -1, num_steps).transpose(1, 0, 2).reshape(-1, num_steps)

  return cut(streams[:, :count]), cut(streams[:, 1 : count + 1])


def eval_examples(
  tokens: np.ndarray, batch_size: int, num_steps: int
) -> tuple[np.ndarray, np.ndarray]:
  """``text.eval_streams`` as examples (segment-major, padding targets -1): evaluation
  batches of ``batch_size`` are consecutive segments of every stream, each token scored once."""
  inputs, targets = text.eval_streams(tokens, batch_size, num_steps)
  return inputs.reshape(-1, num_steps), targets.reshape(-1, num_steps)


@dataclasses.dataclass(frozen=True)
class SegmentOrder:
  """The loop's ``Task.batch_indices`` and ``Task.carry_reset`` for ``train_examples``.

  Attributes:
    langevin_steps: L, the mini-batches (segments) of one outer step.
  """

  langevin_steps: int = 1

  def steps_per_pass(self, num_examples: int, batch_size: int) -> int:
    """Outer steps of one pass over the streams."""
    num = (num_examples // batch_size) // self.langevin_steps
    if num < 1:
      raise ConfigError(
        f"the text holds {num_examples // batch_size} segments, fewer than the "
        f"{self.langevin_steps} an outer step needs: use more text or a smaller --batch-size "
        "or --bptt-steps."
      )
    return num

  def __call__(self, data_key, first_batch, num_batches: int, num_examples: int, batch_size: int):
    """Example indices (num_batches, batch_size) of mini-batches ``first_batch ..``."""
    del data_key  # the order is the text's
    b = first_batch + jnp.arange(num_batches)
    step, k = b // self.langevin_steps, b % self.langevin_steps
    segment = (step % self.steps_per_pass(num_examples, batch_size)) * self.langevin_steps + k
    return (segment[:, None] * batch_size + jnp.arange(batch_size)).astype(jnp.int32)

  def starts_pass(self, step, num_examples: int, batch_size: int):
    """Whether outer step ``step`` is the first of a pass (its carry restarts at zero)."""
    return step % self.steps_per_pass(num_examples, batch_size) == 0


def make_task(config: RunConfig, model) -> tasks.Task:
  """The loop's ``Task`` of a text run: segments in order, the LSTM state carried and reset at
  each pass, every gradient evaluation clipped to ``config.clip_norm``."""
  order = SegmentOrder(config.langevin_steps)
  return tasks.Task(
    batch_indices=order,
    carry_reset=order.starts_pass,
    init_carry=ZeroCarry(model),
    clip_norm=config.clip_norm,
  )


@dataclasses.dataclass(frozen=True)
class ZeroCarry:
  """``Task.init_carry`` of an LSTM language model: the zero state of ``batch_size`` streams."""

  model: Any

  def __call__(self, batch_size: int):
    return recurrent.zero_state(self.model, batch_size)


@functools.lru_cache(maxsize=2)
def _corpus(dataset: str, text_file: str | None, data_dir: str | None):
  try:
    if dataset == "ptb":
      if data_dir is None:
        raise text.CorpusError(
          f"PTB is read from a folder: pass it as --data-dir (get {text.PTB_SOURCE})."
        )
      return text.read_ptb(data_dir)
    if text_file is None:
      return text.pydoc_corpus()
    return text.read_char_corpus(text_file)
  except text.CorpusError as e:
    raise ConfigError(f"{'--data-dir' if dataset == 'ptb' else '--text-file'}: {e}") from None


def text_split(config: RunConfig, data_dir: str | None, split: str):
  """``(inputs, targets)`` of split ``train``, ``valid`` or ``test`` of ``config``'s text, cut to
  its first num_train (training) or num_test tokens."""
  corpus = _corpus(config.dataset, config.text_file, data_dir)
  tokens = getattr(corpus, split)
  limit = config.num_train if split == "train" else config.num_test
  tokens = tokens[:limit] if limit else tokens
  try:
    if split == "train":
      return train_examples(tokens, config.batch_size, config.bptt_steps)
    return eval_examples(tokens, config.eval_batch_size, config.bptt_steps)
  except text.CorpusError as e:
    raise ConfigError(f"{split} split: {e}") from None


def load_text(config: RunConfig, data_dir: str | None) -> data_lib.Dataset:
  """The ``Dataset`` of a text data set (``experiments.launch.components.DATASETS``): training
  examples,
  and the validation split as the loop's evaluation data; ``num_classes`` is the vocabulary."""
  corpus = _corpus(config.dataset, config.text_file, data_dir)
  train_x, train_y = text_split(config, data_dir, "train")
  valid_x, valid_y = text_split(config, data_dir, "valid")
  return data_lib.Dataset(
    train_x, train_y, valid_x, valid_y, num_classes=corpus.vocab_size, name=corpus.name
  )
