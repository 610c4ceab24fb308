"""The one check of the chain's arguments, and of the gradients ``grad_fn`` returns."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from entropy_optax import _noise, _sghmc
from entropy_optax._utils import is_concrete_number

WEIGHT_DECAY_AT = ("before_momentum", "after_momentum")


def check_arguments(
  num_steps,
  gamma,
  langevin_lr,
  noise,
  alpha,
  noise_sampler,
  *,
  sampler="sgld",
  friction=None,
  langevin_momentum=0.0,
  weight_decay_at="before_momentum",
) -> None:
  """Errors naming the argument and the fix; traced values (inject_hyperparams) pass unchecked.

  The one check of the chain's hyper-parameters: ``langevin_mean`` runs it on every call,
  ``local_entropy`` once, when it is built.
  """
  if not isinstance(num_steps, (int, np.integer)) or isinstance(num_steps, bool):
    raise TypeError(
      f"num_langevin_steps must be a Python int (it is the scan length), got {num_steps!r}; "
      "with optax.inject_hyperparams pass static_args=('num_langevin_steps',)."
    )
  if num_steps < 1:
    raise ValueError(f"num_langevin_steps must be >= 1, got {num_steps}.")
  if is_concrete_number(gamma) and not gamma > 0:
    raise ValueError(f"gamma must be > 0 (or an optax schedule), got {gamma}.")
  if is_concrete_number(langevin_lr) and not langevin_lr > 0:
    raise ValueError(f"langevin_lr must be > 0, got {langevin_lr}.")
  if is_concrete_number(noise) and not noise >= 0:
    raise ValueError(f"noise must be >= 0, got {noise}.")
  if is_concrete_number(alpha) and not 0 < alpha <= 1:
    raise ValueError(f"alpha must be in (0, 1], got {alpha}.")
  if noise_sampler not in _noise.NOISE_SAMPLERS:
    raise ValueError(
      f"noise_sampler must be one of {_noise.NOISE_SAMPLERS}, got {noise_sampler!r}."
    )
  _sghmc.check_arguments(sampler, friction, langevin_momentum)
  if weight_decay_at not in WEIGHT_DECAY_AT:
    raise ValueError(f"weight_decay_at must be one of {WEIGHT_DECAY_AT}, got {weight_decay_at!r}.")


def check_gradient_tree(grads: Any, reference: Any) -> None:
  """Raise a ValueError naming the mismatch when grad_fn returns a tree unlike params."""
  ref_struct, got_struct = jax.tree.structure(reference), jax.tree.structure(grads)
  if ref_struct != got_struct:
    raise ValueError(
      "grad_fn must return gradients with the same tree structure as params; got "
      f"{got_struct}, expected {ref_struct}."
    )
  for (path, ref), got in zip(
    jax.tree_util.tree_leaves_with_path(reference), jax.tree.leaves(grads)
  ):
    if jnp.shape(got) != jnp.shape(ref):
      raise ValueError(
        f"grad_fn returned shape {jnp.shape(got)} for params{jax.tree_util.keystr(path)}, "
        f"whose shape is {jnp.shape(ref)}."
      )
