"""What the feedforward models of the experiments share: ``Classifier``, their fields and layers.

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

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any

# PyTorch/Torch7 BatchNorm keep 0.9 of the old running average (their
# momentum=0.1); the authors' nets were trained with that.
_BN_MOMENTUM = 0.9


class Classifier(nn.Module):
  """The fields and layer builders every feedforward model has (not registered itself)."""

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
