"""Which parameter leaves the Langevin chain moves: local_entropy's ``mask``, leaf by leaf."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import optax

from entropy_optax._checks import check_gradient_tree

Mask = Any  # a pytree of Python bools (a prefix of params), or a function params -> such a tree


def reject_masked_nodes(params: Any) -> None:
  """A clear error when local_entropy runs inside ``optax.masked`` / ``optax.partition``.

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


@dataclasses.dataclass(frozen=True)
class Selection:
  """The leaves the chain moves, and the way between a whole tree and the chain's part of it.

  ``flags`` is None when the chain moves every leaf: then the part is the tree itself.
  """

  flags: tuple[bool, ...] | None

  @classmethod
  def of(cls, mask: Mask | Callable[[Any], Mask] | None, params: Any) -> Selection:
    """The selection local_entropy's ``mask`` makes of ``params`` (None: all of it)."""
    return cls(None if mask is None else tuple(leaf_flags(mask, params)))

  def part(self, tree: Any) -> Any:
    """The chain's part of ``tree`` (a tree like params)."""
    return tree if self.flags is None else select(tree, self.flags)

  def with_part(self, tree: Any, part: Any) -> Any:
    """``tree`` with the chain's part replaced by ``part``, the other leaves as they are."""
    return part if self.flags is None else merge(tree, part, self.flags)

  def in_state(self, part: Any, params: Any) -> Any:
    """A state tree like ``params``: ``part``, and ``optax.MaskedNode()`` at the other leaves."""
    return part if self.flags is None else expand(part, self.flags, params)

  def gradient_part(self, grads: Any, params: Any) -> Any:
    """The chain's part of a whole gradient tree, checked against params with its paths."""
    if self.flags is None:
      return grads  # the chain checks it, the part being the whole
    check_gradient_tree(grads, params)
    return self.part(grads)

  def part_grad_fn(self, grad_fn: Callable, params: Any) -> Callable:
    """``grad_fn`` on the chain's part: the other leaves held at ``params``."""
    if self.flags is None:
      return grad_fn
    return lambda part, k: self.gradient_part(grad_fn(self.with_part(params, part), k), params)
