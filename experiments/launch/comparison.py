"""A job of several runs: every model with every recipe, at one budget (the MNIST-1D job).

``expand`` gives the runs of a ``GridJob`` (its schema and command line:
``experiments.run.grid_job``).

    python -m experiments.mnist1d --models cnn1d --recipe.entropy-sgd.langevin-steps 10
"""

from __future__ import annotations

from experiments.launch import components
from experiments.run.grid_job import SHARED, GridJob
from experiments.run.schema import ConfigError, RunConfig, option


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
        # L < 1 is refused by validate below, in one line naming the option.
        values["outer_epochs"] = job.effective_epochs / max(recipe.langevin_steps, 1)
        if job.lr_decay_at_fractions is not None:
          values["lr_decay_outer_epochs"] = tuple(
            round(f * values["outer_epochs"], 6) for f in job.lr_decay_at_fractions
          )
      models = (
        components.DATASETS[recipe.dataset].models if recipe.dataset in components.DATASETS else ()
      )
      if model not in models:
        raise ConfigError(f"--models {model!r}: choose from {', '.join(models)}.")
      configs[model, name] = components.validate(
        recipe.replace(model=model, **values), prefix, unprefixed=tuple(values)
      )
  return configs
