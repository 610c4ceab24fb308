"""A run's data on its devices: the training set whole, the validation set padded to whole
evaluation batches with weights that mark the padding.

Over a mesh every process holds the same whole data set and contributes its devices' copies
(replicated arrays); the batches are split over the mesh's ``data`` axis inside the jitted
functions (``experiments.trainer.step_runners``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments.run import distributed
from experiments.run.schema import RunConfig


def eval_batch_size(config: RunConfig, num_val: int, mesh) -> int:
  """Examples per evaluation batch: ``config.eval_batch_size`` at most, a multiple of the
  devices that split it."""
  size = min(config.eval_batch_size, num_val)
  parts = distributed.axis_size(mesh, distributed.DATA_AXIS)
  return -(-size // parts) * parts


def pad(x: np.ndarray, multiple: int) -> np.ndarray:
  """``x`` with zero rows appended up to a multiple of ``multiple`` rows."""
  extra = -len(x) % multiple
  return np.concatenate([x, np.zeros((extra, *x.shape[1:]), x.dtype)]) if extra else x


def padded_with_weights(x, y, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(x, y, w)`` padded to whole batches of ``size``; ``w`` is 1 on the data, 0 on the
  padding (the evaluation's weights)."""
  x, y = np.asarray(x), np.asarray(y)
  return pad(x, size), pad(y, size), pad(np.ones(len(x), np.float32), size)


class OnDevice(NamedTuple):
  """A run's data on its devices: ``train`` = ``(x, y)``, ``val`` = ``(x, y, w)`` padded to whole
  batches of ``eval_batch_size``, and the numbers of training and validation examples."""

  train: tuple[jax.Array, jax.Array]
  val: tuple[jax.Array, jax.Array, jax.Array]
  num_examples: int
  num_val: int
  eval_batch_size: int


def put(data, config: RunConfig, mesh) -> OnDevice:
  """``(train_x, train_y)`` and the padded ``(val_x, val_y, val_w)`` on the device(s), with
  their sizes.

  Data enter the jitted functions as arguments: closed-over arrays would become constants.
  """
  train_x, train_y, val_x, val_y = (np.asarray(a) for a in data)
  size = eval_batch_size(config, len(val_x), mesh)
  val = padded_with_weights(val_x, val_y, size)
  if mesh is None:
    to_device = jax.device_put
  else:
    to_device = lambda a: jax.device_put(a, NamedSharding(mesh, P()))  # noqa: E731
  return OnDevice(
    tuple(map(to_device, (train_x, train_y))),
    tuple(map(to_device, val)),
    len(train_x),
    len(val_x),
    size,
  )
