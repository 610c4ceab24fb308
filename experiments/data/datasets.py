"""Data sets of the Entropy-SGD experiments, as numpy arrays.

Every loader returns a ``Dataset`` of whole splits held in host memory
(float32 inputs, images NHWC; int32 labels), meant to be put on the device once
and batched there: these data sets are small and the training loops are faster
without a host input pipeline.

TensorFlow Datasets (and with it TensorFlow, seconds to import) and ``mnist1d``
(which imports matplotlib) are imported inside the functions that need them, so
that importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np

from experiments.data.preprocessing import global_contrast_normalize, zca_apply, zca_whitening_fit


class DatasetUnavailableError(RuntimeError):
  """A data set is neither prepared in the data directory nor downloadable.

  Attributes:
    reason: why the download failed (or ``"download=False"``), without the advice.
  """

  def __init__(self, message: str, reason: str = ""):
    super().__init__(message)
    self.reason = reason


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """Whole train and test splits of a classification data set.

  Unpacks as ``train_x, train_y, test_x, test_y = dataset``.

  Attributes:
    train_x: float32 inputs, (num_train, *input_shape).
    train_y: int32 labels in [0, num_classes), (num_train,).
    test_x: float32 inputs, (num_test, *input_shape).
    test_y: int32 labels, (num_test,).
    num_classes: number of classes.
    name: what the data are, e.g. ``"cifar10"`` or ``"synthetic:cifar10"``.
    val_x: inputs of a validation split carved from the training set (None: none); not
      among the four arrays that the ``Dataset`` unpacks to.
    val_y: its labels.
  """

  train_x: np.ndarray
  train_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray
  num_classes: int
  name: str = ""
  val_x: np.ndarray | None = None
  val_y: np.ndarray | None = None

  def __iter__(self):
    return iter((self.train_x, self.train_y, self.test_x, self.test_y))

  @property
  def input_shape(self) -> tuple[int, ...]:
    return tuple(self.train_x.shape[1:])


# ---------------------------------------------------------------------------
# TensorFlow Datasets.
# ---------------------------------------------------------------------------

# One file of each data set's download, to check quickly that it can be
# fetched: tfds itself retries an unreachable host for ~3.5 minutes.
_DOWNLOAD_URLS = {
  "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
  "mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/train-labels-idx1-ubyte.gz",
  "fashion_mnist": (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-labels-idx1-ubyte.gz"
  ),
}
HUMAN_NAMES = {"cifar10": "CIFAR-10", "mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}


def _import_tfds():
  """Imports ``tensorflow_datasets`` lazily: it pulls in TensorFlow, which takes seconds."""
  import tensorflow_datasets as tfds

  return tfds


def _download_error(url: str, timeout: float = 5.0) -> str | None:
  """Returns why ``url`` cannot be fetched, or None if it answers."""
  import requests  # a dependency of tfds; honours HTTP(S)_PROXY like tfds does.

  try:
    requests.head(url, timeout=timeout, allow_redirects=True).raise_for_status()
  except requests.RequestException as e:
    return f"{type(e).__name__}: {e}"
  return None


def _unavailable(name: str, data_dir: str | None, reason: str) -> DatasetUnavailableError:
  where = data_dir or "the default tfds data_dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
  return DatasetUnavailableError(
    f"{HUMAN_NAMES[name]} is not prepared in {where} and could not be downloaded "
    f"({reason}). Run once on a machine with internet access (tfds downloads and "
    f"prepares it), or pass --data-dir to a directory where tfds has prepared "
    f"'{name}' (copy ~/tensorflow_datasets/{name} from such a machine), or use "
    f"--synthetic for random data of the same shape.",
    reason,
  )


def load_tfds(name: str, data_dir: str | None, download: bool):
  """Returns ``(train_x, train_y, test_x, test_y)`` uint8 images and labels from tfds."""
  tfds = _import_tfds()

  def load(download):
    # Batches of 10000, not batch_size=-1: tfds turns -1 into the split size
    # recorded in the metadata, which mock data (tests) lack.
    return tfds.load(
      name,
      split=["train", "test"],
      data_dir=data_dir,
      batch_size=10_000,
      as_supervised=True,
      download=download,
    )

  try:
    splits = load(download=False)
  except AssertionError:  # tfds: "Dataset ...: could not find data in ...".
    if not download:
      raise _unavailable(name, data_dir, "download=False") from None
    reason = _download_error(_DOWNLOAD_URLS[name])
    if reason is not None:
      raise _unavailable(name, data_dir, reason) from None
    try:
      splits = load(download=True)
    except Exception as e:  # Whatever broke the download or preparation.
      raise _unavailable(name, data_dir, f"{type(e).__name__}: {e}") from e

  def arrays(split):
    images, labels = zip(*tfds.as_numpy(split))
    return np.concatenate(images), np.concatenate(labels).astype(np.int32)

  (train_x, train_y), (test_x, test_y) = map(arrays, splits)
  return train_x, train_y, test_x, test_y


def load_cifar10(
  data_dir: str | None = None,
  *,
  download: bool = True,
  preprocess: bool = True,
  gcn_scale: float = 55.0,
  zca_eps: float = 0.1,
) -> Dataset:
  """CIFAR-10 through tfds, preprocessed as in the paper (Sec. 5.3).

  With ``preprocess=True``: global contrast normalisation of every image, then
  ZCA whitening fitted on the training set only and applied to both splits; no
  augmentation. With ``preprocess=False``: the pixels scaled to [0, 1].

  Args:
    data_dir: tfds data directory; None for tfds's default.
    download: whether tfds may download and prepare the data set if absent.
    preprocess: GCN + ZCA (True) or raw pixels / 255 (False).
    gcn_scale: the norm of each image after GCN.
    zca_eps: the ZCA regulariser, added to the covariance eigenvalues.

  Returns:
    ``Dataset`` of 50000 + 10000 float32 images of shape (32, 32, 3).

  Raises:
    DatasetUnavailableError: if CIFAR-10 is absent and cannot be downloaded.
  """
  train_x, train_y, test_x, test_y = load_tfds("cifar10", data_dir, download)
  if preprocess:
    train_x = global_contrast_normalize(train_x, gcn_scale)
    test_x = global_contrast_normalize(test_x, gcn_scale)
    mean, matrix = zca_whitening_fit(train_x, zca_eps)
    train_x, test_x = zca_apply(train_x, mean, matrix), zca_apply(test_x, mean, matrix)
  else:
    train_x = train_x.astype(np.float32) / 255.0
    test_x = test_x.astype(np.float32) / 255.0
  return Dataset(train_x, train_y, test_x, test_y, num_classes=10, name="cifar10")


# ---------------------------------------------------------------------------
# MNIST-1D and synthetic data.
# ---------------------------------------------------------------------------


def load_mnist1d(num_train: int = 4000, num_test: int = 1000, seed: int = 42) -> Dataset:
  """MNIST-1D (Greydanus 2020), generated offline by the ``mnist1d`` package.

  Uses ``mnist1d.data.make_dataset`` (never ``get_dataset``, which downloads)
  with the package's default arguments. With the defaults (4000 + 1000, seed
  42) this is the published benchmark split. ``make_dataset`` seeds numpy's and
  Python's global generators; their states are restored afterwards so that
  loading data does not change other random draws of the caller.

  Args:
    num_train: number of training examples.
    num_test: number of test examples.
    seed: the generator's seed.

  Returns:
    ``Dataset`` of float32 signals of shape (40,) (the data set is centred and
    scaled to unit standard deviation by ``make_dataset``), 10 classes.
  """
  import mnist1d.data

  args = mnist1d.data.get_dataset_args()
  total = num_train + num_test
  args.num_samples = -(-total // 10) * 10  # make_dataset makes num_samples // 10 per class.
  args.train_split = 1.0  # Split here: exact sizes, and the default split for the defaults.
  args.seed = seed
  np_state, py_state = np.random.get_state(), random.getstate()
  try:
    data = mnist1d.data.make_dataset(args)
  finally:
    np.random.set_state(np_state)
    random.setstate(py_state)
  x, y = data["x"].astype(np.float32), data["y"].astype(np.int32)
  return Dataset(
    x[:num_train],
    y[:num_train],
    x[num_train:total],
    y[num_train:total],
    num_classes=10,
    name="mnist1d",
  )


_SHAPES = {
  "cifar10": (32, 32, 3),
  "mnist": (28, 28, 1),
  "fashion_mnist": (28, 28, 1),
  "mnist1d": (40,),
}


def synthetic_like(name: str, num_train: int, num_test: int, seed: int = 0) -> Dataset:
  """Standard normal inputs and uniform labels shaped like data set ``name``.

  For speed measurements and smoke tests where the real data are absent or
  irrelevant. Nothing can be learned from these data beyond memorisation.

  Args:
    name: ``"cifar10"``, ``"mnist"``, ``"fashion_mnist"`` or ``"mnist1d"``.
    num_train: number of training examples.
    num_test: number of test examples.
    seed: seed of the numpy generator.

  Returns:
    ``Dataset`` named ``"synthetic:<name>"`` with 10 classes.
  """
  if name not in _SHAPES:
    raise ValueError(f"Unknown data set {name!r}; valid names: {', '.join(sorted(_SHAPES))}.")
  rng = np.random.default_rng(seed)

  def split(n):
    x = rng.standard_normal((n, *_SHAPES[name]), dtype=np.float32)
    return x, rng.integers(0, 10, n, dtype=np.int32)

  train_x, train_y = split(num_train)
  test_x, test_y = split(num_test)
  return Dataset(train_x, train_y, test_x, test_y, num_classes=10, name=f"synthetic:{name}")
