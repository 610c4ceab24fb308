"""CIFAR-10's preprocessing in the paper (Sec. 5.3): global contrast normalisation, ZCA whitening.

NumPy only, on whole splits held in host memory; ``experiments.data.datasets.load_cifar10``
applies them
(GCN per image, then ZCA fitted on the training split and applied to both).
"""

from __future__ import annotations

import numpy as np


def global_contrast_normalize(x: np.ndarray, scale: float = 55.0, eps: float = 1e-8) -> np.ndarray:
  """Per example: subtracts its mean, then scales it to Euclidean norm ``scale``.

  pylearn2's ``global_contrast_normalize(use_std=False)`` with ``scale=55``, the
  CIFAR-10 preprocessing of Goodfellow et al. (2013) that the paper cites. With
  3072 values per image a norm of 55 means a per-pixel standard deviation of
  about 1, which is what the authors' own script (per-image std) gives too.
  Examples of (near) constant value, norm < ``eps``, are only centred.

  Args:
    x: (num_examples, ...) array; each example is normalised over all its values.
    scale: the norm of every output example.
    eps: norms below this are treated as 1, to avoid blowing up flat images.

  Returns:
    float32 array of the shape of ``x``.
  """
  flat = x.reshape(len(x), -1).astype(np.float64)
  flat -= flat.mean(axis=1, keepdims=True)
  norms = np.sqrt(np.sum(flat**2, axis=1, keepdims=True)) / scale
  norms[norms < eps] = 1.0
  return (flat / norms).astype(np.float32).reshape(x.shape)


def zca_whitening_fit(
  x: np.ndarray, eps: float = 0.1, chunk_size: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
  """Fits ZCA whitening: the mean and the matrix ``W = V diag(1/sqrt(λ + eps)) Vᵀ``.

  ``λ, V`` are the eigenvalues and eigenvectors of the covariance
  ``C = (x - mean)ᵀ (x - mean) / n`` of the flattened examples. ``W`` is the
  symmetric whitening transform ("zero-phase": the closest to the identity), so
  whitened images still look like images. ``eps`` is pylearn2's ``filter_bias``
  (default 0.1, used by Goodfellow et al. 2013 after GCN with scale 55): it
  damps the directions of smallest variance instead of amplifying their noise.

  The covariance is accumulated in float64 over chunks of rows, so 50000 x 3072
  CIFAR-10 needs ~0.2 GB beyond the input; with ``eigh`` of the 3072 x 3072
  matrix the fit costs ~30 s of CPU time (a minute on two busy cores). With fewer examples than
  dimensions (tests, subsets) the eigenvectors come from the small n x n Gram
  matrix instead, and W is 1/sqrt(eps) on the rest, where the covariance is 0.

  Args:
    x: (num_examples, ...) training inputs.
    eps: added to the eigenvalues (regulariser).
    chunk_size: rows per chunk of the covariance accumulation.

  Returns:
    ``(mean, matrix)``: float64 arrays of shapes (d,) and (d, d), d the size of
    one flattened example; apply them with ``zca_apply``.
  """
  flat = x.reshape(len(x), -1)
  mean = flat.mean(axis=0, dtype=np.float64)
  if len(flat) < flat.shape[1]:
    return mean, _zca_matrix_from_gram(flat.astype(np.float64) - mean, eps)
  cov = np.zeros((flat.shape[1], flat.shape[1]), np.float64)
  for start in range(0, len(flat), chunk_size):
    centred = flat[start : start + chunk_size].astype(np.float64) - mean
    cov += centred.T @ centred
  cov /= len(flat)
  eigenvalues, eigenvectors = np.linalg.eigh(cov)
  # eigh may return tiny negative eigenvalues for a singular covariance.
  inv_sqrt = 1.0 / np.sqrt(np.maximum(eigenvalues, 0.0) + eps)
  matrix = (eigenvectors * inv_sqrt) @ eigenvectors.T
  return mean, matrix


def _zca_matrix_from_gram(centred: np.ndarray, eps: float) -> np.ndarray:
  """The ZCA matrix of n < d centred examples, from their n x n Gram matrix."""
  if eps <= 0:
    raise ValueError(
      "ZCA of fewer examples than dimensions needs eps > 0: the covariance is singular."
    )
  n, d = centred.shape
  gram_eigenvalues, u = np.linalg.eigh(centred @ centred.T / n)
  # The eigenvalues are those of the covariance on the span of the data;
  # drop the numerically zero ones (centring removes one dimension).
  keep = gram_eigenvalues > gram_eigenvalues.max() * 1e-10
  eigenvalues = gram_eigenvalues[keep]
  eigenvectors = centred.T @ u[:, keep] / np.sqrt(n * eigenvalues)
  shrink = 1.0 / np.sqrt(eigenvalues + eps) - 1.0 / np.sqrt(eps)
  matrix = (eigenvectors * shrink) @ eigenvectors.T
  matrix[np.diag_indices(d)] += 1.0 / np.sqrt(eps)
  return matrix


def zca_apply(x: np.ndarray, mean: np.ndarray, matrix: np.ndarray) -> np.ndarray:
  """Whitens ``x`` with a fit of ``zca_whitening_fit``: ``(x - mean) W``.

  Computed in float32: the fit needs float64, applying it does not.

  Returns:
    float32 array of the shape of ``x``.
  """
  flat = x.reshape(len(x), -1).astype(np.float32) - mean.astype(np.float32)
  return (flat @ matrix.astype(np.float32)).reshape(x.shape)
