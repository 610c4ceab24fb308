"""Fixtures shared by the tests of the experiments (data and scripts); one XLA cache per run."""

from __future__ import annotations

import atexit
import io
import os
import shutil
import tarfile
import tempfile
from unittest import mock

import numpy as np
import pytest

from experiments.data import datasets as data
from tests.fresh_process import FAST_COMPILE_FLAG

# One persistent XLA compilation cache for the whole test run: the pytest-xdist workers and the
# subprocesses the tests start (a killed job and its resume, README commands, notebooks) inherit
# this environment, so a program that another test or process compiled already is read back
# instead of compiled again (compilation is most of the suite's CPU time). The directory is
# fresh per run and removed by the process that made it; the programs run are the same.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _xla_cache = tempfile.mkdtemp(prefix="entropy-optax-tests-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _xla_cache
  atexit.register(shutil.rmtree, _xla_cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# LLVM's optimization level 0 for the CPU code XLA emits: the suite's programs are small and run
# a few steps, so compiling them is most of their cost, and at level 0 it takes about half as
# long. XLA's own graph optimizations still run; results differ from level 3's (the default) in
# float32 rounding only (a 20-step Entropy-SGD run: the loss's 8th digit; the suite ran at the
# default level before it had this flag). Subprocesses inherit the flag; the checks in fresh
# processes keep it (tests/fresh_process.py); the notebooks' kernels do not (their outputs are
# compared with those committed, which a user's default level printed: tests/test_notebooks.py).
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAG}"
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402  (after the environment above, which jax reads when imported)

# In case a plugin imported jax before this file: the same settings, set directly.
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
  "jax_persistent_cache_min_compile_time_secs",
  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
)
jax.config.update(
  "jax_persistent_cache_min_entry_size_bytes",
  int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]),
)

_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
_PER_TRAIN_FILE, _NUM_TEST = 3, 4


def _cifar_records(rng, n):
  """n random CIFAR-10 records: labels (n,) uint8, images (n, 32, 32, 3) uint8."""
  labels = rng.integers(0, 10, n, dtype=np.uint8)
  images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  return labels, images


def _cifar_bin(labels, images) -> bytes:
  """CIFAR-10's binary format: per record 1 label byte then the CHW pixel bytes."""
  chw = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
  return np.concatenate([labels[:, None], chw], axis=1).astype(np.uint8).tobytes()


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory):
  """A tfds data_dir where tfds has prepared a tiny CIFAR-10 written by us.

  Only the download is replaced: tfds extracts our ``cifar-10-binary.tar.gz``
  and runs its own CIFAR-10 builder on it, through ``load_cifar10``'s download
  branch. Session-scoped because preparation with TensorFlow takes seconds.
  """
  tmp = tmp_path_factory.mktemp("cifar")
  rng = np.random.default_rng(0)
  train_labels, train_images = _cifar_records(rng, 5 * _PER_TRAIN_FILE)
  test_labels, test_images = _cifar_records(rng, _NUM_TEST)
  files = {
    f"data_batch_{i + 1}.bin": _cifar_bin(
      train_labels[i * _PER_TRAIN_FILE : (i + 1) * _PER_TRAIN_FILE],
      train_images[i * _PER_TRAIN_FILE : (i + 1) * _PER_TRAIN_FILE],
    )
    for i in range(5)
  }
  files["test_batch.bin"] = _cifar_bin(test_labels, test_images)
  files["batches.meta.txt"] = (
    "\n".join(
      ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    ).encode()
    + b"\n\n"
  )
  archive = tmp / "cifar-10-binary.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    for name, content in files.items():
      info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
      info.size = len(content)
      tar.addfile(info, io.BytesIO(content))

  tfds = data._import_tfds()
  urls = []

  def fake_download_and_extract(self, url):
    urls.append(url)
    return self.extract(archive)

  data_dir = str(tmp / "tfds")
  with (
    mock.patch.object(
      tfds.download.DownloadManager, "download_and_extract", fake_download_and_extract
    ),
    mock.patch.object(data, "_download_error", return_value=None),
  ):
    data.load_cifar10(data_dir=data_dir, preprocess=False)
  assert urls == [_CIFAR_URL]
  return data_dir, (train_labels, train_images, test_labels, test_images)
