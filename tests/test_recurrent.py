"""LSTM language models and stateful truncated BPTT through the harness's step: parameter
counts, state carry, the Entropy-SGD state policy, clipping, evaluation per token."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import entropy_optax
from experiments.models import recurrent as rm
from experiments.run.schema import RunConfig
from experiments.trainer import bptt, loop_state, step_runners, steps, tasks


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


def _nll(logits, targets):
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).sum()


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
  nll_parts = _nll(first_logits, targets[:, :4]) + _nll(second_logits, targets[:, 4:])
  np.testing.assert_allclose(nll_parts, _nll(whole_logits, targets), rtol=1e-6)
  np.testing.assert_allclose(
    jnp.concatenate([first_logits, second_logits], 1), whole_logits, atol=1e-6
  )
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), state, whole_state)


def _task(model, langevin_steps=1, clip_norm=0.0):
  order = bptt.SegmentOrder(langevin_steps)
  return tasks.Task(
    batch_indices=order,
    carry_reset=order.starts_pass,
    init_carry=bptt.ZeroCarry(model),
    clip_norm=clip_norm,
  )


def _evaluate(model, params, tokens, batch, num_steps):
  """The harness's evaluation of ``params`` on ``tokens`` laid out by ``bptt.eval_examples``."""
  x, y = bptt.eval_examples(tokens, batch, num_steps)
  task = _task(model)
  state = loop_state.init_state(model, lambda k: optax.sgd(1.0), task, x[:1], 0, batch)
  return steps.evaluate(state.replace(params=params), x, y, np.ones(len(x)), batch, task)


def test_uniform_predictor_perplexity_is_the_vocabulary_size():
  model = rm.ptb_lstm("small", vocab_size=37, hidden_size=4)
  tokens = np.random.default_rng(0).integers(0, 37, 200).astype(np.int32)
  params = model.init(jax.random.key(0), tokens[None, :3], rm.zero_state(model, 1), train=False)
  params = dict(params["params"])
  params["softmax"] = jax.tree.map(jnp.zeros_like, params["softmax"])
  metrics = _evaluate(model, params, tokens, 3, 7)
  np.testing.assert_allclose(metrics["val_perplexity"], 37.0, rtol=1e-5)
  np.testing.assert_allclose(metrics["val_bits"], math.log2(37), rtol=1e-5)
  np.testing.assert_allclose(metrics["val_loss"], math.log(37), rtol=1e-5)


def test_evaluate_scores_each_token_once_with_the_state_carried():
  model = rm.char_lstm(9, hidden_size=6)
  tokens = np.random.default_rng(1).integers(0, 9, 41).astype(np.int32)
  params = model.init(jax.random.key(3), tokens[None, :3], rm.zero_state(model, 1), train=False)
  params = params["params"]
  got = _evaluate(model, params, tokens, 1, 4)
  # One pass over the whole sequence from the zero state, in float64 (independent).
  logits = _numpy_lstm(params, tokens[None, :-1], None)[0]
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(got["val_loss"], -log_p[np.arange(40), tokens[1:]].mean(), rtol=1e-5)
  wrong = np.mean(np.argmax(logits, -1) != tokens[1:])
  np.testing.assert_allclose(got["val_error"], wrong, rtol=1e-6)


def test_train_examples_walk_the_streams_segment_by_segment():
  x, y = bptt.train_examples(np.arange(2 * 60), 2, 5)  # streams 0-59 and 60-119: 11 segments
  assert x.shape == (22, 5) and x[3].tolist() == [65, 66, 67, 68, 69]
  np.testing.assert_array_equal(y, x + 1)
  order = bptt.SegmentOrder(4)  # 2 outer steps a pass (8 of 11 segments), then the pass restarts
  idx = np.asarray(order(None, jnp.int32(4), 8, len(x), 2))
  assert x[idx][:, 0, 0].tolist() == [20, 25, 30, 35, 0, 5, 10, 15]
  assert [bool(order.starts_pass(jnp.int32(t), len(x), 2)) for t in range(5)] == [
    True,
    False,
    True,
    False,
    True,
  ]


class _Recorder:
  """A model whose forward passes record (first input token of stream 0, initial h sum)."""

  def __init__(self, model):
    self.model, self.calls = model, []

  def __getattr__(self, name):
    return getattr(self.model, name)

  def apply(self, variables, tokens, carry, **kwargs):
    jax.debug.callback(
      lambda t, h: self.calls.append((int(t), float(h))),
      tokens[0, 0],
      sum(jnp.sum(h) for _, h in carry),
      ordered=True,
    )
    return self.model.apply(variables, tokens, carry, **kwargs)


def _ptb_small_run(langevin_steps, num_outer, clip_norm=5.0):
  """PTB-small through the harness's jitted steps, one outer step per call."""
  model = rm.ptb_lstm("small", vocab_size=10_000)
  recorder = _Recorder(model)
  x, y = bptt.train_examples(np.arange(2 * 60) % 10_000, 2, 5)  # 11 segments of 5 tokens
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
  task = _task(model, langevin_steps, clip_norm)
  fns = step_runners.compiled_functions(
    RunConfig(batch_size=2, langevin_steps=langevin_steps),
    recorder,
    make_tx,
    task,
    mesh=None,
    num_examples=len(x),
    eval_batch_size=2,
    runner="scan",
  )
  data = (jnp.asarray(x), jnp.asarray(y))
  states = [fns.init(jnp.uint32(0), data[0][:1])]
  for _ in range(num_outer):
    states.append(fns.call(jax.tree.map(jnp.copy, states[-1]), data, 1)[0])  # donated
  jax.effects_barrier()
  return model, x, states, recorder.calls


def test_entropy_sgd_step_costs_L_gradient_evaluations_and_follows_the_state_policy():
  L = 4
  model, x, states, calls = _ptb_small_run(L, num_outer=4)  # 11 segments: 2 steps a pass
  assert len(calls) == 4 * L  # forward passes (each one gradient evaluation), nothing else
  # Outer step t of a pass uses segments t L .. t L + L - 1 (5 tokens each); the pass restarts.
  assert [t for t, _ in calls] == [5 * s for s in (0, 1, 2, 3, 4, 5, 6, 7) * 2]
  for outer in range(4):
    h0, *h_langevin = [h for _, h in calls[outer * L : (outer + 1) * L]]
    carried_in = states[outer].carry
    if outer % 2 == 0:  # the first step of a pass starts from the zero state
      carried_in = rm.zero_state(model, 2)
      assert h0 == 0.0
      assert outer == 0 or float(sum(jnp.sum(h) for _, h in states[outer].carry)) != 0.0
    inputs = x[2 * (outer % 2) * L : 2 * (outer % 2) * L + 2]
    _, after_x = model.apply({"params": states[outer].params}, inputs, carried_in, train=False)
    # The carry kept is the final state of step 0's pass at x (PTB-small has no dropout) ...
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), states[outer + 1].carry, after_x
    )
    # ... and every Langevin step k >= 1 starts from it, not from the carry step 0 started
    # from (the harness's behaviour before: it would fail here).
    expected_h = float(sum(jnp.sum(h) for _, h in after_x))
    assert abs(expected_h - h0) > 1e-3
    np.testing.assert_allclose(h_langevin, [expected_h] * (L - 1), rtol=1e-5)


def test_sgd_step_costs_one_gradient_evaluation():
  _, _, _, calls = _ptb_small_run(1, num_outer=3)
  assert [t for t, _ in calls] == [0, 5, 10]


def test_clipping_acts_on_every_gradient_evaluation_and_not_on_x_minus_mu():
  model = rm.char_lstm(6, hidden_size=4)
  # Every segment of a stream holds the same 4 tokens: the clipped Langevin steps line up, and
  # x - mu grows past the clipping norm.
  x_all, y_all = bptt.train_examples(np.arange(90) % 4, 3, 4)
  L, clip, lr = 3, 0.05, 2.0
  make_tx = lambda key: entropy_optax.entropy_sgd(
    1.0, num_langevin_steps=L, gamma=0.1, langevin_lr=lr, noise=0.0, momentum=0.0, key=key
  )
  task = _task(model, L, clip)
  state = loop_state.init_state(model, make_tx, task, x_all[:1], 0, 3)
  xs, ys = jnp.asarray(x_all[:9].reshape(L, 3, 4)), jnp.asarray(y_all[:9].reshape(L, 3, 4))
  new_state, _ = jax.jit(lambda s: steps.train_step(s, xs, ys, task=task, reset_carry=True))(state)
  x = state.params
  zero = rm.zero_state(model, 3)

  def loss(params, k, carry):
    logits, final = model.apply({"params": params}, xs[k], carry, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, ys[k]).mean(), final

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
  # A plain optimizer's one gradient is clipped too: SGD with lr 1 moves by at most clip.
  sgd_task = _task(model, 1, clip)
  sgd_state = loop_state.init_state(model, lambda k: optax.sgd(1.0), sgd_task, x_all[:1], 0, 3)
  moved, _ = jax.jit(
    lambda s: steps.train_step(s, xs[:1], ys[:1], task=sgd_task, reset_carry=True)
  )(sgd_state)
  norm = float(optax.tree.norm(optax.tree.sub(moved.params, sgd_state.params)))
  assert float(optax.tree.norm(g0)) > 2 * clip and norm == pytest.approx(clip, rel=1e-5)
