"""The benchmarks' workloads: the models (an MLP, LeNet-BN, All-CNN-BN), synthetic batches, losses.

Every benchmark script times the same models on the same synthetic mini-batches, so that its
figures compare like for like; ``programs`` builds the jitted steps around these losses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.models import feedforward as models


class MLP(nn.Module):
  """784-784-64-10 ReLU MLP: 666,330 parameters (the ~670k-parameter MLP of the core's step-cost
  target: an Entropy-SGD step <= 1.5x the cost of L SGD steps)."""

  hidden: tuple[int, ...] = (784, 64)
  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = True):
    del train
    x = x.reshape((x.shape[0], -1)).astype(self.dtype)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


class ModelSpec(NamedTuple):
  module: nn.Module
  input_shape: tuple[int, ...]  # one example, channels last
  source: str
  convolves: bool  # decides the core's default unrolling on CPU (see `resolve_unroll`)


def make_model(name: str, dtype: Any = jnp.float32) -> ModelSpec:
  """``mlp`` (MNIST-shaped), ``lenet_bn`` (MNIST-shaped) or ``allcnn_bn`` (CIFAR-shaped).

  ``dtype`` is both the compute and the parameter dtype ("the model in bf16"); the core keeps
  the Langevin chain in float32 whatever it is. ``allcnn_bn`` is the paper's All-CNN-C + BN
  (1.37M parameters; ``experiments.models.feedforward.AllCNNBN`` defaults), ``lenet_bn`` the
  authors' LeNet.
  """
  if name == "mlp":
    return ModelSpec(MLP(dtype=dtype), (28, 28, 1), "benchmarks.workloads.MLP", False)
  if name == "lenet_bn":
    module = models.LeNetBN(dtype=dtype, param_dtype=dtype)
    return ModelSpec(module, (28, 28, 1), "experiments.models.feedforward.LeNetBN", True)
  if name == "allcnn_bn":
    module = models.AllCNNBN(dtype=dtype, param_dtype=dtype)
    return ModelSpec(module, (32, 32, 3), "experiments.models.feedforward.AllCNNBN", True)
  raise ValueError(f"unknown model {name!r}; choose mlp, lenet_bn or allcnn_bn.")


MODELS = ("mlp", "lenet_bn", "allcnn_bn")


def init_model(spec: ModelSpec, seed: int = 0, param_dtype: Any = jnp.float32):
  """(params, batch_stats) of the model; params cast to ``param_dtype``."""
  x = jnp.zeros((2, *spec.input_shape), jnp.float32)
  variables = spec.module.init(
    {"params": jax.random.key(seed), "dropout": jax.random.key(1)}, x, train=False
  )
  params = jax.tree.map(lambda p: p.astype(param_dtype), variables["params"])
  return params, variables.get("batch_stats", {})


def num_params(tree: Any) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(tree))


def tree_bytes(tree: Any) -> int:
  return sum(int(np.prod(p.shape)) * p.dtype.itemsize for p in jax.tree.leaves(tree))


def make_batches(spec: ModelSpec, num_batches: int, batch_size: int, seed: int = 0):
  """Synthetic (images, labels) with a leading axis of ``num_batches``, already on device."""
  kx, ky = jax.random.split(jax.random.key(seed))
  images = jax.random.normal(kx, (num_batches, batch_size, *spec.input_shape), jnp.float32)
  labels = jax.random.randint(ky, (num_batches, batch_size), 0, 10)
  return images, labels


def _im2col_conv_interceptor(next_fun, args, kwargs, context):
  """Computes ``nn.Conv`` as patches @ kernel: under vmap, a batched matmul, not a grouped conv."""
  module = context.module
  if not isinstance(module, nn.Conv) or context.method_name != "__call__":
    return next_fun(*args, **kwargs)
  dilation = module.kernel_dilation or 1
  dilation = (dilation,) if isinstance(dilation, int) else tuple(dilation)
  if module.feature_group_count != 1 or any(d != 1 for d in dilation):
    return next_fun(*args, **kwargs)
  x = args[0]
  if "kernel" not in module.variables.get("params", {}):  # init: let flax create the params
    return next_fun(*args, **kwargs)
  kernel = module.variables["params"]["kernel"]
  *window, cin, cout = kernel.shape
  strides = module.strides or (1,) * len(window)
  strides = (strides,) * len(window) if isinstance(strides, int) else tuple(strides)
  padding = module.padding
  if isinstance(padding, int):
    padding = ((padding, padding),) * len(window)
  elif not isinstance(padding, str):
    padding = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
  dtype = module.dtype or x.dtype
  spatial = "HW" if len(window) == 2 else "W"
  patches = jax.lax.conv_general_dilated_patches(
    x.astype(dtype),
    tuple(window),
    strides,
    padding,
    dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"),
  )
  # The patches' features are ordered (cin, *window).
  w = jnp.moveaxis(kernel, -2, 0).reshape(cin * int(np.prod(window)), cout).astype(dtype)
  y = patches @ w
  if module.use_bias:
    y = y + module.variables["params"]["bias"].astype(dtype)
  return y


def make_loss(spec: ModelSpec, conv_impl: str = "xla") -> Callable:
  """loss(params, batch_stats, (images, labels), dropout_key) -> (loss, new_batch_stats).

  ``conv_impl="im2col"`` computes every ``nn.Conv`` as an explicit patches-times-kernel matmul
  (see ``multi_run.py``); "xla" leaves convolutions to XLA.
  """
  if conv_impl == "im2col":
    plain = make_loss(spec)

    def im2col_loss(*args):
      with nn.intercept_methods(_im2col_conv_interceptor):
        return plain(*args)

    return im2col_loss
  module = spec.module

  def loss_fn(params, batch_stats, batch, key):
    images, labels = batch
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
      logits, updates = module.apply(
        variables, images, train=True, rngs={"dropout": key}, mutable=["batch_stats"]
      )
      batch_stats = updates["batch_stats"]
    else:
      logits = module.apply(variables, images, train=True, rngs={"dropout": key})
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return loss.mean(), batch_stats

  return loss_fn
