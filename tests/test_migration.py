"""The 0.1.0 keywords (docs/migration.md) still run, warn with the new name, and change nothing.

Also: ``import entropy_optax`` leaves the flatness tools (and their dependencies) unimported.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import entropy_optax as eo
from entropy_optax import _deprecation

ROOT = Path(__file__).resolve().parents[1]
PARAMS = jnp.array([1.0, -2.0, 0.5])
CURVATURES = jnp.array([1.0, 3.0, 0.5])


def grad_fn(x, k):
  return CURVATURES * x + 0.1 * k


def first_update(tx):
  return jax.jit(lambda s: tx.update(grad_fn(PARAMS, 0), s, PARAMS, grad_fn=grad_fn)[0])(
    tx.init(PARAMS)
  )


def built_with_warnings(factory, **kwargs):
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    result = factory(**kwargs)
  return result, [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]


CHAIN = dict(num_langevin_steps=3, gamma=0.5, noise=1e-2, langevin_momentum=0.9)


@pytest.mark.parametrize(
  "factory, old, new",
  [
    (eo.local_entropy, dict(nesterov=False), dict(langevin_nesterov=False)),
    (eo.local_entropy, dict(noise_sampler="gaussian"), dict(noise_distribution="gaussian")),
    (
      lambda **kw: eo.entropy_sgd(0.1, **kw),
      dict(noise_sampler="gaussian"),
      dict(noise_distribution="gaussian"),
    ),
    (
      lambda **kw: eo.entropy_adam(0.1, **kw),
      dict(noise_sampler="gaussian"),
      dict(noise_distribution="gaussian"),
    ),
  ],
)
def test_old_keyword_warns_with_the_new_name_and_builds_the_same_optimizer(factory, old, new):
  old_tx, messages = built_with_warnings(factory, **CHAIN, **old)
  (old_name,) = old
  (new_name,) = new
  assert len(messages) == 1 and old_name in messages[0] and new_name in messages[0]
  new_tx, messages = built_with_warnings(factory, **CHAIN, **new)
  assert messages == []
  np.testing.assert_array_equal(first_update(old_tx), first_update(new_tx))


def test_langevin_mean_and_gaussian_smoothing_take_the_old_keywords():
  common = dict(gamma=0.5, num_steps=4, langevin_lr=0.1, noise=1e-2, alpha=0.5)
  common |= dict(langevin_momentum=0.9)
  key = jax.random.key(0)
  with pytest.warns(DeprecationWarning, match="langevin_nesterov"):
    old, _ = eo.langevin_mean(grad_fn, PARAMS, key, **common, nesterov=False)
  new, _ = eo.langevin_mean(grad_fn, PARAMS, key, **common, langevin_nesterov=False)
  np.testing.assert_array_equal(old, new)
  with pytest.warns(DeprecationWarning, match="noise_distribution"):
    eo.gaussian_smoothing(3, 0.1, noise_sampler="irwin_hall")


def test_old_and_new_keyword_together_is_a_type_error():
  with pytest.raises(TypeError, match="pass langevin_nesterov only"):
    eo.local_entropy(nesterov=True, langevin_nesterov=True)


def test_signatures_show_the_new_names_only():
  for factory in (eo.local_entropy, eo.entropy_sgd, eo.entropy_adam, eo.langevin_mean):
    names = inspect.signature(factory).parameters
    assert "noise_distribution" in names and "noise_sampler" not in names, factory
    assert "langevin_nesterov" in names, factory
  assert "nesterov" not in inspect.signature(eo.local_entropy).parameters


def test_entropy_sgd_nesterov_is_the_outer_one_and_old_calls_keep_their_chain():
  """nesterov=False alone keeps 0.1.0's heavy-ball chain (warning); langevin_nesterov chooses."""
  heavy_ball_everywhere = eo.entropy_sgd(0.1, nesterov=False, langevin_nesterov=False, **CHAIN)
  with pytest.warns(DeprecationWarning, match="langevin_nesterov=False"):
    old_call = eo.entropy_sgd(0.1, nesterov=False, **CHAIN)
  np.testing.assert_array_equal(first_update(old_call), first_update(heavy_ball_everywhere))
  outer_only = eo.entropy_sgd(0.1, nesterov=False, langevin_nesterov=True, **CHAIN)
  assert np.abs(first_update(outer_only) - first_update(heavy_ball_everywhere)).max() > 1e-6
  # Without a Langevin momentum nesterov=False is the outer switch alone: no warning.
  no_chain_momentum = CHAIN | dict(langevin_momentum=0.0, nesterov=False)
  _, messages = built_with_warnings(eo.entropy_sgd, learning_rate=0.1, **no_chain_momentum)
  assert messages == []


def test_renamed_table_matches_the_migration_note():
  note = (ROOT / "docs" / "migration.md").read_text()
  for old, new in _deprecation.RENAMED.items():
    assert f"| `{old}` | `{new}` |" in note


def test_import_does_not_load_the_flatness_tools():
  """``entropy_optax.flatness`` (matfree, matplotlib, eigensolvers) is imported on first use."""
  probe = (
    "import sys, entropy_optax; "
    "print(sorted(m for m in ('entropy_optax.flatness', 'matfree', 'matplotlib') "
    "if m in sys.modules)); "
    "entropy_optax.flatness.hessian_eigenvalues; "
    "from entropy_optax import flatness; "
    "print(flatness is entropy_optax.flatness)"
  )
  result = subprocess.run(
    [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ["[]", "True"]
