"""``ChainConfig``: the Langevin chain's hyper-parameters, one record checked once."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from entropy_optax import _noise, _sghmc
from entropy_optax._utils import is_concrete_number, is_static_zero

WEIGHT_DECAY_AT = ("before_momentum", "after_momentum")


@dataclasses.dataclass(frozen=True)
class ChainConfig:
  """The hyper-parameters of the Langevin chain, checked when the record is made.

  :func:`~entropy_optax.local_entropy` makes one when it is built (so do
  :func:`~entropy_optax.entropy_sgd` and :func:`~entropy_optax.entropy_adam` through it),
  :func:`~entropy_optax.langevin_mean` at every call; ``run_chain`` reads it. The fields are the
  keywords of :func:`~entropy_optax.local_entropy` and mean what its docstring says. Values that
  ``optax.inject_hyperparams`` traces pass the checks unchecked; so does a schedule ``gamma`` (its
  values may be traced too).
  """

  num_langevin_steps: int
  gamma: Any  # float, array or optax schedule of the update count
  langevin_lr: Any
  noise: Any
  alpha: Any
  langevin_momentum: Any
  langevin_nesterov: bool
  weight_decay: Any
  noise_distribution: _noise.NoiseDistribution
  unroll: int | bool | None
  sampler: _sghmc.Sampler
  friction: Any
  weight_decay_at: str = "before_momentum"

  @classmethod
  def from_arguments(cls, arguments: Mapping[str, Any]) -> ChainConfig:
    """The record from a factory's arguments (its ``locals()``), picked by field name.

    The factories list every keyword in their signatures (``optax.inject_hyperparams`` and the
    docs read them); this passes the chain's share on by name, in one place.
    """
    names = [field.name for field in dataclasses.fields(cls)]
    return cls(**{name: arguments[name] for name in names if name in arguments})

  def gamma_at(self, count: Any) -> Any:
    """The scope of the update ``count`` (0 at the first): a schedule's value, or γ."""
    return self.gamma(count) if callable(self.gamma) else self.gamma

  def __post_init__(self) -> None:
    """Errors naming the argument and the fix."""
    steps = self.num_langevin_steps
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool):
      raise TypeError(
        f"num_langevin_steps must be a Python int (it is the scan length), got {steps!r}; "
        "with optax.inject_hyperparams pass static_args=('num_langevin_steps',)."
      )
    if steps < 1:
      raise ValueError(f"num_langevin_steps must be >= 1, got {steps}.")
    _check_range("gamma", self.gamma, lambda v: v > 0, "> 0 (or an optax schedule)")
    _check_range("langevin_lr", self.langevin_lr, lambda v: v > 0, "> 0")
    _check_range("noise", self.noise, lambda v: v >= 0, ">= 0")
    _check_range("alpha", self.alpha, lambda v: 0 < v <= 1, "in (0, 1]")
    _noise.check_distribution(self.noise_distribution)
    _sghmc.check_arguments(self.sampler, self.friction, self.langevin_momentum)
    if self.weight_decay_at not in WEIGHT_DECAY_AT:
      raise ValueError(
        f"weight_decay_at must be one of {WEIGHT_DECAY_AT}, got {self.weight_decay_at!r}."
      )
    if (
      self.sampler == "sghmc"
      and self.weight_decay_at == "after_momentum"
      and not is_static_zero(self.weight_decay)
    ):
      # SGHMC has no momentum buffer to add it after: it was silently dropped before.
      raise ValueError(
        "weight_decay_at='after_momentum' adds the weight decay after the SGLD chain's momentum "
        "buffer, which sampler='sghmc' does not have (its velocity has friction instead); use "
        "weight_decay_at='before_momentum', which adds it to the force."
      )


def _check_range(name: str, value: Any, is_valid, valid: str) -> None:
  """A ValueError ``name must be <valid>`` for a concrete value outside it; traced ones pass."""
  if is_concrete_number(value) and not is_valid(value):
    raise ValueError(f"{name} must be {valid}, got {value}.")
