"""The IDX files of MNIST and Fashion-MNIST: reading them, checked, and writing them.

Both data sets ship as the same four files, gzipped or not::

    train-images-idx3-ubyte[.gz]  train-labels-idx1-ubyte[.gz]
    t10k-images-idx3-ubyte[.gz]   t10k-labels-idx1-ubyte[.gz]

An IDX file is a big-endian header (two zero bytes, a type code, the number of dimensions, each
dimension as a uint32) followed by the array. ``load_directory`` reads the four files of a
directory, checks magic numbers, counts, shapes and labels, and says in one line what is wrong
with a file. ``write`` writes an array in the same format (small test data, a subset).
"""

from __future__ import annotations

import gzip
import os
import pathlib

import numpy as np

# The IDX type codes; MNIST and Fashion-MNIST use unsigned bytes (0x08) only.
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CODES = {
  np.dtype(v).newbyteorder(">") if np.dtype(v).itemsize > 1 else np.dtype(v): k
  for k, v in _DTYPES.items()
}

SPLIT_FILES = {
  "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_SHAPE = (28, 28)


class IdxFormatError(ValueError):
  """A file is not a valid IDX file, or not the one that was expected."""


def _open(path: pathlib.Path):
  with open(path, "rb") as f:
    gzipped = f.read(2) == b"\x1f\x8b"
  return gzip.open(path, "rb") if gzipped else open(path, "rb")


def read(path: str | os.PathLike) -> np.ndarray:
  """Reads one IDX file (gzipped or not) into a numpy array.

  Raises:
    IdxFormatError: if the header is not an IDX header or the data are shorter or longer than
      the header says.
  """
  path = pathlib.Path(path)
  try:
    with _open(path) as f:
      data = f.read()
  except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
    raise IdxFormatError(f"{path}: cannot be read ({type(e).__name__}: {e}).") from None
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
    raise IdxFormatError(
      f"{path}: not an IDX file (its first bytes are {data[:4].hex() or 'missing'}; an IDX "
      "file starts with 0000 and a type code such as 08)."
    )
  ndim = data[3]
  header = 4 + 4 * ndim
  if len(data) < header:
    raise IdxFormatError(f"{path}: the header is cut short ({len(data)} bytes).")
  shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, offset=4))
  dtype = np.dtype(_DTYPES[data[2]])
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(data) - header != expected:
    raise IdxFormatError(
      f"{path}: the header says shape {shape} ({expected} bytes of data) but the file holds "
      f"{len(data) - header}: the file is truncated or not what its name says."
    )
  return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write(path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None) -> None:
  """Writes ``array`` as an IDX file; gzipped when ``compress`` (default: the name ends .gz)."""
  path = pathlib.Path(path)
  array = np.asarray(array)
  big_endian = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
  if big_endian not in _CODES:
    raise ValueError(f"IDX has no type code for {array.dtype}.")
  header = bytes([0, 0, _CODES[big_endian], array.ndim])
  header += np.asarray(array.shape, ">u4").tobytes()
  payload = header + array.astype(big_endian).tobytes()
  compress = path.suffix == ".gz" if compress is None else compress
  with (gzip.open if compress else open)(path, "wb") as f:
    f.write(payload)


def find(directory: str | os.PathLike, stem: str) -> pathlib.Path | None:
  """The file ``stem`` or ``stem.gz`` in ``directory`` (tfds and some mirrors write the
  ``-idx3-ubyte`` part as ``.idx3-ubyte``: both spellings count), None if absent."""
  directory = pathlib.Path(directory)
  for name in (stem, stem.replace("-idx", ".idx")):
    for suffix in ("", ".gz"):
      if (directory / (name + suffix)).is_file():
        return directory / (name + suffix)
  return None


def has_files(directory: str | os.PathLike) -> bool:
  """Whether ``directory`` holds any of the four MNIST-format files."""
  return any(find(directory, s) is not None for pair in SPLIT_FILES.values() for s in pair)


def load_directory(
  directory: str | os.PathLike, *, num_classes: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """``(train_x, train_y, test_x, test_y)`` from the four MNIST-format files of ``directory``.

  Images are uint8 of shape (n, 28, 28); labels int32 in ``[0, num_classes)``.

  Raises:
    FileNotFoundError: naming the files that are missing.
    IdxFormatError: a file that is not IDX, images not 28x28, labels out of range, or a split
      whose image and label counts differ.
  """
  directory = pathlib.Path(directory)
  missing = [s for pair in SPLIT_FILES.values() for s in pair if find(directory, s) is None]
  if missing:
    raise FileNotFoundError(
      f"{directory} lacks {', '.join(m + '[.gz]' for m in missing)} (the four files of the "
      "MNIST format)."
    )
  arrays = []
  for images_stem, labels_stem in SPLIT_FILES.values():
    images_path, labels_path = find(directory, images_stem), find(directory, labels_stem)
    images, labels = read(images_path), read(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
      raise IdxFormatError(
        f"{images_path}: expected uint8 images of shape (n, 28, 28), got {images.dtype} "
        f"{images.shape}."
      )
    if labels.ndim != 1 or len(labels) != len(images):
      raise IdxFormatError(
        f"{labels_path}: expected {len(images)} labels (one per image of {images_path.name}), "
        f"got shape {labels.shape}."
      )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
      raise IdxFormatError(
        f"{labels_path}: labels must lie in [0, {num_classes}), found {labels.min()} to "
        f"{labels.max()}."
      )
    arrays += [images, labels.astype(np.int32)]
  return tuple(arrays)
