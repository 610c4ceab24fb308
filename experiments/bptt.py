"""Stateful truncated BPTT for the LSTM language models: the training step and the evaluation.

The training data is ``bptt_streams``' (batch, length) array of parallel text streams, on the
device. An outer step takes L consecutive segments of every stream (L = 1 for SGD and Adam,
L = ``num_langevin_steps`` for Entropy-SGD / Entropy-Adam): outer step t of a data pass uses
segments t L .. t L + L - 1, so every gradient evaluation sees fresh text, as the paper's fresh
mini-batch per Langevin step, and one data pass is ``num_segments // L`` outer steps. The LSTM
state is reset to zero at the start of each pass.

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

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from entropy_optax import flax as eflax
from experiments import recurrent_models, text_data


class RecurrentTrainState(eflax.TrainState):
  """``entropy_optax.flax.TrainState`` plus the LSTM state carried between outer steps.

  Attributes:
    lstm_state: the state after the last segment of step 0 of the previous outer step,
      computed with the kept weights; reset to zero at the start of every data pass.
  """

  lstm_state: Any = None


def clip_by_global_norm(grads: Any, max_norm: float | None) -> Any:
  """``grads`` scaled by min(1, max_norm / |grads|) (unchanged when max_norm is None)."""
  if max_norm is None:
    return grads
  norm = optax.tree.norm(grads)
  scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, jnp.finfo(jnp.float32).tiny))
  return jax.tree.map(lambda g: (g * scale).astype(g.dtype), grads)


def token_nll(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Sum of -log p(target) over the tokens whose target is >= 0, and how many there are."""
  mask = targets >= 0
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(targets, 0))
  return jnp.sum(jnp.where(mask, nll, 0.0)), jnp.sum(mask)


def create_state(
  model: recurrent_models.LSTMLanguageModel,
  make_tx: Callable[[jax.Array], optax.GradientTransformation],
  seed: int | jax.Array,
  batch_size: int,
) -> RecurrentTrainState:
  """A fresh state: parameters, dropout key and optimizer noise key all derived from ``seed``.

  Args:
    model: the language model.
    make_tx: ``make_tx(key)`` builds the optimizer with its noise key (``entropy_sgd(...,
      key=key)``; plain optax optimizers ignore it). ``seed`` may be traced (``jax.vmap`` over
      seeds): each seed then gets its own Langevin noise through the optimizer's own argument.
    seed: an integer seed.
    batch_size: the number of streams (the shape of the carried LSTM state).
  """
  init_key, dropout_key, noise_key = jax.random.split(jax.random.PRNGKey(seed), 3)
  tokens = jnp.zeros((batch_size, 1), jnp.int32)
  state0 = recurrent_models.zero_state(model, batch_size)
  params = model.init(init_key, tokens, state0, train=False)["params"]
  opt_state = make_tx(noise_key).init(params)
  # The kept tx differs from make_tx(noise_key) only in the key its init would use.
  return RecurrentTrainState(
    step=jnp.zeros([], jnp.int32),
    apply_fn=model.apply,
    params=params,
    tx=make_tx(jax.random.PRNGKey(0)),
    opt_state=opt_state,
    batch_stats=None,
    key=dropout_key,
    lstm_state=state0,
  )


def make_train_step(
  model: recurrent_models.LSTMLanguageModel,
  *,
  num_steps: int,
  langevin_steps: int = 1,
  clip_norm: float | None = None,
) -> Callable[[RecurrentTrainState, jax.Array], tuple[RecurrentTrainState, dict[str, jax.Array]]]:
  """The outer training step ``step(state, streams) -> (state, metrics)`` (see the module doc).

  Args:
    model: the language model (``model.apply`` is called; dropout on the ``'dropout'`` stream).
    num_steps: T, tokens per segment (BPTT length).
    langevin_steps: L; must equal the optimizer's ``num_langevin_steps`` (1 for plain optax).
    clip_norm: global-norm clipping of every gradient evaluation, or None.

  Returns:
    A jittable ``step``; ``metrics`` has ``loss`` (mean nats per token of step 0's segment, at
    x) and ``grad_norm`` (of step 0's gradient before clipping).
  """
  if langevin_steps < 1:
    raise ValueError(f"langevin_steps must be >= 1, got {langevin_steps}.")

  def loss_fn(params, inputs, targets, lstm_state, key):
    logits, final = model.apply(
      {"params": params}, inputs, lstm_state, train=True, rngs={"dropout": key}
    )
    nll_sum, count = token_nll(logits, targets)
    return nll_sum / count, final

  def step(state: RecurrentTrainState, streams: jax.Array):
    steps_per_pass = text_data.num_segments(streams, num_steps) // langevin_steps
    if steps_per_pass < 1:
      raise ValueError(
        f"The streams hold {text_data.num_segments(streams, num_steps)} segments of "
        f"{num_steps} tokens, fewer than the {langevin_steps} an outer step needs."
      )
    t = state.step % steps_per_pass
    carried = jax.tree.map(lambda s: jnp.where(t == 0, jnp.zeros_like(s), s), state.lstm_state)
    inputs, targets = jax.vmap(
      lambda k: text_data.segment(streams, t * langevin_steps + k, num_steps)
    )(jnp.arange(langevin_steps))
    key = state.step_key()
    (loss, state_after_x), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, inputs[0], targets[0], carried, eflax.langevin_key(key, 0)
    )
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
    grads = clip_by_global_norm(grads, clip_norm)
    if langevin_steps == 1:
      return state.apply_gradients(grads=grads, lstm_state=state_after_x), metrics

    def grad_fn(params, k):
      # Langevin step k: its own segment, from the state the pass at x left (see module doc).
      batch_inputs, batch_targets = eflax.take_batch((inputs, targets), k)
      g = jax.grad(
        lambda p: loss_fn(
          p, batch_inputs, batch_targets, state_after_x, eflax.langevin_key(key, k)
        )[0]
      )(params)
      return clip_by_global_norm(g, clip_norm)

    new_state = state.apply_gradients(grads=grads, grad_fn=grad_fn, lstm_state=state_after_x)
    return new_state, metrics

  return step


def make_train_steps(step, num_outer_steps: int):
  """``num_outer_steps`` of ``step`` in one ``lax.scan``: ``(state, streams) -> (state, loss)``.

  The returned loss is the mean of the steps' ``loss``.
  """

  def run(state, streams):
    state, metrics = jax.lax.scan(
      lambda s, _: step(s, streams), state, None, length=num_outer_steps
    )
    return state, jnp.mean(metrics["loss"])

  return run


def evaluate(
  model: recurrent_models.LSTMLanguageModel, params: Any, inputs: jax.Array, targets: jax.Array
) -> dict[str, jax.Array]:
  """Mean cross-entropy per token of a split, the state carried across its segments.

  Args:
    model: the language model (run with ``train=False``: no dropout).
    params: its parameters.
    inputs, targets: ``text_data.eval_streams`` of the split, (segments, batch, T); targets < 0
      are padding and not scored.

  Returns:
    ``nats`` (mean negative log-likelihood per token), ``bits`` (the same in log base 2) and
    ``perplexity`` = exp(nats) (word perplexity for words).

  Examples:
    >>> import jax, numpy as np, optax
    >>> from experiments import bptt, recurrent_models, text_data
    >>> model = recurrent_models.char_lstm(5, hidden_size=4)
    >>> state = bptt.create_state(model, lambda key: optax.sgd(1.0), 0, batch_size=2)
    >>> params = jax.tree.map(np.zeros_like, state.params)  # all 0: the uniform distribution
    >>> metrics = bptt.evaluate(model, params, *text_data.eval_streams(np.arange(20) % 5, 2, 3))
    >>> print(f"{float(metrics['perplexity']):.4f}")
    5.0000
  """
  batch = inputs.shape[1]

  def body(carry, segment):
    lstm_state, nll_sum, count = carry
    logits, lstm_state = model.apply({"params": params}, segment[0], lstm_state, train=False)
    seg_nll, seg_count = token_nll(logits, segment[1])
    return (lstm_state, nll_sum + seg_nll, count + seg_count), None

  init = (
    recurrent_models.zero_state(model, batch),
    jnp.zeros([], jnp.float32),
    jnp.zeros([], jnp.int32),
  )
  (_, nll_sum, count), _ = jax.lax.scan(body, init, (inputs, targets))
  nats = nll_sum / count
  return {"nats": nats, "bits": nats / math.log(2.0), "perplexity": jnp.exp(nats)}
