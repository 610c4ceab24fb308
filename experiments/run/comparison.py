"""A job of several runs: every model with every recipe, at one budget (the MNIST-1D job).

``GridJob`` is the schema (and command line) of such a job: the shared settings at the top
(``--effective-epochs``, ``--num-seeds``, ...: None keeps each recipe's own value) and one
``RunConfig`` per recipe (``--recipe.entropy-sgd.gamma0 0.1``). ``expand`` gives the runs.

    python -m experiments.mnist1d --models cnn1d --recipe.entropy-sgd.langevin-steps 10
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

import tyro

from experiments.run import components
from experiments.run.schema import ConfigError, RunConfig, RunOptions, option

# The shared settings, each also a RunConfig field (but the budget and milestones).
SHARED = (
  "num_seeds",
  "seed",
  "batch_size",
  "num_train",
  "num_test",
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
  """with --effective-epochs: the learning rate drops by lr_decay at these fractions of every
  run (None: each recipe's lr_decay_outer_epochs)"""
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
  data_seed: int | None = None
  """seed of generated data (None: each recipe's)"""
  synthetic: bool | None = None
  """random data of the data set's shape (None: each recipe's)"""
  text_file: str | None = None
  """a character data set's UTF-8 text file (None: each recipe's)"""
  recipe: dict[str, RunConfig] = dataclasses.field(default_factory=dict)
  """the recipes (any field: --recipe.NAME.FIELD VALUE)"""
  run: Annotated[RunOptions, tyro.conf.OmitArgPrefixes] = RunOptions()


def expand(job: GridJob, default: GridJob) -> dict[tuple[str, str], RunConfig]:
  """The run of every (model, recipe), validated; ``default`` is the job before the command
  line (a recipe field that the job sets for every run may not be changed per recipe)."""
  if job.effective_epochs is not None and not job.effective_epochs > 0:
    raise ConfigError(f"--effective-epochs must be > 0, got {job.effective_epochs}.")
  for name in job.optimizers:
    if name not in job.recipe:
      raise ConfigError(f"--optimizers {name!r}: choose from {', '.join(job.recipe)}.")
  if not job.optimizers or not job.models:
    raise ConfigError("--models and --optimizers need at least one name each.")
  owned = [n for n in SHARED if getattr(job, n) is not None]
  if job.effective_epochs is not None:
    owned += ["outer_epochs"] + (
      ["lr_decay_outer_epochs"] if job.lr_decay_at_fractions is not None else []
    )
  configs = {}
  for model in job.models:
    for name in job.optimizers:
      recipe, prefix = job.recipe[name], f"recipe.{name}."
      before = default.recipe.get(name, recipe)
      for field in owned:
        if getattr(recipe, field) != getattr(before, field):
          raise ConfigError(
            f"--{prefix}{option(field)[2:]}: the job sets {field} for every "
            f"run; use {option(field) if field in SHARED else '--effective-epochs'}."
          )
      values = {n: getattr(job, n) for n in SHARED if getattr(job, n) is not None}
      if job.effective_epochs is not None:
        values["outer_epochs"] = job.effective_epochs / recipe.langevin_steps
        if job.lr_decay_at_fractions is not None:
          values["lr_decay_outer_epochs"] = tuple(
            round(f * values["outer_epochs"], 6) for f in job.lr_decay_at_fractions
          )
      models = (
        components.DATASETS[recipe.dataset].models if recipe.dataset in components.DATASETS else ()
      )
      if model not in models:
        raise ConfigError(f"--models {model!r}: choose from {', '.join(models)}.")
      configs[model, name] = components.validate(recipe.replace(model=model, **values), prefix)
  return configs
