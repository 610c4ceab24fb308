"""The benchmark models in PyTorch (NCHW), matching ``benchmarks/workloads.py`` layer for layer.

PyTorch is optional (``pip install -r requirements/benchmarks.txt``): without it ``torch`` and
``tnn`` are None here, and ``benchmarks.torch_reference`` times only the JAX columns.
"""

from __future__ import annotations

import os

import numpy as np

# Idle OpenMP threads must sleep, not spin: torch and XLA share the cores in one process, and a
# spinning torch thread pool slows the next JAX call (measured 2.4x on the 2-core machine).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
  import torch
  from torch import nn as tnn
except ImportError:  # torch is an optional, benchmark-only dependency
  torch = None
  tnn = None


def torch_model(name: str):
  """``mlp``, ``mnistfc``, ``lenet_bn`` or ``allcnn_bn`` as a ``torch.nn.Sequential``."""
  if name == "mlp":
    return tnn.Sequential(
      tnn.Flatten(),
      tnn.Linear(784, 784),
      tnn.ReLU(),
      tnn.Linear(784, 64),
      tnn.ReLU(),
      tnn.Linear(64, 10),
    )

  def bn(c, dims=2):  # torch momentum 0.1 = flax momentum 0.9 (experiments/models/base.py)
    return (tnn.BatchNorm2d if dims == 2 else tnn.BatchNorm1d)(c, momentum=0.1)

  if name == "mnistfc":  # experiments.models.feedforward.MnistFC: 784-1024-1024-10, BN, dropout
    hidden = [
      layer
      for width in (784, 1024)
      for layer in (tnn.Linear(width, 1024, bias=False), bn(1024, 1), tnn.ReLU(), tnn.Dropout(0.5))
    ]
    return tnn.Sequential(tnn.Flatten(), tnn.Dropout(0.2), *hidden, tnn.Linear(1024, 10))
  if name == "lenet_bn":  # experiments.models.feedforward.LeNetBN: pools 3 then 2, dropout 0.5
    return tnn.Sequential(
      tnn.Conv2d(1, 20, 5, bias=False),
      bn(20),
      tnn.ReLU(),
      tnn.MaxPool2d(3),
      tnn.Dropout(0.5),
      tnn.Conv2d(20, 50, 5, bias=False),
      bn(50),
      tnn.ReLU(),
      tnn.MaxPool2d(2),
      tnn.Dropout(0.5),
      tnn.Flatten(),
      tnn.Linear(200, 500, bias=False),
      bn(500, 1),
      tnn.ReLU(),
      tnn.Dropout(0.5),
      tnn.Linear(500, 10),
    )
  if name == "allcnn_bn":  # experiments.models.feedforward.AllCNNBN (All-CNN-C + BN, 1.37M weights)

    def conv_bn(cin, cout, kernel, stride=1, padding=None):
      padding = kernel // 2 if padding is None else padding
      return [tnn.Conv2d(cin, cout, kernel, stride, padding, bias=False), bn(cout), tnn.ReLU()]

    return tnn.Sequential(
      tnn.Dropout(0.2),
      *conv_bn(3, 96, 3),
      *conv_bn(96, 96, 3),
      *conv_bn(96, 96, 3, 2),
      tnn.Dropout(0.5),
      *conv_bn(96, 192, 3),
      *conv_bn(192, 192, 3),
      *conv_bn(192, 192, 3, 2),
      tnn.Dropout(0.5),
      *conv_bn(192, 192, 3, padding=0),
      *conv_bn(192, 192, 1),
      *conv_bn(192, 10, 1),
      tnn.AdaptiveAvgPool2d(1),
      tnn.Flatten(),
    )
  raise ValueError(name)


def load_jax_mlp_params(model, params) -> None:
  """Copies the JAX MLP's Dense kernels/biases into the torch MLP (for equivalence tests)."""
  linears = [m for m in model if isinstance(m, tnn.Linear)]
  layers = [params[f"Dense_{i}"] for i in range(len(linears))]
  with torch.no_grad():
    for linear, layer in zip(linears, layers):
      linear.weight.copy_(torch.from_numpy(np.asarray(layer["kernel"]).T.copy()))
      linear.bias.copy_(torch.from_numpy(np.asarray(layer["bias"]).copy()))
