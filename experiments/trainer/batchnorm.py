"""BatchNorm running statistics re-estimated at the current weights, as the authors' codes do.

Every gradient evaluation of Entropy-SGD in the authors' codes runs the model in training mode,
so the running statistics also follow the Langevin samples x'. Before each evaluation both codes
therefore re-estimate them at the kept weights x: dropout set to 0, the data fed through the
model in training mode (Lua ``compute_bn_params``: the evaluated set itself, in batches of 1024;
PyTorch port ``dry_feed``: training mini-batches of 128). The computation is the library's
(``entropy_optax.flax.reestimate_batch_stats``: the exact mean and biased variance over all
batches); the loop feeds it the training set.

``BatchNormReestimation`` is the ``tasks.Task.before_eval`` hook of the training loop
(``--bn-reestimate``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax

import entropy_optax.flax

DROPOUT_FIELDS = ("dropout", "input_dropout")


def without_dropout(model):
  """``model`` with every dropout rate field of ``DROPOUT_FIELDS`` it has set to 0."""
  fields = {f.name for f in dataclasses.fields(model)}
  return model.clone(**{name: 0.0 for name in DROPOUT_FIELDS if name in fields})


def reestimate_batch_stats(
  apply_fn: Callable[..., Any],
  params: Any,
  batch_stats: Any,
  x: jax.Array,
  *,
  batch_size: int = 1024,
) -> Any:
  """The library's ``entropy_optax.flax.reestimate_batch_stats`` for the experiments' models,
  whose ``apply_fn`` takes ``train=``: the statistics of every BatchNorm set to the mean and
  biased variance of its inputs over ``x``, fed in training mode in batches of ``batch_size``.

  Args:
    apply_fn: ``apply_fn(variables, x, train=True, mutable=["batch_stats"])``, a model without
      dropout (``without_dropout(model).apply``): the codes set dropout to 0 here.
    params: the weights x at which to estimate.
    batch_stats: the current running statistics (only their structure is used).
    x: the inputs (e.g. the training set), leading axis examples.
    batch_size: examples per forward pass (1024 in the Lua code).

  Returns:
    ``batch_stats`` of the same structure and dtypes.
  """
  return entropy_optax.flax.reestimate_batch_stats(
    functools.partial(apply_fn, train=True), params, batch_stats, x, batch_size=batch_size
  )


@dataclasses.dataclass(frozen=True)
class BatchNormReestimation:
  """``tasks.Task.before_eval``: the state with its BatchNorm statistics re-estimated at its
  weights on the training set (dropout off), as the authors' codes before every evaluation."""

  model: Any  # the Linen model of the run (its dropout is turned off here)
  batch_size: int = 1024

  def __call__(self, state, train_x, train_y):
    del train_y
    if state.batch_stats is None:
      return state
    stats = reestimate_batch_stats(
      without_dropout(self.model).apply,
      state.params,
      state.batch_stats,
      train_x,
      batch_size=self.batch_size,
    )
    return state.replace(
      batch_stats=jax.tree.map(lambda n, o: n.astype(o.dtype), stats, state.batch_stats)
    )
