"""MNIST and Fashion-MNIST: from a directory of their four IDX files, else through tfds.

Both data sets ship as the same four IDX files (``experiments.data.idx``). A loader looks, in
order, in

1. ``data_dir``, when it holds IDX files (``--data-dir DIR``);
2. the data set's system directory when no ``data_dir`` is given: Debian's
   ``dataset-fashion-mnist`` package installs Fashion-MNIST in
   ``/usr/share/datasets/fashion-mnist`` (``SYSTEM_DIRECTORIES``);
3. TensorFlow Datasets (``mnist``, ``fashion_mnist``) in ``data_dir`` as a tfds data directory
   (or tfds's default), prepared there or downloaded.

When none has the data, one error line names every way to get it. Pixels are scaled to [0, 1];
the splits are the published ones (60,000 training and 10,000 test images).
"""

from __future__ import annotations

import os

import numpy as np

from experiments.data import idx
from experiments.data.datasets import HUMAN_NAMES, Dataset, DatasetUnavailableError, load_tfds

# Where a system package installs a data set's IDX files (checked when no data_dir is given).
SYSTEM_DIRECTORIES = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}
# How to install that package, for the error message.
_PACKAGES = {"fashion_mnist": "apt-get install dataset-fashion-mnist"}


def _from_directory(name: str, directory: str) -> tuple[np.ndarray, ...]:
  try:
    train_x, train_y, test_x, test_y = idx.load_directory(directory)
  except (FileNotFoundError, idx.IdxFormatError) as e:  # one line for the command line
    raise DatasetUnavailableError(f"{HUMAN_NAMES[name]}: {e}") from None
  return train_x[..., None], train_y, test_x[..., None], test_y


def _unavailable(name: str, data_dir: str | None, reason: str) -> DatasetUnavailableError:
  human = HUMAN_NAMES[name]
  looked = f"{data_dir} holds no IDX files" if data_dir else "no --data-dir was given"
  system = SYSTEM_DIRECTORIES.get(name)
  if system and not data_dir:
    looked += f", {system} holds none"
  package = (
    f" (on Debian or Ubuntu, `{_PACKAGES[name]}` installs them in {system})"
    if name in _PACKAGES
    else ""
  )
  files = ", ".join(f"{stem}.gz" for pair in idx.SPLIT_FILES.values() for stem in pair)
  return DatasetUnavailableError(
    f"{human} not found: {looked}, and tfds has not prepared '{name}' in "
    f"{data_dir or 'its default data_dir'} and could not download it ({reason}). Either pass "
    f"--data-dir DIR with the four IDX files ({files}, gzipped or not){package}, or run "
    f"once with internet access so "
    f"that tfds downloads and prepares '{name}' (or pass --data-dir to a tfds data directory "
    "that holds it), or use --synthetic for random data of the same shape.",
    reason,
  )


def load(
  name: str, data_dir: str | None = None, *, download: bool = True, standardize: bool = False
) -> Dataset:
  """MNIST or Fashion-MNIST (``name``: ``"mnist"`` or ``"fashion_mnist"``), pixels in [0, 1].

  Args:
    name: the data set.
    data_dir: a directory of the four IDX files, or a tfds data directory; None: the data
      set's system directory if it has one there (``SYSTEM_DIRECTORIES``), else tfds's default.
    download: whether tfds may download and prepare the data set if absent.
    standardize: also subtract the training pixel mean and divide by the training pixel
      standard deviation (one scalar each).

  Returns:
    ``Dataset`` of 60000 + 10000 float32 images of shape (28, 28, 1), 10 classes, named
    ``name``.

  Raises:
    DatasetUnavailableError: the data are in none of the places above (naming them all), or
      an IDX file is missing or malformed (naming the file).
  """
  if name not in SYSTEM_DIRECTORIES and name != "mnist":
    raise ValueError(f"Unknown data set {name!r}; valid names: mnist, fashion_mnist.")
  system = SYSTEM_DIRECTORIES.get(name)
  if data_dir and idx.has_files(data_dir):
    arrays = _from_directory(name, data_dir)
  elif not data_dir and system and os.path.isdir(system) and idx.has_files(system):
    arrays = _from_directory(name, system)
  else:
    try:
      arrays = load_tfds(name, data_dir, download)
    except DatasetUnavailableError as e:
      raise _unavailable(name, data_dir, e.reason) from None
  train_x, train_y, test_x, test_y = arrays
  train_x = train_x.astype(np.float32) / 255.0
  test_x = test_x.astype(np.float32) / 255.0
  if standardize:
    mean, std = train_x.mean(), train_x.std()
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
  return Dataset(train_x, train_y, test_x, test_y, num_classes=10, name=name)


def load_mnist(
  data_dir: str | None = None, *, download: bool = True, standardize: bool = False
) -> Dataset:
  """MNIST (LeCun et al. 1998): ``load("mnist", ...)``; see ``load``."""
  return load("mnist", data_dir, download=download, standardize=standardize)


def load_fashion_mnist(
  data_dir: str | None = None, *, download: bool = True, standardize: bool = False
) -> Dataset:
  """Fashion-MNIST (Xiao, Rasul and Vollgraf 2017): ``load("fashion_mnist", ...)``; see
  ``load``."""
  return load("fashion_mnist", data_dir, download=download, standardize=standardize)
