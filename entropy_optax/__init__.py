"""entropy_optax: Entropy-SGD (Chaudhari et al., ICLR 2017) as an Optax gradient transformation."""

import importlib

from entropy_optax._accumulation import MultiSteps
from entropy_optax._alias import entropy_adam, entropy_sgd
from entropy_optax._authors import authors_entropy_sgd
from entropy_optax._auto_scope import AutoScoping, AutoScopingState, auto_scoping, ratio_scoping
from entropy_optax._elastic import (
  ElasticCouplingState,
  ElasticStats,
  elastic_coupling,
  replica_average,
)
from entropy_optax._langevin import langevin_mean
from entropy_optax._parle import parle
from entropy_optax._scoping import (
  bounded_exponential_scoping,
  exponential_scoping,
  linear_scoping,
  quadratic_scoping,
)
from entropy_optax._smoothing import GaussianSmoothingState, gaussian_smoothing
from entropy_optax._stats import LangevinStats
from entropy_optax._transform import LocalEntropyState, local_entropy
from entropy_optax._unroll import default_unroll

__version__ = "0.2.0"

__all__ = (
  "AutoScoping",
  "AutoScopingState",
  "ElasticCouplingState",
  "ElasticStats",
  "GaussianSmoothingState",
  "LangevinStats",
  "LocalEntropyState",
  "MultiSteps",
  "authors_entropy_sgd",
  "auto_scoping",
  "bounded_exponential_scoping",
  "default_unroll",
  "elastic_coupling",
  "entropy_adam",
  "entropy_sgd",
  "exponential_scoping",
  "flatness",
  "gaussian_smoothing",
  "langevin_mean",
  "linear_scoping",
  "local_entropy",
  "parle",
  "quadratic_scoping",
  "ratio_scoping",
  "replica_average",
)


def __getattr__(name: str):
  # :mod:`entropy_optax.flatness` is imported on first use: ``import entropy_optax`` then costs the
  # optimizers only, not the Hessian tools (scipy-backed eigensolvers, matfree, matplotlib).
  if name == "flatness":
    return importlib.import_module("entropy_optax.flatness")
  raise AttributeError(f"module 'entropy_optax' has no attribute {name!r}")
