"""LSTM language models of the recurrent experiments (Flax Linen), with the state as data.

``LSTMLanguageModel`` is called as ``model.apply(variables, tokens, carry, train=...)`` (or
``carry=`` by keyword) and returns ``(logits, new_carry)``: the LSTM state is an explicit input
and output (a tuple with one
``(c, h)`` pair of (batch, hidden) arrays per layer, ``zero_state``), so a training loop carries
it from one segment of a text stream to the next (stateful truncated BPTT). ``train=True``
applies dropout on the non-recurrent connections (Zaremba et al. 2014: the embedding output,
between layers and before the softmax), drawn from the rng stream ``'dropout'``.

Speed: each layer's input projection for all time steps is one matrix product, then a
``lax.scan`` over time does the recurrent product with the four gates fused in one
(hidden, 4 hidden) matrix. One-hot character input is a row lookup in the first layer's input
matrix (the same function as a product with one-hot vectors, without the product).

The models of the paper (Sec. 5.1, 5.4), ``ptb_lstm``, ``char_lstm`` and ``small_char_lstm``,
have one bias vector per gate. Torch's LSTM (the paper's code, char-rnn) has two, one in the
input and one in the recurrent map; they add up, so the function is the same with ``4 hidden``
fewer parameters per layer.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

LSTMState = tuple[tuple[jax.Array, jax.Array], ...]
Dtype = Any


def _uniform(scale: float):
  """Initialiser uniform in [-scale, scale] (Zaremba et al., char-rnn)."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)

  return init


class LSTMLanguageModel(nn.Module):
  """A multi-layer LSTM predicting the next token of each position.

  Attributes:
    vocab_size: tokens in the vocabulary (inputs and softmax).
    hidden_size: LSTM units per layer.
    num_layers: stacked LSTM layers.
    embed_size: word-embedding width, or None for one-hot input (char-rnn).
    dropout_rate: dropout on the non-recurrent connections when ``train=True``.
    init_scale: every weight and bias uniform in [-init_scale, init_scale] (Zaremba: 0.04 for
      the large model, char-rnn: 0.08); None: Flax's defaults (LeCun normal, zero biases).
    forget_bias: added to the forget gates' initial bias (char-rnn: 1, Zaremba: 0).
    dtype: compute dtype; parameters stay ``param_dtype``, logits are float32.
    param_dtype: parameter dtype.
  """

  vocab_size: int
  hidden_size: int
  num_layers: int = 2
  embed_size: int | None = None
  dropout_rate: float = 0.0
  init_scale: float | None = None
  forget_bias: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _init(self, default):
    return default if self.init_scale is None else _uniform(self.init_scale)

  def _bias_init(self, key, shape, dtype=jnp.float32):
    bias = self._init(nn.initializers.zeros)(key, shape, dtype)
    return bias.at[self.hidden_size : 2 * self.hidden_size].add(self.forget_bias)

  def _dropout(self, x, train: bool):
    if self.dropout_rate == 0.0 or not train:
      return x
    return nn.Dropout(self.dropout_rate, deterministic=False)(x)

  @nn.compact
  def __call__(
    self, tokens: jax.Array, carry: LSTMState, *, train: bool
  ) -> tuple[jax.Array, LSTMState]:
    """Logits (batch, time, vocab_size) of the next token, and the state after the last step.

    Args:
      tokens: int token ids, (batch, time).
      carry: the LSTM state before the first step (``zero_state`` at the start of a stream).
      train: apply dropout (rng stream ``'dropout'``).
    """
    if len(carry) != self.num_layers:
      raise ValueError(f"carry has {len(carry)} layers, the model {self.num_layers}.")
    weight_init = self._init(nn.initializers.lecun_normal())
    four_h = 4 * self.hidden_size
    if self.embed_size is None:  # one-hot input: row lookup in the input matrix
      table = self.param(
        "layer0_input_kernel", weight_init, (self.vocab_size, four_h), self.param_dtype
      )
      projected = jnp.take(table, tokens, axis=0).astype(self.dtype)
    else:
      embedding = self.param(
        "embedding",
        self._init(nn.initializers.normal(1.0)),
        (self.vocab_size, self.embed_size),
        self.param_dtype,
      )
      inputs = self._dropout(jnp.take(embedding, tokens, axis=0).astype(self.dtype), train)
      kernel = self.param(
        "layer0_input_kernel", weight_init, (self.embed_size, four_h), self.param_dtype
      )
      projected = inputs @ kernel.astype(self.dtype)
    new_state = []
    for layer in range(self.num_layers):
      if layer > 0:
        kernel = self.param(
          f"layer{layer}_input_kernel", weight_init, (self.hidden_size, four_h), self.param_dtype
        )
        projected = outputs @ kernel.astype(self.dtype)  # noqa: F821 (set by layer - 1)
      recurrent = self.param(
        f"layer{layer}_recurrent_kernel", weight_init, (self.hidden_size, four_h), self.param_dtype
      )
      bias = self.param(f"layer{layer}_bias", self._bias_init, (four_h,), self.param_dtype)
      hidden, final = _lstm_scan(
        projected + bias.astype(self.dtype), recurrent.astype(self.dtype), carry[layer]
      )
      new_state.append(final)
      outputs = self._dropout(hidden, train)
    logits = nn.Dense(
      self.vocab_size,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=weight_init,
      bias_init=self._init(nn.initializers.zeros),
      name="softmax",
    )(outputs)
    return logits.astype(jnp.float32), tuple(new_state)


def _lstm_scan(
  projected: jax.Array, recurrent: jax.Array, state: tuple[jax.Array, jax.Array]
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """One LSTM layer over time: gates i, f, g, o = projected_t + h_{t-1} @ recurrent.

  Args:
    projected: (batch, time, 4 hidden), the input projection plus bias of every step.
    recurrent: (hidden, 4 hidden).
    state: (c, h) before the first step, each (batch, hidden).

  Returns:
    The hidden outputs (batch, time, hidden) and the final (c, h).
  """

  def step(carry, gates_in):
    c, h = carry
    gates = gates_in + h @ recurrent
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (c, h), h

  c0, h0 = state
  carry = (c0.astype(projected.dtype), h0.astype(projected.dtype))
  final, hidden = jax.lax.scan(step, carry, jnp.swapaxes(projected, 0, 1))
  return jnp.swapaxes(hidden, 0, 1), final


def zero_state(model: LSTMLanguageModel, batch_size: int) -> LSTMState:
  """The all-zero state of ``batch_size`` streams (float32), the start of every data pass."""
  zeros = jnp.zeros((batch_size, model.hidden_size), jnp.float32)
  return tuple((zeros, zeros) for _ in range(model.num_layers))


def count_params(model: LSTMLanguageModel) -> int:
  """Number of parameters, from shapes only (``jax.eval_shape``: nothing is allocated)."""
  tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  shapes = jax.eval_shape(
    lambda t: model.init(jax.random.key(0), t, zero_state(model, 1), train=False), tokens
  )
  return sum(leaf.size for leaf in jax.tree.leaves(shapes))


# Zaremba et al. (2014), Sec. 4: hidden units, dropout and init scale of the three PTB models.
PTB_SIZES = {
  "large": dict(hidden_size=1500, dropout_rate=0.65, init_scale=0.04),
  "medium": dict(hidden_size=650, dropout_rate=0.5, init_scale=0.05),
  "small": dict(hidden_size=200, dropout_rate=0.0, init_scale=0.1),
}


def ptb_lstm(size: str = "large", vocab_size: int = 10_000, **overrides) -> LSTMLanguageModel:
  """PTB-LSTM (Zaremba et al. 2014): a word embedding as wide as the LSTM, two layers.

  "large" (2 x 1500, dropout 0.65, init 0.04) is the paper's PTB-LSTM, 66,022,000 parameters
  ("about 66 million", Sec. 5.4.1); "medium" (2 x 650) and "small" (2 x 200) are Zaremba's
  smaller configurations.

  Examples:
    >>> from experiments.models.recurrent import count_params, ptb_lstm
    >>> count_params(ptb_lstm("large"))
    66022000
  """
  if size not in PTB_SIZES:
    raise ValueError(f"PTB-LSTM size must be one of {sorted(PTB_SIZES)}, got {size!r}.")
  spec = dict(PTB_SIZES[size], num_layers=2, vocab_size=vocab_size)
  spec["embed_size"] = spec["hidden_size"]
  return LSTMLanguageModel(**{**spec, **overrides})


def char_lstm(
  vocab_size: int, hidden_size: int = 128, num_layers: int = 2, **overrides
) -> LSTMLanguageModel:
  """char-LSTM (Karpathy et al. 2015, char-rnn): one-hot characters, 2 x 128 LSTM.

  char-rnn's initialisation: uniform in [-0.08, 0.08], forget-gate biases +1; no dropout.
  """
  spec = dict(
    vocab_size=vocab_size,
    hidden_size=hidden_size,
    num_layers=num_layers,
    embed_size=None,
    init_scale=0.08,
    forget_bias=1.0,
    dropout_rate=0.0,
  )
  return LSTMLanguageModel(**{**spec, **overrides})


def small_char_lstm(vocab_size: int = 96, **overrides) -> LSTMLanguageModel:
  """The char-LSTM of the paper's Hessian experiment (Sec. 5.1): one layer of 48, one-hot input.

  32,544 parameters with 96 characters; the paper's 32,640 is the same network with Torch's
  second LSTM bias vector (+192) and no softmax bias (-96).

  Examples:
    >>> from experiments.models.recurrent import count_params, small_char_lstm
    >>> count_params(small_char_lstm())
    32544
  """
  return char_lstm(vocab_size, hidden_size=48, num_layers=1, **overrides)


# The registry of ``experiments.launch.components``: name -> factory(vocab_size, **overrides).
MODELS = {
  "ptb_large": functools.partial(ptb_lstm, "large"),
  "ptb_medium": functools.partial(ptb_lstm, "medium"),
  "ptb_small": functools.partial(ptb_lstm, "small"),
  "char_lstm": char_lstm,
  "small_char_lstm": small_char_lstm,
}
