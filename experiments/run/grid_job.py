"""The schema (and command line) of a job of several runs: ``GridJob``.

The shared settings at the top (``--effective-epochs``, ``--num-seeds``, ...: None keeps each
recipe's own value) and one ``RunConfig`` per recipe (``--recipe.entropy-sgd.gamma0 0.1``).
``experiments.launch.comparison.expand`` turns a job into its runs.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

import tyro

from experiments.run.run_options import RunOptions
from experiments.run.schema import RunConfig

# The shared settings, each also a RunConfig field (but the budget and milestones).
SHARED = (
  "num_seeds",
  "seed",
  "batch_size",
  "num_train",
  "num_test",
  "validation_examples",
  "data_seed",
  "synthetic",
  "eval_every_effective_epochs",
  "text_file",
)


@dataclasses.dataclass(frozen=True)
class GridJob:
  """Trains every model in --models with every recipe in --optimizers."""

  models: tuple[str, ...] = ()
  """models to train"""
  optimizers: tuple[str, ...] = ()
  """recipes to train each model with (their settings: --recipe.NAME.FIELD)"""
  effective_epochs: float | None = None
  """budget of every run in effective epochs (None: each recipe's outer_epochs)"""
  lr_decay_at_fractions: tuple[float, ...] | None = None
  """with --effective-epochs: lr x lr_decay at these fractions of a run (None: the recipe's)"""
  eval_every_effective_epochs: float | None = None
  """evaluate every this many effective epochs (None: each recipe's)"""
  num_seeds: int | None = None
  """seeds per run, vmapped in one jit (None: each recipe's)"""
  seed: int | None = None
  """first seed (None: each recipe's)"""
  batch_size: int | None = None
  """examples per mini-batch (None: each recipe's)"""
  num_train: int | None = None
  """training examples (0: all; None: each recipe's)"""
  num_test: int | None = None
  """test examples (0: all; None: each recipe's)"""
  validation_examples: int | None = None
  """validation examples held out (None: each recipe's)"""
  data_seed: int | None = None
  """seed of generated data (None: each recipe's)"""
  synthetic: bool | None = None
  """random data of the data set's shape (None: each recipe's)"""
  text_file: str | None = None
  """a character data set's UTF-8 text file (None: each recipe's)"""
  recipe: dict[str, RunConfig] = dataclasses.field(default_factory=dict)
  """the recipes (any field: --recipe.NAME.FIELD VALUE)"""
  run: Annotated[RunOptions, tyro.conf.OmitArgPrefixes] = RunOptions()
