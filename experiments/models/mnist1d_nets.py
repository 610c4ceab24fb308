"""The MNIST-1D benchmark's nets (greydanus/mnist1d): ``MLP1D`` and ``CNN1D``, on signals of
40 values (conventions: ``experiments.models.base``)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from experiments.models import base


class MLP1D(base.Classifier):
  """The MNIST-1D benchmark MLP (``MLPBase`` of greydanus/mnist1d).

  40 -> 100 -> 100 -> 10 with ReLU and, as in the benchmark, a residual
  connection around the second hidden layer. BatchNorm and dropout are off by
  default so that the model is the published one; turn them on to test how
  Entropy-SGD interacts with them on a cheap problem.

  Input: (batch, 40).
  """

  hidden: int = 100
  use_bn: bool = False
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, *, train: bool):
    def layer(x):
      x = self._dense(self.hidden, use_bias=not self.use_bn)(x)
      if self.use_bn:
        x = self._bn(train)(x)
      return nn.Dropout(self.dropout, deterministic=not train)(nn.relu(x))

    h = layer(x)
    h = h + layer(h)
    return self._dense(self.num_classes)(h)


class _PatchConv1D(nn.Module):
  """A 1-D convolution (NWC) computed as gathered patches times the kernel.

  The same maths, parameters (``kernel`` (k, in, out), ``bias``) and
  initialisation as ``nn.Conv``, but an einsum instead of ``lax.conv``: XLA:CPU
  runs these tiny convolutions ~7x slower inside a loop (the training loop's
  ``lax.scan``, the Hessian's ``lax.map``) than outside one; a dot does not
  slow down.
  """

  features: int
  kernel_size: int
  strides: int
  padding: tuple[int, int]
  use_bias: bool
  dtype: base.Dtype
  param_dtype: base.Dtype

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (k, x.shape[-1], self.features), self.param_dtype
    )
    x = jnp.pad(x, ((0, 0), self.padding, (0, 0)))
    length = (x.shape[1] - k) // self.strides + 1
    index = self.strides * jnp.arange(length)[:, None] + jnp.arange(k)
    y = jnp.einsum("blkc,kco->blo", x[:, index].astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


class CNN1D(base.Classifier):
  """The MNIST-1D benchmark conv net (``ConvBase`` of greydanus/mnist1d).

  Three 1-D convs of 25 channels, kernels 5, 3, 3, all stride 2 and padding 1
  (40 -> 19 -> 10 -> 5), ReLU, then a linear layer on the 125 flattened
  features. BatchNorm and dropout are optional, off by default. The convs are
  computed as patches times kernel (see ``_PatchConv1D``), ~7x faster in the
  jitted training loop on CPU than ``nn.Conv``, with the same parameters.

  Input: (batch, 40).
  """

  channels: int = 25
  kernels: tuple[int, ...] = (5, 3, 3)
  use_bn: bool = False
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = x.reshape((x.shape[0], -1, 1))  # (batch, length, 1 channel)
    for i, kernel in enumerate(self.kernels):
      x = _PatchConv1D(
        self.channels,
        kernel,
        2,
        (1, 1),
        use_bias=not self.use_bn,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=f"Conv_{i}",
      )(x)
      if self.use_bn:
        x = self._bn(train)(x)
      x = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(x))
    x = x.reshape((x.shape[0], -1))
    return self._dense(self.num_classes)(x)
