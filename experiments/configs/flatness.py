"""The flatness experiment's jobs (``python -m experiments.flatness NAME``), as data.

``FlatnessJob`` is its schema (and command line): a ``grid_job.GridJob`` (one model, one run per
recipe) plus how the flatness of each final point is measured; ``JOBS`` names one per data set.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from experiments.configs import EXPERIMENTS
from experiments.run import grid_job


@dataclasses.dataclass(frozen=True)
class FlatnessJob(grid_job.GridJob):
  """Trains one run per recipe and measures the flatness of each final point."""

  method: Literal["auto", "exact", "lanczos", "fisher", "adam-fisher"] = "auto"
  """exact eigenvalues, Lanczos + SLQ, the per-example empirical Fisher diagonal at the final
  point, or the paper's proxy (Adam's second moment along the trajectory); auto: exact up to
  --max-exact-params weights, else lanczos"""
  max_exact_params: int = 20_000
  """largest model for the exact spectrum (the dense Hessian takes n^2 floats)"""
  hessian_examples: int = 1000
  """training examples the loss is averaged over"""
  hessian_batch: int = 500
  """examples per batch of a Hessian-vector product"""
  lanczos_iters: int = 100
  """Lanczos steps for the extremes and per SLQ probe"""
  slq_samples: int = 8
  """SLQ probes"""
  relative_radii: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)
  """the loss under random perturbations: radii as fractions of each weight array's norm
  (none: skip)"""
  absolute_radii: tuple[float, ...] = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0)
  """the loss under random perturbations and the local entropy: Euclidean radii in the flat
  weight space (none: skip)"""
  perturbation_samples: int = 8
  """random directions per radius (the same for every run of the model)"""
  per_array: bool = False
  """also each weight array's own curvature: the largest eigenvalue of its block of the Hessian
  (the other arrays held fixed; --lanczos-iters steps), its norm and eigenvalue x norm², the
  measure that compares an array feeding a BatchNorm between solutions of different scales"""
  runs: tuple[str, ...] = ()
  """finished run directories to measure instead of training (e.g. the full-length runs of the
  data set's own script); their saved configs replace the job's recipes"""


def _job(dataset: str, model: str, optimizers: tuple[str, ...], **budget: Any) -> FlatnessJob:
  presets = EXPERIMENTS[dataset].PRESETS
  return FlatnessJob(
    models=(model,),
    optimizers=optimizers,
    num_seeds=1,
    recipe={n: p.config for n, p in presets.items()},
    **budget,
  )


JOBS = {
  "mnist1d": (
    "MNIST-1D CNN (5k weights), Adam vs Entropy-SGD, the main job's recipes",
    _job(
      "mnist1d",
      "cnn1d",
      ("adam", "entropy-sgd"),
      effective_epochs=100.0,
      lr_decay_at_fractions=(0.5, 0.75),
      eval_every_effective_epochs=5.0,
    ),
  ),
  "mnist": (
    "LeNet-BN on MNIST, Adam vs Entropy-SGD, the paper's presets",
    _job("mnist", "lenet_bn", ("adam", "entropy-sgd")),
  ),
  "fashion_mnist": (
    "mnistfc (--models mnistfc, 1.9M weights) or LeNet-BN on Fashion-MNIST (--data-dir: the "
    "four IDX files), Adam vs Entropy-SGD, the paper's presets; Lanczos and SLQ on 1000 "
    "training images; --runs DIR... measures finished runs of python -m experiments.fashion_mnist",
    _job("fashion_mnist", "lenet_bn", ("adam", "entropy-sgd"), method="lanczos"),
  ),
  "cifar10": (
    "All-CNN-BN on CIFAR-10, SGD vs Entropy-SGD, the paper's presets",
    _job("cifar10", "allcnn_bn", ("sgd", "entropy-sgd")),
  ),
  "charlstm": (
    "the Sec. 5.1 small char-LSTM (48 units, 32,544 weights) on pydoc_data.topics, Adam vs "
    "Entropy-Adam with the char-LSTM recipes on segments of 32 characters; Lanczos and SLQ on "
    "256 segments (the paper: 256 lines of 32)",
    dataclasses.replace(
      _job(
        "charlstm",
        "small_char_lstm",
        ("adam", "entropy-adam"),
        effective_epochs=5.0,
        lr_decay_at_fractions=(0.5, 0.75),
        eval_every_effective_epochs=1.0,
        num_train=50_000,
        num_test=20_000,
        method="lanczos",
        hessian_examples=256,
        hessian_batch=256,
      ),
      recipe={
        n: p.config.replace(bptt_steps=32) for n, p in EXPERIMENTS["charlstm"].PRESETS.items()
      },
    ),
  ),
}
