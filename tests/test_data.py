"""Tests of data.py and preprocessing.py: offline tfds preparation, GCN/ZCA, MNIST-1D."""

from __future__ import annotations

import random
from unittest import mock

import numpy as np
import pytest

from experiments.data import datasets as data
from experiments.data import mnist_format, preprocessing


def _as_multiset(labels, images):
  return sorted(zip(labels.tolist(), [im.tobytes() for im in images]))


def test_cifar10_raw_roundtrip(cifar_dir):
  data_dir, (train_labels, train_images, test_labels, test_images) = cifar_dir
  ds = data.load_cifar10(data_dir=data_dir, download=False, preprocess=False)
  assert ds.num_classes == 10 and ds.name == "cifar10"
  assert ds.train_x.shape == (15, 32, 32, 3) and ds.test_x.shape == (4, 32, 32, 3)
  assert ds.train_x.dtype == np.float32 and ds.train_y.dtype == np.int32
  # tfds shuffles examples when it prepares them: compare as multisets.
  for x, y, labels, images in [
    (ds.train_x, ds.train_y, train_labels, train_images),
    (ds.test_x, ds.test_y, test_labels, test_images),
  ]:
    pixels = np.round(x * 255).astype(np.uint8)
    np.testing.assert_allclose(pixels / np.float32(255), x, atol=1e-7)
    assert _as_multiset(y, pixels) == _as_multiset(labels, images)


def test_cifar10_preprocessed_matches_independent_gcn_zca(cifar_dir):
  data_dir, _ = cifar_dir
  raw = data.load_cifar10(data_dir=data_dir, download=False, preprocess=False)
  eps, scale = 0.1, 55.0
  ds = data.load_cifar10(data_dir=data_dir, download=False, zca_eps=eps, gcn_scale=scale)
  np.testing.assert_array_equal(ds.train_y, raw.train_y)
  np.testing.assert_array_equal(ds.test_y, raw.test_y)

  def gcn(x):
    x = x.reshape(len(x), -1).astype(np.float64) * 255
    x = x - x.mean(axis=1, keepdims=True)
    return scale * x / np.linalg.norm(x, axis=1, keepdims=True)

  train, test = gcn(raw.train_x), gcn(raw.test_x)
  # ZCA from the thin SVD of the centred training data (15 x 3072): on the
  # span of the data the eigenvalues are s^2/n, elsewhere the covariance is 0.
  mean = train.mean(axis=0)
  _, s, vt = np.linalg.svd(train - mean, full_matrices=False)
  scales = 1 / np.sqrt(s**2 / len(train) + eps) - 1 / np.sqrt(eps)

  def whiten(x):
    c = x - mean
    return c / np.sqrt(eps) + ((c @ vt.T) * scales) @ vt

  np.testing.assert_allclose(ds.train_x.reshape(15, -1), whiten(train), atol=2e-4, rtol=1e-4)
  np.testing.assert_allclose(ds.test_x.reshape(4, -1), whiten(test), atol=2e-4, rtol=1e-4)


def test_global_contrast_normalize():
  x = np.random.default_rng(1).uniform(0, 255, (6, 4, 4, 3)).astype(np.float32)
  x[0] = 7.0  # A constant image: only centred, not divided by ~0.
  out = preprocessing.global_contrast_normalize(x, scale=55.0)
  assert out.shape == x.shape and out.dtype == np.float32
  flat = out.reshape(6, -1).astype(np.float64)
  np.testing.assert_allclose(flat.mean(axis=1), 0.0, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(flat[1:], axis=1), 55.0, rtol=1e-5)
  np.testing.assert_array_equal(flat[0], 0.0)
  # Invariant to the brightness and contrast of each image.
  np.testing.assert_allclose(preprocessing.global_contrast_normalize(3 * x + 10), out, atol=1e-4)


def test_zca_whitening_identity_covariance():
  rng = np.random.default_rng(2)
  mixing = rng.normal(size=(5, 5)) + 3 * np.eye(5)
  x = (rng.normal(size=(4000, 5)) @ mixing + 4.0).reshape(4000, 5, 1)
  mean, matrix = preprocessing.zca_whitening_fit(x, eps=0.0, chunk_size=1000)  # chunks add up.
  np.testing.assert_allclose(mean, x.reshape(4000, 5).mean(axis=0), rtol=1e-12)
  np.testing.assert_allclose(matrix, matrix.T, atol=1e-12)  # zero-phase: symmetric.
  white = preprocessing.zca_apply(x, mean, matrix)
  assert white.shape == x.shape and white.dtype == np.float32
  white = white.reshape(4000, 5).astype(np.float64)
  np.testing.assert_allclose(white.mean(axis=0), 0.0, atol=1e-5)
  np.testing.assert_allclose(white.T @ white / 4000, np.eye(5), atol=1e-4)
  # W is the inverse square root of the covariance: W C W = I and W^-2 = C.
  cov = np.cov(x.reshape(4000, 5).T, bias=True)
  np.testing.assert_allclose(np.linalg.inv(matrix @ matrix), cov, rtol=1e-8)
  # The regulariser shrinks the eigenvalues of W to 1/sqrt(λ + eps).
  eps = 0.5
  _, reg = preprocessing.zca_whitening_fit(x, eps=eps)
  np.testing.assert_allclose(np.linalg.inv(reg @ reg), cov + eps * np.eye(5), rtol=1e-8)


def test_zca_fewer_examples_than_dimensions():
  """The n < d shortcut (Gram matrix) equals the eigh of the d x d covariance."""
  rng = np.random.default_rng(3)
  x = rng.normal(size=(20, 30)) @ rng.normal(size=(30, 30)) + 1.0
  eps = 0.05
  mean, matrix = preprocessing.zca_whitening_fit(x, eps=eps)
  eigenvalues, v = np.linalg.eigh(np.cov(x.T, bias=True))
  expected = (v / np.sqrt(np.maximum(eigenvalues, 0) + eps)) @ v.T
  np.testing.assert_allclose(matrix, expected, atol=1e-9)
  np.testing.assert_allclose(matrix, matrix.T, atol=1e-12)
  with pytest.raises(ValueError, match="eps > 0"):
    preprocessing.zca_whitening_fit(x, eps=0.0)


def test_mnist_through_mock_data():
  tfds = data._import_tfds()
  with tfds.testing.mock_data(num_examples=12):
    ds = mnist_format.load_mnist()
    std = mnist_format.load_mnist(standardize=True)
  assert ds.num_classes == 10 and ds.name == "mnist"
  assert ds.train_x.shape == (12, 28, 28, 1) and ds.test_x.shape == (12, 28, 28, 1)
  assert ds.train_x.dtype == np.float32 and ds.train_y.dtype == np.int32
  assert 0.0 <= ds.train_x.min() and ds.train_x.max() <= 1.0
  assert ds.train_x.max() > 0.5  # Scaled from 0..255, not clipped to 0/1 bytes.
  assert set(ds.train_y.tolist()) <= set(range(10))
  mean, sd = ds.train_x.mean(), ds.train_x.std()
  np.testing.assert_allclose(std.train_x, (ds.train_x - mean) / sd, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(std.test_x, (ds.test_x - mean) / sd, rtol=1e-5, atol=1e-5)


def test_missing_dataset_without_download(tmp_path):
  with pytest.raises(data.DatasetUnavailableError) as info:
    data.load_cifar10(data_dir=str(tmp_path), download=False)
  message = str(info.value)
  for part in ["CIFAR-10", str(tmp_path), "--data-dir", "--synthetic", "internet"]:
    assert part in message


def test_missing_dataset_unreachable_host(tmp_path):
  """Offline, the quick reachability check fails instead of tfds's 3.5 min of retries."""
  with mock.patch.object(data, "_download_error", return_value="ConnectionError: offline"):
    with pytest.raises(data.DatasetUnavailableError, match="ConnectionError: offline"):
      mnist_format.load_mnist(data_dir=str(tmp_path))


def test_download_failure_inside_tfds(tmp_path):
  tfds = data._import_tfds()

  def fail(self, url):
    raise ConnectionError(f"cannot reach {url}")

  with (
    mock.patch.object(tfds.download.DownloadManager, "download_and_extract", fail),
    mock.patch.object(data, "_download_error", return_value=None),
  ):
    with pytest.raises(data.DatasetUnavailableError, match="cannot reach") as info:
      data.load_cifar10(data_dir=str(tmp_path))
  assert isinstance(info.value.__cause__, ConnectionError)


def test_download_error_reports_unreachable_url():
  # Port 9 (discard) on localhost refuses connections at once.
  assert "Connection" in data._download_error("http://127.0.0.1:9/x", timeout=2.0)


@pytest.fixture(scope="module")
def mnist1d_default():
  return data.load_mnist1d()


def test_mnist1d_default_is_published_split(mnist1d_default):
  import mnist1d.data

  ds = mnist1d_default
  assert ds.train_x.shape == (4000, 40) and ds.test_x.shape == (1000, 40)
  assert ds.train_x.dtype == np.float32 and ds.train_y.dtype == np.int32
  assert ds.num_classes == 10 and set(ds.train_y.tolist()) == set(range(10))
  reference = mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())
  np.testing.assert_allclose(ds.train_x, reference["x"], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(ds.test_x, reference["x_test"], rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(ds.train_y, reference["y"])
  np.testing.assert_array_equal(ds.test_y, reference["y_test"])


def test_mnist1d_deterministic_and_leaves_global_rng_alone():
  np.random.seed(123)
  random.seed(123)
  expected_np, expected_py = np.random.rand(), random.random()
  np.random.seed(123)
  random.seed(123)
  a = data.load_mnist1d(num_train=95, num_test=33, seed=7)
  assert (np.random.rand(), random.random()) == (expected_np, expected_py)
  b = data.load_mnist1d(num_train=95, num_test=33, seed=7)
  c = data.load_mnist1d(num_train=95, num_test=33, seed=8)
  assert a.train_x.shape == (95, 40) and a.test_x.shape == (33, 40)
  for u, v in zip(a, b):
    np.testing.assert_array_equal(u, v)
  assert not np.allclose(a.train_x, c.train_x)


@pytest.mark.parametrize(
  "name, shape",
  [
    ("cifar10", (32, 32, 3)),
    ("mnist", (28, 28, 1)),
    ("fashion_mnist", (28, 28, 1)),
    ("mnist1d", (40,)),
  ],
)
def test_synthetic_like(name, shape):
  ds = data.synthetic_like(name, num_train=300, num_test=20, seed=3)
  train_x, train_y, test_x, test_y = ds
  assert train_x.shape == (300, *shape) and test_x.shape == (20, *shape)
  assert ds.input_shape == shape and ds.num_classes == 10
  assert train_x.dtype == np.float32 and train_y.dtype == np.int32
  assert set(train_y.tolist()) == set(range(10))
  assert abs(train_x.mean()) < 0.05 and abs(train_x.std() - 1) < 0.05
  again = data.synthetic_like(name, num_train=300, num_test=20, seed=3)
  np.testing.assert_array_equal(again.train_x, train_x)
  with pytest.raises(ValueError, match="cifar10, fashion_mnist, mnist, mnist1d"):
    data.synthetic_like("imagenet", 1, 1)


def test_import_is_light():
  """Importing the module must not pull in TensorFlow or tfds (seconds)."""
  import pathlib
  import subprocess
  import sys

  code = (
    "import sys, experiments.data.datasets; "
    "print(any(m in sys.modules for m in ('tensorflow', 'tensorflow_datasets', 'mnist1d')))"
  )
  out = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    check=True,
    cwd=pathlib.Path(__file__).parents[1],
  )
  assert out.stdout.strip() == "False"
