"""Which parameter leaves the Langevin chain moves: ``local_entropy``'s ``mask``, leaf by leaf."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

Mask = Any  # a pytree of Python bools (a prefix of params), or a function params -> such a tree


def reject_masked_nodes(params: Any) -> None:
  """A clear error when ``local_entropy`` runs inside ``optax.masked`` / ``optax.partition``.

  There the unselected leaves of params are ``optax.MaskedNode``: ``grad_fn`` would get a model
  with holes (a loss fails on them), so the chain is selected by ``mask`` instead.
  """
  is_masked = lambda leaf: isinstance(leaf, optax.MaskedNode)
  if any(is_masked(leaf) for leaf in jax.tree.leaves(params, is_leaf=is_masked)):
    raise ValueError(
      "local_entropy got params with optax.MaskedNode leaves: it is inside optax.masked or "
      "optax.partition, where grad_fn would see a model with holes. Put it outside, on the "
      "whole model, and select the leaves the chain moves with its mask argument: "
      "optax.chain(local_entropy(..., mask=is_selected), optax.partition(...)) "
      "(entropy_sgd and entropy_adam take mask= too)."
    )


def leaf_flags(mask: Mask | Callable[[Any], Mask], params: Any) -> list[bool]:
  """One Python bool per leaf of ``params``: whether the chain moves it.

  ``mask`` follows ``optax.masked``: a tree of bools with the structure of params, or a prefix
  of it (a bool covers a whole subtree), or a function of params returning one. It must select
  at least one leaf. ``optax.inject_hyperparams`` calls every function argument as a schedule of
  the step count, unless it is named in ``static_args``: a function ``mask`` must be, or it gets
  the count instead of params (a mask selecting nothing then raises; one selecting everything
  cannot be told apart from a true one).

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import entropy_optax
    >>> params = {"backbone": jnp.ones(2), "head": jnp.ones(3)}
    >>> loss = lambda p: jnp.sum(p["backbone"] ** 2) * jnp.sum(p["head"] ** 2)
    >>> grad_fn = lambda p, k: jax.grad(loss)(p)
    >>> head = lambda p: jax.tree.map(lambda leaf: leaf.size > 2, p)  # leaves of > 2 values
    >>> static = ("mask", "num_langevin_steps")
    >>> tx = optax.inject_hyperparams(entropy_optax.local_entropy, static_args=static)(
    ...     5, 0.1, mask=head)
    >>> state = tx.init(params)
    >>> updates, state = tx.update(grad_fn(params, 0), state, params, grad_fn=grad_fn)
    >>> print(updates["backbone"], bool(jnp.all(updates["head"] < 3)))  # head: x - mu, not g = 4
    [6. 6.] True
  """
  mask_tree = mask(params) if callable(mask) else mask
  try:
    full = jax.tree.map(lambda m, p: jax.tree.map(lambda _: m, p), mask_tree, params)
  except ValueError as error:
    raise ValueError(
      "local_entropy's mask must have the tree structure of params (or a prefix of it), "
      f"one bool per leaf; got {jax.tree.structure(mask_tree)} for params "
      f"{jax.tree.structure(params)}."
    ) from error
  flags = jax.tree.leaves(full)
  for flag in flags:
    if not isinstance(flag, bool):
      raise TypeError(
        f"local_entropy's mask leaves must be Python bools (the selection is static), got {flag!r}."
      )
  if flags and not any(flags):
    # Also what a mask function returns when optax.inject_hyperparams calls it as a schedule,
    # with the step count instead of params (e.g. a predicate on each leaf's shape).
    raise ValueError(
      f"local_entropy's mask selects no leaf of params (it gave {mask_tree!r}): the Langevin "
      "chain would move nothing. If mask is a function and the optimizer is built by "
      "optax.inject_hyperparams, that wrapper calls it as a schedule of the step count, not "
      "with params: pass static_args=('mask', 'num_langevin_steps') to inject_hyperparams. "
      "Without the chain, use the outer optimizer alone."
    )
  return flags


def select(tree: Any, flags: list[bool]) -> list[Any]:
  """The leaves of ``tree`` the chain moves, as a list (a pytree the chain runs on)."""
  return [leaf for leaf, flag in zip(jax.tree.leaves(tree), flags) if flag]


def merge(full: Any, selected: list[Any], flags: list[bool]) -> Any:
  """``full`` with its selected leaves replaced by ``selected`` (the others held as they are)."""
  leaves, treedef = jax.tree.flatten(full)
  chosen = iter(selected)
  return jax.tree.unflatten(
    treedef, [next(chosen) if flag else leaf for leaf, flag in zip(leaves, flags)]
  )


def expand(selected: list[Any], flags: list[bool], like: Any) -> Any:
  """A tree like ``like``: the selected leaves, ``optax.MaskedNode()`` for the others."""
  treedef = jax.tree.structure(like)
  chosen = iter(selected)
  return jax.tree.unflatten(
    treedef, [next(chosen) if flag else optax.MaskedNode() for flag in flags]
  )
