"""The inputs of each Langevin step: stacked mini-batches (one per step) and per-step keys.

Flax-free (numpy and jax only), so that the core can check a ``grad_fn``'s batches against
``num_langevin_steps`` without importing flax. ``entropy_optax.flax`` re-exports the public names.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

STACK_HELP = (
  "stack L mini-batches on axis 0 (L = num_langevin_steps): "
  "entropy_optax.flax.stack_batches(batches, L) turns an iterator of batches, a tf.data "
  "dataset, a grain loader or an array of batch indices into stacked batches"
)


def take_batch(batches: Any, k: jax.Array | int, *, num_batches: int | None = None) -> Any:
  """Mini-batch ``k`` of ``batches`` (every leaf stacked on a leading axis of length L).

  ``k`` may be traced. An out-of-range ``k`` gives NaN inputs (integer leaves: their minimum
  value) rather than silently repeating the last batch.

  Args:
    batches: a pytree whose leaves stack the L mini-batches on axis 0, as
      :func:`entropy_optax.flax.stack_batches` makes them.
    k: the index of the mini-batch, an int or an int32 scalar (traced or not), 0 to L − 1.
    num_batches: L, to check: a ValueError that names
      :func:`~entropy_optax.flax.stack_batches` is raised, before the model sees the batch,
      when a leaf's leading axis is not of length L (batches not stacked, or fewer than L
      stacked). Recommended for the gradient at x, ``take_batch(batches, 0, num_batches=L)``,
      the first use of the batches in a training step.

  Returns:
    The pytree of mini-batch ``k``: every leaf without its leading axis.

  Raises:
    ValueError: ``num_batches`` is given and ``batches`` does not stack that many mini-batches.

  Examples:
    >>> import jax.numpy as jnp
    >>> from entropy_optax.flax import take_batch
    >>> print(take_batch({"x": jnp.arange(6).reshape(3, 2)}, 1)["x"])
    [2 3]
    >>> take_batch({"x": jnp.zeros((8, 2))}, 0, num_batches=3)  # an unstacked batch of 8
    Traceback (most recent call last):
    ...
    ValueError: batches['x'] has shape (8, 2), its leading axis of length 8, not L = 3 ...
  """
  if num_batches is not None:
    check_stacked(batches, num_batches)
  return jax.tree.map(lambda b: jnp.take(b, k, axis=0, mode="fill"), batches)


def check_stacked(batches: Any, num_batches: int) -> None:
  """Raises a ValueError naming :func:`~entropy_optax.flax.stack_batches` unless every leaf
  has a leading axis of L."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(batches):
    shape = tuple(np.shape(leaf))
    if not shape or shape[0] != num_batches:
      raise ValueError(
        f"batches{jax.tree_util.keystr(path)} has shape {shape}, its leading axis of length "
        f"{shape[0] if shape else 'none'}, not L = {num_batches} mini-batches stacked on axis 0 "
        f"(expected shape ({num_batches}, batch_size, ...)): {STACK_HELP}, e.g. "
        f"`for batches in stack_batches(train_ds, {num_batches})`."
      )
  if not jax.tree.leaves(batches):
    raise ValueError(f"batches has no arrays: {STACK_HELP}.")


def num_stacked(batches: Any) -> int:
  """The number of mini-batches stacked on axis 0 of ``batches`` (static, from the shapes).

  Args:
    batches: a pytree whose array leaves all stack the same number of mini-batches on axis 0.

  Returns:
    That number, a Python int.

  Raises:
    ValueError: ``batches`` has no array leaf, a scalar leaf, or leaves whose axis 0 differ.

  Examples:
    >>> import numpy as np
    >>> from entropy_optax.flax import num_stacked
    >>> num_stacked({"image": np.zeros((5, 32, 28, 28, 1)), "label": np.zeros((5, 32))})
    5
  """
  leaves = jax.tree_util.tree_leaves_with_path(batches)
  if not leaves:
    raise ValueError(f"batches has no arrays: {STACK_HELP}.")
  sizes = {}
  for path, leaf in leaves:
    shape = np.shape(leaf)
    if not shape:
      raise ValueError(
        f"batches{jax.tree_util.keystr(path)} is a scalar, not mini-batches stacked on axis 0: "
        f"{STACK_HELP}."
      )
    sizes[jax.tree_util.keystr(path) or "<root>"] = shape[0]
  if len(set(sizes.values())) > 1:
    raise ValueError(
      f"the leaves of batches stack different numbers of mini-batches on axis 0 ({sizes}): "
      f"{STACK_HELP}."
    )
  return next(iter(sizes.values()))


def check_num_batches(num_batches: int | None, num_langevin_steps: int) -> None:
  """Raises a ValueError saying what to do when ``num_batches`` is not ``num_langevin_steps``.

  Args:
    num_batches: the mini-batches a ``grad_fn`` holds (its ``num_batches`` attribute); None,
      one batch shared by every step, always passes.
    num_langevin_steps: L, the Langevin steps of the optimizer.

  Raises:
    ValueError: ``num_batches`` is neither None nor ``num_langevin_steps``.

  Examples:
    >>> from entropy_optax.flax import check_num_batches
    >>> check_num_batches(5, 5)
  """
  if num_batches is None or num_batches == num_langevin_steps:
    return
  raise ValueError(
    f"grad_fn holds {num_batches} stacked mini-batches but num_langevin_steps = "
    f"{num_langevin_steps}: {STACK_HELP}, or build grad_fn with shared_batch=True to use one "
    "mini-batch at every step. (An unstacked batch shows up here with its batch size as the "
    "number of mini-batches.)"
  )


def _stack(group: list[Any], first_index: int) -> Any:
  """Stacks a list of same-shaped pytrees on a new axis 0 (jnp for jax arrays, else numpy)."""
  treedef = jax.tree.structure(group[0])
  for offset, batch in enumerate(group[1:], 1):
    if jax.tree.structure(batch) != treedef:
      raise ValueError(
        f"mini-batch {first_index + offset} has structure {jax.tree.structure(batch)}, "
        f"mini-batch {first_index} has {treedef}: every mini-batch must have the same keys."
      )
  leaves = [jax.tree.leaves(batch) for batch in group]
  stacked = []
  for column in zip(*leaves):
    shapes = [np.shape(leaf) for leaf in column]
    if len(set(shapes)) > 1:
      raise ValueError(
        f"mini-batches {first_index}..{first_index + len(group) - 1} have shapes {shapes}: "
        "every mini-batch must have the same shape (drop the incomplete last batch, e.g. "
        "tf.data's .batch(B, drop_remainder=True))."
      )
    stack = jnp.stack if any(isinstance(leaf, jax.Array) for leaf in column) else np.stack
    stacked.append(stack(column))
  return jax.tree.unflatten(treedef, stacked)


def _stack_iterator(source: Iterable[Any], num_batches: int) -> Iterator[Any]:
  iterator = iter(source)
  for first_index in itertools.count(0, num_batches):
    group = list(itertools.islice(iterator, num_batches))
    if len(group) < num_batches:  # The incomplete last group is dropped, as drop_remainder.
      return
    yield _stack(group, first_index)


def stack_batches(source: Any, num_batches: int) -> Any:
  """Groups consecutive mini-batches by ``num_batches`` (= L), stacked on a new axis 0.

  One outer Entropy-SGD step consumes L mini-batches, so an epoch has 1/L as many steps; the
  last ``len(source) % L`` mini-batches are dropped, like ``drop_remainder``.

  Args:
    source: an iterable or iterator of mini-batches (pytrees of numpy or jax arrays: dicts,
      tuples), e.g. a Python generator or a ``grain`` ``DataLoader``; or a ``tf.data.Dataset``
      of batches (read with ``as_numpy_iterator()``); or an array whose axis 0 indexes
      mini-batches, e.g. the permutation reshaped to ``(steps_per_epoch, batch_size)`` of flax's
      Linen MNIST example: the result then has shape ``(steps_per_epoch // L, L, batch_size)``,
      and indexing the data with one row gives L stacked mini-batches.
    num_batches: L, a positive int.

  Returns:
    For an array, the reshaped array (numpy or jax, as given); otherwise an iterator of stacked
    mini-batches (numpy leaves, or jax arrays where the batches hold jax arrays).

  Examples:
    >>> import numpy as np
    >>> from entropy_optax.flax import stack_batches
    >>> batches = ({"x": np.full((2, 3), i)} for i in range(7))
    >>> [b["x"].shape for b in stack_batches(batches, 3)]
    [(3, 2, 3), (3, 2, 3)]
    >>> stack_batches(np.arange(12).reshape(6, 2), 3).shape  # batch indices
    (2, 3, 2)
  """
  if (
    isinstance(num_batches, bool)
    or not isinstance(num_batches, (int, np.integer))
    or num_batches < 1
  ):
    raise ValueError(f"num_batches must be a positive int (L), got {num_batches!r}.")
  if isinstance(source, (np.ndarray, jax.Array)):
    if source.ndim < 1:
      raise ValueError("stack_batches got a scalar; pass an array whose axis 0 indexes batches.")
    usable = source.shape[0] // num_batches * num_batches
    return source[:usable].reshape(-1, num_batches, *source.shape[1:])
  if isinstance(source, Mapping):
    raise TypeError(
      "stack_batches got a mapping (a whole data set?): pass an iterator of mini-batches, a "
      "tf.data dataset or an array of batch indices (then index the data with each row)."
    )
  if hasattr(source, "as_numpy_iterator"):  # tf.data.Dataset, without importing tensorflow.
    source = source.as_numpy_iterator()
  if not isinstance(source, Iterable):
    raise TypeError(
      f"stack_batches needs an iterable of mini-batches, a tf.data dataset or an array of "
      f"batch indices, got {type(source).__name__}."
    )
  return _stack_iterator(source, num_batches)


def langevin_key(key: jax.Array, k: jax.Array | int) -> jax.Array:
  """The PRNG key of Langevin step ``k`` derived from a step's ``key``: ``fold_in(key, k)``.

  What :func:`~entropy_optax.flax.make_grad_fn` gives the loss at step k, so that dropout
  draws a fresh mask at every Langevin step.

  Args:
    key: the training step's PRNG key (e.g. ``TrainState.step_key()``).
    k: the Langevin step, an int or an int32 scalar.

  Returns:
    ``jax.random.fold_in(key, k)``.

  Examples:
    >>> import jax
    >>> from entropy_optax.flax import langevin_key
    >>> key = jax.random.key(0)
    >>> bool((jax.random.key_data(langevin_key(key, 1))
    ...       == jax.random.key_data(jax.random.fold_in(key, 1))).all())
    True
  """
  return jax.random.fold_in(key, k)


def checked_loss(loss_fn: Any, has_aux: bool) -> Any:
  """``loss_fn`` with its output checked against ``has_aux`` at trace time, errors that say so."""

  def loss(*args):
    out = loss_fn(*args)
    if not has_aux and isinstance(out, (tuple, list)):
      raise TypeError(
        f"loss_fn returns a {type(out).__name__} of {len(out)} (e.g. (loss, logits)), not a "
        "scalar loss: pass has_aux=True to the grad_fn builder (as to jax.value_and_grad)."
      )
    if has_aux and not (isinstance(out, (tuple, list)) and len(out) == 2):
      raise TypeError(
        "has_aux=True but loss_fn does not return a pair (loss, aux): drop has_aux, or "
        "return (loss, aux)."
      )
    return out

  return loss
