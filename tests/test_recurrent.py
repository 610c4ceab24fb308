"""LSTM language models and the stateful-BPTT step: counts, state carry, Entropy-SGD policy."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import entropy_optax
from experiments import bptt, text_data
from experiments import recurrent_models as rm
from experiments import recurrent_recipes as rr


def _lstm_params(vocab, embed, hidden, layers):
  """Parameters of a one-bias-per-gate LSTM language model, counted by hand."""
  input_width = vocab if embed is None else embed
  count = 0 if embed is None else vocab * embed
  for layer in range(layers):
    width = input_width if layer == 0 else hidden
    count += 4 * hidden * (width + hidden) + 4 * hidden
  return count + hidden * vocab + vocab


@pytest.mark.parametrize("size,hidden", [("large", 1500), ("medium", 650), ("small", 200)])
def test_ptb_lstm_parameter_counts(size, hidden):
  count = rm.count_params(rm.ptb_lstm(size))
  assert count == _lstm_params(10_000, hidden, hidden, 2)
  if size == "large":  # the paper: "about 66 million weights"
    assert abs(count - 66e6) / 66e6 < 0.001


def test_char_lstm_parameter_counts():
  assert rm.count_params(rm.char_lstm(87)) == _lstm_params(87, None, 128, 2) == 253_399
  small = rm.count_params(rm.small_char_lstm(96))
  # The paper's 32,640: Torch's second bias vector (+4 x 48), no softmax bias (-96).
  assert small == _lstm_params(96, None, 48, 1) == 32_640 - 4 * 48 + 96


def _numpy_lstm(params, tokens, embed):
  """An independent LSTM forward pass (float64 loops), zero initial state."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  sigmoid = lambda z: 1 / (1 + np.exp(-z))
  batch, steps = tokens.shape
  layers = sum(1 for k in p if k.endswith("_recurrent_kernel"))
  hidden = p["layer0_recurrent_kernel"].shape[0]
  h = [np.zeros((batch, hidden)) for _ in range(layers)]
  c = [np.zeros((batch, hidden)) for _ in range(layers)]
  logits = np.zeros((batch, steps, p["softmax"]["bias"].shape[0]))
  for t in range(steps):
    x = (
      p["embedding"][tokens[:, t]]
      if embed
      else np.eye(p["layer0_input_kernel"].shape[0])[tokens[:, t]]
    )
    for l in range(layers):
      z = (
        x @ p[f"layer{l}_input_kernel"]
        + h[l] @ p[f"layer{l}_recurrent_kernel"]
        + p[f"layer{l}_bias"]
      )
      i, f, g, o = np.split(z, 4, axis=-1)
      c[l] = sigmoid(f) * c[l] + sigmoid(i) * np.tanh(g)
      h[l] = sigmoid(o) * np.tanh(c[l])
      x = h[l]
    logits[:, t] = x @ p["softmax"]["kernel"] + p["softmax"]["bias"]
  return logits


@pytest.mark.parametrize("embed", [None, 6])
def test_lstm_matches_an_independent_implementation(embed):
  model = rm.LSTMLanguageModel(
    vocab_size=7, hidden_size=5, num_layers=2, embed_size=embed, init_scale=0.5, forget_bias=1.0
  )
  tokens = np.random.default_rng(0).integers(0, 7, (3, 6)).astype(np.int32)
  params = model.init(jax.random.key(1), tokens, rm.zero_state(model, 3), train=False)["params"]
  logits, _ = model.apply({"params": params}, tokens, rm.zero_state(model, 3), train=False)
  np.testing.assert_allclose(logits, _numpy_lstm(params, tokens, embed), atol=1e-5)
  # The forget-gate bias starts at 1 + U(-0.5, 0.5), the others at U(-0.5, 0.5).
  forget = np.asarray(params["layer0_bias"][5:10])
  assert np.all(forget > 0.5) and np.all(np.abs(np.asarray(params["layer0_bias"][:5])) <= 0.5)


@pytest.mark.parametrize(
  "make",
  [
    lambda: rm.char_lstm(11, hidden_size=8),
    lambda: rm.ptb_lstm("small", 11, hidden_size=8, embed_size=8),
  ],
)
def test_state_carried_over_two_segments_equals_the_concatenated_sequence(make):
  model = make()
  tokens = np.random.default_rng(2).integers(0, 11, (4, 10)).astype(np.int32)
  targets = np.random.default_rng(3).integers(0, 11, (4, 10)).astype(np.int32)
  zero = rm.zero_state(model, 4)
  params = model.init(jax.random.key(0), tokens, zero, train=False)["params"]
  apply = lambda t, s: model.apply({"params": params}, t, s, train=False)
  whole_logits, whole_state = apply(tokens, zero)
  first_logits, state = apply(tokens[:, :4], zero)
  second_logits, state = apply(tokens[:, 4:], state)
  nll_whole = bptt.token_nll(whole_logits, targets)[0]
  nll_parts = (
    bptt.token_nll(first_logits, targets[:, :4])[0]
    + bptt.token_nll(second_logits, targets[:, 4:])[0]
  )
  np.testing.assert_allclose(nll_parts, nll_whole, rtol=1e-6)
  np.testing.assert_allclose(
    jnp.concatenate([first_logits, second_logits], 1), whole_logits, atol=1e-6
  )
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), state, whole_state)


def test_uniform_predictor_perplexity_is_the_vocabulary_size():
  model = rm.ptb_lstm("small", vocab_size=37, hidden_size=4)
  tokens = np.random.default_rng(0).integers(0, 37, 200).astype(np.int32)
  state = bptt.create_state(model, lambda key: optax.sgd(1.0), 0, batch_size=3)
  params = dict(state.params, softmax=jax.tree.map(jnp.zeros_like, state.params["softmax"]))
  metrics = bptt.evaluate(model, params, *text_data.eval_streams(tokens, 3, 7))
  np.testing.assert_allclose(metrics["perplexity"], 37.0, rtol=1e-5)
  np.testing.assert_allclose(metrics["bits"], math.log2(37), rtol=1e-5)


def test_evaluate_scores_each_token_once_with_the_state_carried():
  model = rm.char_lstm(9, hidden_size=6)
  tokens = np.random.default_rng(1).integers(0, 9, 41).astype(np.int32)
  params = bptt.create_state(model, lambda key: optax.sgd(1.0), 0, batch_size=1).params
  got = bptt.evaluate(model, params, *text_data.eval_streams(tokens, 1, 4))["nats"]
  # One pass over the whole sequence from the zero state, in float64 (independent).
  logits = _numpy_lstm(params, tokens[None, :-1], None)[0]
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(got, -log_p[np.arange(40), tokens[1:]].mean(), rtol=1e-5)


class _Recorder:
  """A model whose forward passes record (first input token of each stream, initial h sum)."""

  def __init__(self, model):
    self.model, self.calls = model, []

  def __getattr__(self, name):
    return getattr(self.model, name)

  def apply(self, variables, tokens, state, **kwargs):
    jax.debug.callback(
      lambda t, h: self.calls.append((np.asarray(t), float(h))),
      tokens[:, 0],
      sum(jnp.sum(h) for _, h in state),
      ordered=True,
    )
    return self.model.apply(variables, tokens, state, **kwargs)


def _ptb_small_run(langevin_steps, num_outer, clip_norm=5.0):
  model = rm.ptb_lstm("small", vocab_size=10_000)
  recorder = _Recorder(model)
  streams = jnp.asarray(text_data.bptt_streams(np.arange(2 * 60) % 10_000, 2))  # 60 a stream
  make_tx = lambda key: (
    entropy_optax.entropy_sgd(
      1.0,
      num_langevin_steps=langevin_steps,
      gamma=1e-3,
      langevin_lr=1.0,
      noise=1e-4,
      momentum=0.5,
      key=key,
    )
    if langevin_steps > 1
    else optax.sgd(1.0)
  )
  state = bptt.create_state(model, make_tx, 0, batch_size=2)
  step = jax.jit(
    bptt.make_train_step(recorder, num_steps=5, langevin_steps=langevin_steps, clip_norm=clip_norm)
  )
  states = [state]
  for _ in range(num_outer):
    states.append(step(states[-1], streams)[0])
  jax.effects_barrier()
  return model, streams, states, recorder.calls


def test_entropy_sgd_step_costs_L_gradient_evaluations_and_follows_the_state_policy():
  L = 4
  model, streams, states, calls = _ptb_small_run(L, num_outer=4)  # 11 segments: 2 steps a pass
  assert len(calls) == 4 * L  # forward passes (each one gradient evaluation), nothing else
  first_tokens = [int(t[0]) for t, _ in calls]
  # Outer step t of a pass uses segments t L .. t L + L - 1 (5 tokens each); the pass restarts.
  expected = [5 * s for s in (0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7)]
  assert first_tokens == expected
  for outer in range(4):
    h0, *h_langevin = [h for _, h in calls[outer * L : (outer + 1) * L]]
    # The state carried out of the step is the pass at x on its first segment...
    _, carried_in = (None, states[outer].lstm_state)
    if outer % 2 == 0:
      carried_in = rm.zero_state(model, 2)
      assert h0 == 0.0
    inputs, _ = text_data.segment(streams, (outer % 2) * L, 5)
    _, after_x = model.apply({"params": states[outer].params}, inputs, carried_in, train=False)
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
      states[outer + 1].lstm_state,
      after_x,
    )
    # ...and every Langevin step k >= 1 starts from it.
    expected_h = float(sum(jnp.sum(h) for _, h in after_x))
    np.testing.assert_allclose(h_langevin, [expected_h] * (L - 1), rtol=1e-5)


def test_sgd_step_costs_one_gradient_evaluation():
  _, _, _, calls = _ptb_small_run(1, num_outer=3)
  assert [int(t[0]) for t, _ in calls] == [0, 5, 10]


def test_clipping_acts_on_every_langevin_gradient_and_not_on_x_minus_mu():
  model = rm.char_lstm(6, hidden_size=4)
  # Every segment of a stream holds the same 4 tokens: the clipped Langevin steps line up, and
  # x - mu grows past the clipping norm.
  streams = jnp.asarray(text_data.bptt_streams(np.arange(90) % 4, 3))
  L, clip, lr = 3, 0.05, 2.0
  make_tx = lambda key: entropy_optax.entropy_sgd(
    1.0, num_langevin_steps=L, gamma=0.1, langevin_lr=lr, noise=0.0, momentum=0.0, key=key
  )
  state = bptt.create_state(model, make_tx, 0, batch_size=3)
  new_state, _ = jax.jit(
    bptt.make_train_step(model, num_steps=4, langevin_steps=L, clip_norm=clip)
  )(state, streams)
  x = state.params
  # Independent: the chain of langevin_mean fed gradients clipped here, from the same states.
  zero = rm.zero_state(model, 3)
  key = state.step_key()

  def loss(params, k, lstm_state):
    inputs, targets = text_data.segment(streams, k, 4)
    logits, final = model.apply(
      {"params": params},
      inputs,
      lstm_state,
      train=True,
      rngs={"dropout": jax.random.fold_in(key, k)},
    )
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean(), final

  (_, after_x), g0 = jax.value_and_grad(loss, has_aux=True)(x, 0, zero)

  @jax.jit
  def expected_params(clip_value):  # clip_value = inf: no clipping
    clip_fn = lambda g: jax.tree.map(
      lambda a: a * jnp.minimum(1.0, clip_value / optax.tree.norm(g)), g
    )
    grad_fn = lambda p, k: clip_fn(jax.grad(lambda q: loss(q, k, after_x)[0])(p))
    mu, _ = entropy_optax.langevin_mean(
      grad_fn,
      x,
      jax.random.key(0),
      gamma=0.1,
      num_steps=L,
      langevin_lr=lr,
      noise=0.0,
      alpha=0.75,
      grad_at_params=clip_fn(g0),
    )
    return mu

  mu = expected_params(clip)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), new_state.params, mu)
  step_norm = float(optax.tree.norm(optax.tree.sub(new_state.params, x)))
  assert step_norm > 1.5 * clip  # x - mu itself is not clipped
  unclipped = expected_params(jnp.inf)  # clipping matters here
  assert float(optax.tree.norm(optax.tree.sub(unclipped, mu))) > 0.1 * step_norm


# ---------------------------------------------------------------------------
# Recipes.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
  "name,epoch_lrs",
  [
    ("ptb-sgd", [(0, 1.0), (13.9, 1.0), (14, 1 / 1.15), (16.5, 1.15**-3)]),
    ("ptb-entropy-sgd", [(0, 1.0), (2.9, 1.0), (3, 0.1), (4, 0.01)]),
    ("charlstm-adam", [(0, 2e-3), (4.9, 2e-3), (5, 1e-3), (49, 2e-3 / 2**9)]),
    ("charlstm-entropy-adam", [(0, 1e-2), (1, 5e-3), (4.5, 1e-2 / 16)]),
  ],
)
def test_recipe_learning_rates_follow_the_paper(name, epoch_lrs):
  schedule = rr.RECIPES[name].learning_rate_schedule(steps_per_outer_epoch=10)
  for epoch, lr in epoch_lrs:
    np.testing.assert_allclose(schedule(jnp.int32(round(epoch * 10))), lr, rtol=1e-6)


def test_recipes_budgets_and_validation():
  assert [rr.RECIPES[n].effective_epochs for n in rr.RECIPES] == [55, 25, 50, 25]
  with pytest.raises(ValueError, match="L > 1"):
    rr.LMRecipe(
      target="",
      model="char-lstm",
      optimizer="entropy_adam",
      outer_epochs=1,
      batch_size=1,
      num_steps=1,
      clip_norm=1.0,
      learning_rate=1.0,
    )
  # Entropy-SGD's outer Nesterov momentum 0.5 acts: two identical outer gradients g (no noise,
  # same x, constant loss gradient) give updates 1.5 g and g + 0.5 (g + 0.5 g) = 1.75 g.
  recipe = dataclasses.replace(rr.RECIPES["ptb-entropy-sgd"], noise=0.0)
  tx = recipe.make_tx(10)(jax.random.PRNGKey(0))
  grad_fn = lambda p, k: jnp.ones_like(p)
  params, opt_state = jnp.ones(2), tx.init(jnp.ones(2))
  updates = []
  for _ in range(2):
    u, opt_state = tx.update(jnp.ones(2), opt_state, params, grad_fn=grad_fn)
    updates.append(float(u[0]))
  assert updates[0] != 0 and updates[1] / updates[0] == pytest.approx(1.75 / 1.5, rel=1e-5)
