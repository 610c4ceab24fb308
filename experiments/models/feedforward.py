"""Flax Linen models of the Entropy-SGD experiments.

Linen (not NNX) so that ``params`` and ``batch_stats`` are plain pytrees that an
Optax transformation and a functional training step can carry around.

Every model is called as ``model.apply(variables, x, train=...)``:

* ``train=True`` uses batch statistics in BatchNorm (pass
  ``mutable=['batch_stats']`` to get the updated running averages back) and
  applies dropout, which draws from the rng stream ``'dropout'``;
* ``train=False`` uses the running averages and no dropout, so evaluation is
  deterministic.

``dtype`` is the compute dtype (e.g. ``jnp.bfloat16``); parameters and BatchNorm
statistics stay in ``param_dtype`` (float32) so the optimizer updates full
precision weights.

Layers followed by BatchNorm have no bias: BatchNorm subtracts the mean, so such
a bias has zero gradient and would only be a parameter that Langevin noise and
weight decay act on for nothing. The parameter counts therefore differ from the
PyTorch/Lua originals, which keep those biases.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any

# PyTorch/Torch7 BatchNorm keep 0.9 of the old running average (their
# momentum=0.1); the authors' nets were trained with that.
_BN_MOMENTUM = 0.9


class _Common(nn.Module):
  """Fields shared by all models (not registered itself)."""

  num_classes: int = 10
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_momentum: float = _BN_MOMENTUM
  axis_name: str | None = None  # BatchNorm statistics across devices (pmap/shard_map).

  def _bn(self, train: bool, name: str | None = None) -> nn.BatchNorm:
    return nn.BatchNorm(
      use_running_average=not train,
      momentum=self.bn_momentum,
      epsilon=1e-5,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      axis_name=self.axis_name,
      name=name,
    )

  def _dense(self, features: int, use_bias: bool = True) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, dtype=self.dtype, param_dtype=self.param_dtype)

  def _conv(
    self, features: int, kernel, strides=1, padding: Any = "SAME", use_bias: bool = False
  ) -> nn.Conv:
    return nn.Conv(
      features,
      kernel_size=kernel,
      strides=strides,
      padding=padding,
      use_bias=use_bias,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )


class AllCNNBN(_Common):
  """All-CNN-C (Springenberg et al., 2015) with BatchNorm after every conv.

  The CIFAR-10 network of the Entropy-SGD paper (Sec. 5.3): dropout 0.2 on the
  input; three 3x3 convs of 96 (the third with stride 2); dropout 0.5; three
  3x3 convs of 192 (third stride 2); dropout 0.5; a 3x3 conv of 192 (unpadded:
  8x8 -> 6x6 as in All-CNN-C), a 1x1 conv of 192, a 1x1 conv to the classes;
  global average pooling. Each conv is followed by BatchNorm then ReLU, the last
  one included, as in All-CNN-C and both of the authors' codes.

  ``authors_code=True`` builds the net the paper's experiments actually ran
  (ucla-vision/entropy-sgd, Lua and PyTorch): the 7th conv is padded and the
  8th is 3x3 instead of 1x1, which is the paper's "~1.6 million weights".

  Input: NHWC images, (batch, 32, 32, 3). Output: (batch, num_classes) logits.
  """

  input_dropout: float = 0.2
  dropout: float = 0.5
  width1: int = 96
  width2: int = 192
  authors_code: bool = False

  @nn.compact
  def __call__(self, x, *, train: bool):
    def conv_bn_relu(x, features, kernel, strides=1, padding="SAME"):
      x = self._conv(features, (kernel, kernel), strides, padding)(x)
      return nn.relu(self._bn(train)(x))

    x = nn.Dropout(self.input_dropout, deterministic=not train)(x)
    for strides in (1, 1, 2):
      x = conv_bn_relu(x, self.width1, 3, strides)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    for strides in (1, 1, 2):
      x = conv_bn_relu(x, self.width2, 3, strides)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    if self.authors_code:
      x = conv_bn_relu(x, self.width2, 3)
      x = conv_bn_relu(x, self.width2, 3)
    else:
      x = conv_bn_relu(x, self.width2, 3, padding="VALID")
      x = conv_bn_relu(x, self.width2, 1)
    x = conv_bn_relu(x, self.num_classes, 1)
    return jnp.mean(x, axis=(1, 2))


class MnistFC(_Common):
  """The paper's ``mnistfc`` (Sec. 5.2): 784-1024-1024-10 with BN and dropout.

  Layout of the authors' PyTorch model: dropout 0.2 on the input, then twice
  Dense -> BatchNorm -> ReLU -> dropout 0.5, then the output layer. The paper
  lowers the dropout for Entropy-SGD (the values are lost in the text), hence
  the configurable rates.

  Input: (batch, 28, 28, 1) or any shape that flattens to 784.
  """

  hidden: int = 1024
  num_layers: int = 2
  input_dropout: float = 0.2
  dropout: float = 0.5

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = x.reshape((x.shape[0], -1))
    x = nn.Dropout(self.input_dropout, deterministic=not train)(x)
    for _ in range(self.num_layers):
      x = self._dense(self.hidden, use_bias=False)(x)
      x = nn.relu(self._bn(train)(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return self._dense(self.num_classes)(x)


class LeNetBN(_Common):
  """LeNet with BatchNorm, the paper's MNIST conv net (Sec. 5.2).

  As in the authors' PyTorch port (their Lua code, which ran the paper, puts each
  conv's BN after the pooling and has none on the dense layer):
  conv 20 5x5 -> BN -> ReLU -> max-pool 3 (stride 3)
  -> dropout; conv 50 5x5 -> BN -> ReLU -> max-pool 2 -> dropout; dense 500 ->
  BN -> ReLU -> dropout; dense 10. The 3x3 first pool leaves 50x2x2 features;
  ``pool_sizes=(2, 2)`` gives the classic Caffe LeNet (50x4x4).

  Input: (batch, 28, 28, 1).
  """

  features: tuple[int, int] = (20, 50)
  hidden: int = 500
  pool_sizes: tuple[int, int] = (3, 2)
  dropout: float = 0.5

  @nn.compact
  def __call__(self, x, *, train: bool):
    for features, pool in zip(self.features, self.pool_sizes):
      x = self._conv(features, (5, 5), padding="VALID")(x)
      x = nn.relu(self._bn(train)(x))
      x = nn.max_pool(x, (pool, pool), strides=(pool, pool))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = x.reshape((x.shape[0], -1))
    x = self._dense(self.hidden, use_bias=False)(x)
    x = nn.relu(self._bn(train)(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return self._dense(self.num_classes)(x)


class MLP1D(_Common):
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
  dtype: Dtype
  param_dtype: Dtype

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


class CNN1D(_Common):
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


class AllCNNBNAuthors(AllCNNBN):
  """``AllCNNBN(authors_code=True)``: the layout both of the authors' codes ran (Lua presets)."""

  authors_code: bool = True


MODELS: dict[str, Callable[..., nn.Module]] = {
  "allcnn_bn": AllCNNBN,
  "allcnn_bn_authors": AllCNNBNAuthors,
  "mnistfc": MnistFC,
  "lenet_bn": LeNetBN,
  "mlp1d": MLP1D,
  "cnn1d": CNN1D,
}


def create_model(name: str, **overrides) -> nn.Module:
  """Builds the model registered as ``name``; ``overrides`` set its fields.

  Raises:
    ValueError: for an unknown name (the message lists the valid ones).
  """
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}.")
  return MODELS[name](**overrides)
