"""What the docs state about how the optimizers relate, checked by running both sides.

- ``parle``'s docstring: one replica (``axis_name=None``), or ``rho=0`` with
  ``independent_noise=False``, is :func:`entropy_sgd` with the same arguments and the same
  ``langevin_nesterov`` (their defaults differ: ``True`` in ``parle``, ``None`` following
  ``nesterov`` in ``entropy_sgd``).
- ``docs/flax.md`` and ``TrainState.apply_gradients``: with a plain optax optimizer and a
  ``grad_fn`` over L stacked mini-batches, one call makes L updates, one per mini-batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import entropy_optax as eo

TARGETS = jnp.array([[0.5, 2.0], [1.5, 1.0]])  # two replicas' data: the minimum of each loss
ARGS = dict(num_langevin_steps=4, gamma=0.5, langevin_lr=0.1, momentum=0.9, nesterov=False)
ARGS |= dict(langevin_momentum=0.9, weight_decay=1e-3, key=3)


def _loss(params, target):
  return jnp.sum((params - target) ** 2 * jnp.array([1.0, 4.0]))


def _run(tx, target, steps=10):
  grad_fn = lambda p, k: jax.grad(_loss)(p, target + 0.1 * k)  # a different "batch" per step
  params, state = jnp.zeros(2), tx.init(jnp.zeros(2))
  for _ in range(steps):
    updates, state = tx.update(grad_fn(params, 0), state, params, grad_fn=grad_fn)
    params = optax.apply_updates(params, updates)
  return params


@pytest.mark.parametrize("langevin_nesterov", [True, False])
@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_parle_with_one_replica_is_entropy_sgd_with_the_same_langevin_nesterov(
  langevin_nesterov, noise
):
  args = ARGS | dict(noise=noise, langevin_nesterov=langevin_nesterov)
  one = _run(eo.parle(0.1, rho=1.0, axis_name=None, **args), TARGETS[0])
  sgd = _run(eo.entropy_sgd(0.1, **args), TARGETS[0])
  np.testing.assert_allclose(one, sgd, rtol=1e-6, atol=1e-7)


def test_parle_and_entropy_sgd_defaults_differ_in_langevin_nesterov():
  """The same call with the defaults: parle's chain is Nesterov, entropy_sgd's follows
  nesterov=False (heavy-ball), so the results differ; the docstring says to pass it."""
  one = _run(eo.parle(0.1, rho=1.0, axis_name=None, noise=0.0, **ARGS), TARGETS[0])
  with pytest.warns(DeprecationWarning, match="langevin_nesterov"):
    sgd = eo.entropy_sgd(0.1, noise=0.0, **ARGS)
  assert np.abs(one - _run(sgd, TARGETS[0])).max() > 1e-3
  same = eo.entropy_sgd(0.1, noise=0.0, langevin_nesterov=True, **ARGS)
  np.testing.assert_allclose(one, _run(same, TARGETS[0]), rtol=1e-6, atol=1e-7)


def test_parle_with_rho_zero_is_entropy_sgd_on_each_replica():
  args = ARGS | dict(noise=0.3, langevin_nesterov=True)
  tx = eo.parle(0.1, rho=0.0, independent_noise=False, **args)
  both = jax.vmap(lambda target: _run(tx, target), axis_name="replica")(TARGETS)
  for replica, target in enumerate(TARGETS):
    alone = _run(eo.entropy_sgd(0.1, **args), target)
    np.testing.assert_allclose(both[replica], alone, rtol=1e-6, atol=1e-7)


def test_train_state_with_a_plain_optimizer_makes_one_update_per_stacked_batch():
  pytest.importorskip("flax")
  from entropy_optax.flax import TrainState, make_grad_fn

  num_batches, calls = 5, 20
  batches = jnp.arange(num_batches, dtype=jnp.float32)[:, None]  # batch k: the target k
  loss_fn = lambda w, batch: jnp.sum((w - batch) ** 2)
  state = TrainState.create(apply_fn=None, params=jnp.zeros(1), tx=optax.sgd(0.1))
  step = jax.jit(
    lambda s: s.apply_gradients(
      grads=jax.grad(loss_fn)(s.params, batches[0]), grad_fn=make_grad_fn(loss_fn, batches)
    )
  )
  for _ in range(calls):
    state = step(state)
  assert int(state.step) == num_batches * calls  # 100 updates, not 20
  w = 0.0  # the same updates written out: SGD on batch k = 0..4, 20 times
  for _ in range(calls):
    for k in range(num_batches):
      w -= 0.1 * 2 * (w - k)
  np.testing.assert_allclose(state.params, [w], rtol=1e-5)


def test_migration_page_lists_the_state_fields_that_were_renamed():
  """docs/migration.md's state-field table: each new name is a field, no old name is."""
  import pathlib
  import re

  page = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "migration.md").read_text()
  rows = re.findall(r"^\| \{class\}`~entropy_optax\.(\w+)` \| `(\w+)` \| `(\w+)` \|$", page, re.M)
  assert {(cls, old) for cls, old, _ in rows} == {
    ("LocalEntropyState", "count"),
    ("LocalEntropyState", "rng_key"),
    ("LocalEntropyState", "mu"),
    ("LangevinStats", "gamma"),
  }
  for cls, old, new in rows:
    fields = getattr(eo, cls)._fields
    assert new in fields and old not in fields, (cls, old, new)
