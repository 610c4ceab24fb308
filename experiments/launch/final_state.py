"""A finished run read back from its directory: ``Run``, and its weights from its newest
good checkpoint.

``load_finished(workdir)``: the config, results and records (``Run``, what a job returns);
``load_final_variables(workdir)``: ``params`` and ``batch_stats`` as numpy pytrees (what a
flatness analysis or a plot needs); ``load_final_state(workdir)``: the whole loop state in its
optax structure (the run's config rebuilds the optimizer to restore into).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import jax
import numpy as np

from experiments.launch import components
from experiments.optimizers import registry as optimizers
from experiments.run import checkpoints, directory, saved_config, schema
from experiments.run.schema import ConfigError, RunConfig
from experiments.trainer import loop_state


@dataclasses.dataclass
class Run:
  """A finished run: its config, results.json, metrics records, final state (None when it was
  finished before this process: read ``load_final_variables``) and directory."""

  config: RunConfig
  results: dict[str, Any]
  records: list[dict[str, Any]]
  state: Any
  workdir: pathlib.Path


def load_finished(workdir: str | os.PathLike) -> Run:
  """A finished run read back from its directory (config, results, records; no state: read it
  with ``load_final_state``); a ``ConfigError`` that says what is missing otherwise."""
  workdir = pathlib.Path(workdir)
  config = saved_config.saved_config(workdir, {})
  if config is None:
    raise ConfigError(f"{workdir} holds no run of these scripts (no config.json).")
  if not (workdir / directory.RESULTS_FILE).exists():
    raise ConfigError(
      f"{workdir} has not finished (no {directory.RESULTS_FILE}): resume it first with its "
      "script's --resume."
    )
  results = directory.read_results(workdir / directory.RESULTS_FILE)
  return Run(config, results, directory.read_records(workdir), None, workdir)


def _restore_newest(workdir: pathlib.Path, what: str, target: Any = None) -> dict[str, Any]:
  """The newest good checkpoint of ``workdir`` restored (into ``target``'s structure if
  given); ``CheckpointError`` naming ``what`` if it has none."""
  with checkpoints.Checkpoints(workdir) as ckpts:
    step = ckpts.latest_good()
    if step is None:
      raise checkpoints.CheckpointError(
        f"{workdir} has no checkpoint to read the {what} from; rerun it with "
        "--checkpoint-every-evals > 0."
      )
    return ckpts.restore(step, target)


def load_final_state(workdir: str | os.PathLike, data_dir: str | None = None) -> dict[str, Any]:
  """The newest good checkpoint of a run as a state dict (``loop_state.state_dict``), with the
  optimizer state in its optax structure (a leading seed axis when it trained several)."""

  workdir = pathlib.Path(workdir)
  config = saved_config.saved_config(workdir, {})
  if config is None:
    raise ConfigError(f"{workdir} holds no run of these scripts (no config.json).")
  ds = components.load_data(config, data_dir)
  plan = schema.schedule(config, len(ds.train_x))
  make_tx = optimizers.optimizer_factory(config, plan.steps_per_epoch)
  model = components.make_model(config, ds.num_classes)
  task = components.make_task(config, model)
  init = lambda seed: loop_state.state_dict(
    loop_state.init_state(
      model, make_tx, task, ds.train_x[:1], seed, config.batch_size, config.replicas
    )
  )
  seeds = np.arange(config.num_seeds, dtype=np.uint32) + config.seed
  target = jax.eval_shape(
    jax.vmap(init) if config.num_seeds > 1 else init, seeds if config.num_seeds > 1 else seeds[0]
  )
  return _restore_newest(workdir, "final state", target)


def load_final_variables(workdir: str | os.PathLike) -> dict[str, Any]:
  """``params`` and ``batch_stats`` (if any) of a run's newest good checkpoint, as numpy
  pytrees (a leading seed axis when the run trained several seeds)."""

  restored = _restore_newest(pathlib.Path(workdir), "final parameters")
  variables = {"params": restored["params"]}
  if restored.get("batch_stats") is not None:
    variables["batch_stats"] = restored["batch_stats"]
  return variables
