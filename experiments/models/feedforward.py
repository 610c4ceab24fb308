"""The feedforward models of the experiments and their registry, ``MODELS``.

The paper's image nets are here (``AllCNNBN``, ``MnistFC``, ``LeNetBN``), the MNIST-1D
benchmark's in ``experiments.models.mnist1d_nets``; what they share (how they are called,
dtypes, BatchNorm) in ``experiments.models.base``.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp

from experiments.models import base, mnist1d_nets


class AllCNNBN(base.Classifier):
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


class MnistFC(base.Classifier):
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


class LeNetBN(base.Classifier):
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


class AllCNNBNAuthors(AllCNNBN):
  """``AllCNNBN(authors_code=True)``: the layout both of the authors' codes ran (Lua presets)."""

  authors_code: bool = True


MODELS: dict[str, Callable[..., nn.Module]] = {
  "allcnn_bn": AllCNNBN,
  "allcnn_bn_authors": AllCNNBNAuthors,
  "mnistfc": MnistFC,
  "lenet_bn": LeNetBN,
  "mlp1d": mnist1d_nets.MLP1D,
  "cnn1d": mnist1d_nets.CNN1D,
}


def create_model(name: str, **overrides) -> nn.Module:
  """Builds the model registered as ``name``; ``overrides`` set its fields.

  Raises:
    ValueError: for an unknown name (the message lists the valid ones).
  """
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}.")
  return MODELS[name](**overrides)
