"""The MNIST-format IDX files (Fashion-MNIST by default) as flax's MNIST programs hold them.

flax's programs load MNIST with ``tensorflow_datasets`` or Hugging Face ``datasets``; the ports
here read the same four files any MNIST-format data set ships as, offline, with
``experiments/data/idx.py``: images float32 in [0, 1] of shape (n, 28, 28, 1), labels int32.
"""

from __future__ import annotations

import numpy as np

from experiments.data import idx

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"  # the Debian package dataset-fashion-mnist


def get_datasets(data_dir: str = DEFAULT_DATA_DIR) -> tuple[dict, dict]:
  """``(train_ds, test_ds)``: dicts of numpy arrays ``image`` (n, 28, 28, 1) and ``label``."""
  train_x, train_y, test_x, test_y = idx.load_directory(data_dir)
  as_ds = lambda x, y: {"image": x[..., None].astype(np.float32) / 255.0, "label": y}
  return as_ds(train_x, train_y), as_ds(test_x, test_y)


def shuffled_batches(ds: dict, batch_size: int, rng: np.random.Generator):
  """One pass over ``ds`` in a fresh random order, in batches of ``batch_size``, dropping the
  incomplete last batch (flax's ``train_ds.shuffle(...).batch(batch_size, drop_remainder=True)``
  with a full shuffle instead of a 1024-example buffer)."""
  perm = rng.permutation(len(ds["label"]))
  for start in range(0, len(perm) - batch_size + 1, batch_size):
    rows = perm[start : start + batch_size]
    yield {k: v[rows] for k, v in ds.items()}


def ordered_batches(ds: dict, batch_size: int):
  """``ds`` in order, in batches of ``batch_size``, dropping the incomplete last batch (flax's
  ``test_ds.batch(batch_size, drop_remainder=True)``)."""
  for start in range(0, len(ds["label"]) - batch_size + 1, batch_size):
    yield {k: v[start : start + batch_size] for k, v in ds.items()}
