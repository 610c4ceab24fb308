"""The check of the gradients ``grad_fn`` returns (the chain's arguments: ``ChainConfig``)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


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
