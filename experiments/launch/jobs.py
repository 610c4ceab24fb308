"""Runs a ``RunConfig`` end to end: run directory, data, model, optimizer, loop, results.

``run_experiment(config, options)`` is the flow of every experiment:

    with writer_lock.writing(workdir, ...) as resuming:  # one writer; never overwrite a run
      data = components.load_data(config)           # registries: experiments/launch/components.py
      plan = schema.schedule(config, len(data.train_x))  # once; passed on
      model, make_tx = components.make_model(config), optimizers.optimizer_factory(config, plan...)
      loop.train(config, model, make_tx, data, workdir, plan=plan, mesh=...)  # the same config
      results.json, error.png                       # experiments/reporting/summaries.py, plots.py

``run_grid`` runs several configs, one subdirectory each.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from experiments import configs
from experiments.launch import cli, comparison, components
from experiments.launch.final_state import Run
from experiments.optimizers import registry as optimizers
from experiments.reporting import display_names, plots, summaries
from experiments.run import (
  directory,
  distributed,
  grid_job,
  kept_records,
  saved_config,
  signals,
  writer_lock,
)
from experiments.run import schema as config_lib
from experiments.run.run_options import RunOptions
from experiments.run.schema import RunConfig
from experiments.trainer import loop


def default_workdir(config: RunConfig, root: str = "runs") -> str:
  suffix = "-synthetic" if config.synthetic else ""
  return os.path.join(root, f"{config.dataset}-{config.model}-{config.optimizer}{suffix}")


def run_experiment(
  config: RunConfig,
  options: RunOptions,
  *,
  explicit: Mapping[str, Any] = (),
  prefix: str = "",
  in_job: bool = False,
  log: Callable[[str], None] = print,
) -> Run:
  """Trains ``config`` in ``options.workdir`` (or resumes it) and writes its results.

  Args:
    config: the run (validated here).
    options: the run directory and data options (``options.workdir`` must be set).
    explicit: the config fields given on the command line: resuming a run started with other
      values is an error; the other fields are taken from the saved run.
    prefix: the options' prefix in messages (a grid's recipe).
    in_job: the run is one of a job's (what a signal's line tells to do next).
    log: where to print progress lines.
  """

  components.validate(config, prefix)
  join_processes(options)
  if not options.resume:  # a resumed run checks the config it saved, read under the lock
    preflight(config, options)
    if in_job:
      signals.check(f"before {options.workdir} started", "continue the job with --resume")
    signals.check("before anything was written", "nothing to continue")
  workdir = pathlib.Path(options.workdir)
  with writer_lock.writing(
    workdir, resume=options.resume, overwrite=options.overwrite, log=log
  ) as resuming:
    if resuming:
      config = saved_config.saved_config(workdir, explicit, prefix) or config
      if (workdir / directory.RESULTS_FILE).exists():
        log(f"{workdir}: finished already; its results:")
        return Run(
          config,
          directory.read_results(workdir / directory.RESULTS_FILE),
          kept_records.finished_records(workdir, log),
          None,
          workdir,
        )
    ds = components.load_data(config, options.data_dir, options.download)
    model = components.make_model(config, ds.num_classes)
    plan = config_lib.schedule(config, len(ds.train_x))  # the run's one schedule
    make_tx = optimizers.optimizer_factory(config, plan.steps_per_epoch)
    mesh = distributed.make_mesh(
      options.mesh, num_seeds=config.num_seeds, batch_size=config.batch_size
    )  # the saved config's seeds and batch when resuming
    log(
      f"{workdir}: {describe(config)}, {len(ds.train_x)} train / {len(ds.test_x)} test "
      f"examples, {config.outer_epochs:g} outer epochs x L={config.langevin_steps} = "
      f"{config.effective_epochs:g} effective epochs, {plan.num_steps} outer steps, "
      f"{config.num_seeds} seed(s), {describe_devices(mesh)}"
    )
    task = components.make_task(config, model)
    signals.check(  # a signal since the command started: the loop would take it over
      f"before {workdir} started training",
      "continue the job with --resume"
      if in_job
      else ("continue the run with --resume" if resuming else "nothing of it was written"),
    )
    result = loop.train(
      config,
      model,
      make_tx,
      ds,
      workdir,
      task=task,
      mesh=mesh,
      resume=None if resuming else False,
      plan=plan,
      learning_rate=optimizers.learning_rate(config, plan.steps_per_epoch),
      progress=options.progress and distributed.is_writer(),
      tensorboard=options.tensorboard,
      log=log,
      divergence_hint=f"try a lower --{prefix}learning-rate or --{prefix}clip-norm",
    )
    all_records = directory.read_records(workdir)

    num_params = sum(int(np.size(a)) for a in jax.tree.leaves(result.state.params))
    heldout = components.DATASETS[config.dataset].heldout
    if heldout is not None:  # a split evaluated once, at the end (a text's test split)
      heldout = loop.evaluate(
        config, result.state, heldout(config, options.data_dir), task=task, mesh=mesh
      )
    validation = None
    if ds.val_x is not None:  # the validation split carved from the training set
      validation = loop.evaluate(config, result.state, (ds.val_x, ds.val_y), task=task, mesh=mesh)
    results = summaries.summarize(
      all_records,
      config,
      dataset=ds.name,
      num_params=num_params // (config.num_seeds * config.replicas),
      num_train=len(ds.train_x),
      num_test=len(ds.test_x),
      paper=None
      if config.synthetic
      else configs.paper_result(config.dataset, config.model, config.optimizer),
      heldout=heldout,
      validation=validation,
      diverged=result.diverged,
    )
    if distributed.is_writer():
      directory.write_json(workdir / directory.RESULTS_FILE, results)
      plots.plot_error(
        {describe(config): {display_names.name(config.optimizer): all_records}},
        workdir / directory.PLOT_FILE,
      )
    return Run(config, results, all_records, result.state, workdir)


def preflight(config: RunConfig, options: RunOptions) -> None:
  """The checks of a validated ``config`` that need the devices or the data, made before
  anything is written: the mesh against the devices, seeds and batch, and the batch against
  the training set (the data is loaded for it, then cached for the run).

  Raises:
    ConfigError: the option to fix, in one line.
  """
  distributed.make_mesh(options.mesh, num_seeds=config.num_seeds, batch_size=config.batch_size)
  ds = components.load_data(config, options.data_dir, options.download)
  config_lib.schedule(config, len(ds.train_x))


def describe(config: RunConfig) -> str:
  return (
    f"{config.dataset}{' (synthetic)' if config.synthetic else ''} {config.model} "
    f"{config.optimizer}"
  )


def join_processes(options: RunOptions) -> None:
  """Joins the run's other processes (``--coordinator-address`` etc.), before any device work."""
  distributed.initialize(
    options.coordinator_address,
    options.num_processes,
    options.process_id,
    timeout_s=options.process_timeout_s,
  )


def describe_devices(mesh) -> str:
  facts = distributed.describe(mesh)
  sizes = ",".join(f"{axis}={size}" for axis, size in facts["mesh"].items())
  processes = facts["process_count"]
  return f"mesh {sizes} on {len(facts['devices'])} {facts['platform']} device(s)" + (
    f" of {processes} processes" if processes > 1 else ""
  )


def run_grid(
  named_configs: Mapping[str, RunConfig],
  options: RunOptions,
  *,
  prefixes: Mapping[str, str] = (),
  log: Callable[[str], None] = print,
) -> dict[str, Run]:
  """Runs (or resumes) several configs, each in the subdirectory of ``options.workdir`` named
  by its key; ``comparison.json`` lists them. With ``options.resume`` finished runs are kept and
  unfinished ones continue; a resumed run must have the config given here."""
  join_processes(options)
  if not options.resume:  # every run's options are checked before grid.json is written
    for key, config in named_configs.items():
      preflight(components.validate(config, dict(prefixes).get(key, "")), options)
    signals.check("before anything was written", "nothing to continue")
  root = pathlib.Path(options.workdir)
  with writer_lock.writing(
    root, resume=options.resume, overwrite=options.overwrite, log=log
  ) as resuming:
    if distributed.is_writer() and not (root / directory.GRID_FILE).exists():  # marks a run
      directory.write_json(
        root / directory.GRID_FILE, {n: dataclasses.asdict(c) for n, c in named_configs.items()}
      )
    runs = {}
    for key, config in named_configs.items():
      sub = root / key
      signals.check(f"before {sub} started", "continue the job with --resume")
      started = sub.is_dir() and directory.is_run_dir(sub)
      sub_options = options.replace(workdir=str(sub), resume=resuming and started, overwrite=False)
      # Every field counts as given explicitly: a saved run with other values is an error.
      runs[key] = run_experiment(
        config,
        sub_options,
        explicit=dataclasses.asdict(config),
        prefix=dict(prefixes).get(key, ""),
        in_job=True,
        log=log,
      )
      log(f"  {key}: {summaries.format_result(runs[key].results)}")
    return runs


def diverged_exit_code(runs: Sequence[Run], log: Callable[[str], None] = print) -> int:
  """``cli.EXIT_DIVERGED`` if a run diverged (after a line naming them), else 0: a job goes on
  with its other runs and says at its end that some diverged."""
  bad = [run for run in runs if run.results.get("diverged")]
  if not bad:
    return 0
  log(
    f"{len(bad)} of {len(runs)} run(s) diverged: "
    + "; ".join(f"{run.workdir} ({summaries.divergence_note(run.results)})" for run in bad)
  )
  return cli.EXIT_DIVERGED


def run_preset(
  prog: str, description: str, presets: Mapping[str, config_lib.Preset], argv: Sequence[str] | None
) -> int:
  """A preset script's flow: ``PRESET [--FIELD VALUE ...]`` (``cli.parse_preset``), the run
  trained or resumed in its directory (default ``default_workdir``), its result printed.
  Returns the exit code."""
  config, options, explicit = cli.parse_preset(prog, description, presets, argv)
  options = options.replace(workdir=options.workdir or default_workdir(config))
  run = run_experiment(config, options, explicit=explicit)
  print(summaries.format_result(run.results))
  files = {"results": directory.RESULTS_FILE, "plot": directory.PLOT_FILE}
  print("; ".join(f"{what}: {run.workdir / name}" for what, name in files.items()))
  return diverged_exit_code([run])


def run_comparison(
  job: grid_job.GridJob, default: grid_job.GridJob, workdir: str
) -> tuple[dict[tuple[str, str], Run], pathlib.Path]:
  """Runs (or resumes) every (model, optimizer) of a comparison job, as ``run_grid`` does.

  Args:
    job: the parsed command line (``comparison.expand`` turns it into one config per pair).
    default: the script's default job (the recipes the command line overrides).
    workdir: the directory when the command line gives none.

  Returns:
    The runs by (model, optimizer), each in the subdirectory ``MODEL-OPTIMIZER`` (errors about
    a recipe's field name its ``--recipe.OPTIMIZER.FIELD`` option), and the directory.
  """
  named = comparison.expand(job, default)
  options = job.run.replace(workdir=job.run.workdir or workdir)
  runs = run_grid(
    {f"{m}-{o}": c for (m, o), c in named.items()},
    options,
    prefixes={f"{m}-{o}": f"recipe.{o}." for m, o in named},
  )
  return {key: runs[f"{key[0]}-{key[1]}"] for key in named}, pathlib.Path(options.workdir)
