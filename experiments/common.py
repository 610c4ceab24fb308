"""What the experiment scripts share: run configs, the command line, run directories, results.

The scripts (``experiments.cifar10``, ``experiments.mnist``, ``experiments.mnist1d``,
``experiments.flatness``) are thin layers over this module:

* ``RunConfig`` is everything that fixes a run's trajectory: data, model, optimizer and its
  schedule, budget, seeds. Plain data; it is stored with the results (``config.json``, written
  by ``experiments.training.train`` with the code's git revision) and a resumed run reuses it.
* ``RunOptions`` is how a run is carried out without changing it: the run directory, resume or
  overwrite, where the data live, the progress bar.
* ``add_config_options`` / ``config_from_args`` make one command-line option per ``RunConfig``
  field, documented from the field's help and the preset values; a preset fills the defaults
  and every option overrides it.
* ``run_experiment(config, options)`` prepares the run directory (never overwriting one),
  loads the data, builds the model and the optimizer, trains with
  ``experiments.training.train`` (metrics as JSON lines, orbax checkpoints, resume) and writes
  ``results.json`` and ``error.png`` (test error against effective epochs, like the paper's
  Figs. 4-5).
* ``cli`` wraps a script's ``main`` so that known failures (unknown preset, bad value,
  unwritable directory, absent data set, existing run) print one line saying what to do and
  exit non-zero, without a traceback.

Epochs. ``RunConfig.epochs`` counts *outer* epochs: passes of outer steps over the training
set, the paper's "epochs" (Entropy-SGD's "10 epochs" of CIFAR-10). Each outer step of a
local-entropy optimizer costs ``langevin_steps`` = L gradient evaluations on L fresh
mini-batches, so a run costs L x epochs *effective* epochs; optimizers are compared at equal
effective epochs. Learning-rate milestones and evaluations follow the same conventions:
``lr_decay_epochs`` in outer epochs (as the paper's recipes), ``eval_every`` in effective
epochs (the x axis of the plots).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping, Sequence
import dataclasses
import json
import math
import os
import pathlib
import shutil
import sys
from typing import Any

import numpy as np

from experiments import data as data_lib

OPTIMIZERS = ("sgd", "adam", "entropy-sgd", "entropy-adam")
SCOPINGS = ("exponential", "linear", "quadratic", "none")
DTYPES = ("float32", "bfloat16")
DATASETS = ("cifar10", "mnist", "mnist1d")
MODELS_OF = {"cifar10": ("allcnn_bn",), "mnist": ("mnistfc", "lenet_bn"),
             "mnist1d": ("mlp1d", "cnn1d")}
# The size of each data set, for --synthetic.
SIZES = {"cifar10": (50_000, 10_000), "mnist": (60_000, 10_000), "mnist1d": (4000, 1000)}

RESULTS_FILE = "results.json"
PLOT_FILE = "error.png"
GRID_FILE = "grid.json"
# experiments.training's file names, repeated so that --help need not import jax and orbax.
CONFIG_FILE, METRICS_FILE, CHECKPOINT_DIR = "config.json", "metrics.jsonl", "checkpoints"
# Files that mark a directory as a run (or a grid of runs) that --overwrite may replace.
_RUN_MARKERS = (CONFIG_FILE, METRICS_FILE, RESULTS_FILE, GRID_FILE, CHECKPOINT_DIR)

# The paper's Table 1 (test error %, +- std, effective epochs) and the MNIST-1D benchmark.
PAPER = {
    ("mnist", "mnistfc", "entropy-sgd"): "1.37 ± 0.03 (120)",
    ("mnist", "mnistfc", "adam"): "1.39 ± 0.03 (66)",
    ("mnist", "lenet_bn", "entropy-sgd"): "0.50 ± 0.01 (80)",
    ("mnist", "lenet_bn", "adam"): "0.51 ± 0.01 (100)",
    ("cifar10", "allcnn_bn", "entropy-sgd"): "7.81 ± 0.09 (160)",
    ("cifar10", "allcnn_bn", "sgd"): "7.71 ± 0.19 (180)",
    ("mnist1d", "mlp1d", "adam"): "32 (benchmark: 68% acc.)",
    ("mnist1d", "cnn1d", "adam"): "6 (benchmark: 94% acc.)",
}


class ConfigError(ValueError):
  """A configuration or command line that cannot run; the message says what to change."""


class RunExistsError(RuntimeError):
  """The run directory holds a run and neither --resume nor --overwrite was given."""


class UsageError(ValueError):
  """The command line does not parse (argparse's errors, raised instead of exiting)."""


def _field(default: Any, help: str, **metadata) -> Any:  # pylint: disable=redefined-builtin
  return dataclasses.field(default=default, metadata={"help": help, **metadata})


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """A training run: what the results depend on (see the module docstring for epochs)."""

  dataset: str = _field("mnist1d", "data set", choices=DATASETS)
  model: str = _field("mlp1d", "model (experiments/models.py)")
  optimizer: str = _field("sgd", "optimizer", choices=OPTIMIZERS)
  epochs: float = _field(
      10.0, "training length in outer epochs (passes of outer steps over the training set); "
      "entropy-* optimizers cost langevin-steps x epochs effective epochs")
  batch_size: int = _field(128, "examples per mini-batch")
  learning_rate: float = _field(0.1, "(outer) learning rate")
  lr_decay: float = _field(1.0, "factor multiplying the learning rate at each --lr-decay-epochs")
  lr_decay_epochs: tuple[float, ...] = _field(
      (), "outer epochs at which the learning rate is multiplied by --lr-decay, comma-separated "
      "('' for none)")
  momentum: float = _field(0.9, "momentum of SGD and of Entropy-SGD's outer loop")
  nesterov: bool = _field(True, "Nesterov momentum (SGD, Entropy-SGD)")
  b1: float = _field(0.9, "Adam's and Entropy-Adam's b1")
  b2: float = _field(0.999, "Adam's and Entropy-Adam's b2")
  weight_decay: float = _field(
      0.0, "L2 coefficient (added to the gradient; entropy-* add it inside the Langevin loop "
      "too, as the authors' code)")
  langevin_steps: int = _field(
      1, "L: Langevin steps = gradient evaluations (fresh mini-batches) per update; 1 for "
      "sgd/adam")
  langevin_lr: float = _field(0.1, "Langevin step size eta'")
  noise: float = _field(
      1e-4, "thermal noise epsilon: each Langevin step adds sqrt(langevin_lr) * noise * N(0, I)")
  alpha: float = _field(0.75, "weight of the newest Langevin sample in the running mean mu")
  gamma0: float = _field(0.03, "scope gamma at the first update")
  gamma1: float = _field(1e-3, "scoping rate: gamma = gamma0 (1 + gamma1)^t for exponential")
  scoping: str = _field("exponential", "how gamma grows with the update count t",
                        choices=SCOPINGS)
  langevin_momentum: float = _field(
      0.0, "(Nesterov) momentum inside the Langevin loop, buffer zeroed every update (authors' "
      "code: 0.9)")
  scale_by_gamma: bool = _field(
      False, "outer gradient gamma (x - mu) (Alg. 1 line 7) instead of x - mu (the paper's "
      "practice)")
  dropout: float | None = _field(None, "dropout rate of the hidden layers ('none': the model's)")
  input_dropout: float | None = _field(None, "dropout rate of the input ('none': the model's)")
  dtype: str = _field("float32", "compute dtype; parameters stay float32", choices=DTYPES)
  synthetic: bool = _field(False, "random data of the data set's shape (speed measurements)")
  num_train: int = _field(0, "use the first N training examples (0: all)")
  num_test: int = _field(0, "use the first N test examples (0: all)")
  data_seed: int = _field(42, "seed of the generated data (MNIST-1D, --synthetic)")
  seed: int = _field(0, "seed of the initialisation, dropout, data order and Langevin noise")
  num_seeds: int = _field(1, "train seeds seed..seed+N-1 at once (vmapped in one jit)")
  eval_every: float = _field(
      0.0, "evaluate on the test set every this many effective epochs (0: about 20 times)")
  checkpoint_every: int = _field(
      1, "save a checkpoint every this many evaluations and at the end (0: none; --resume "
      "then restarts)")
  steps_per_call: int = _field(100, "at most this many outer steps per jitted call")
  eval_batch_size: int = _field(1000, "examples per evaluation batch")

  @property
  def effective_epochs(self) -> float:
    return self.langevin_steps * self.epochs

  @property
  def is_entropy(self) -> bool:
    return self.optimizer.startswith("entropy-")


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """How a run is carried out, without changing its results.

  Attributes:
    workdir: the run directory.
    resume: continue the run in ``workdir`` (from its last checkpoint, with its saved config).
    overwrite: replace the run in ``workdir``.
    data_dir: tfds data directory (None: tfds's default).
    download: whether tfds may download an absent data set.
    progress: show a progress bar.
  """

  workdir: str
  resume: bool = False
  overwrite: bool = False
  data_dir: str | None = None
  download: bool = True
  progress: bool = True


# ---------------------------------------------------------------------------
# Validation.
# ---------------------------------------------------------------------------


def _option(name: str) -> str:
  return "--" + name.replace("_", "-")


def validate(config: RunConfig) -> RunConfig:
  """Checks ``config``; raises ``ConfigError`` naming the option to fix."""
  def need(ok: bool, name: str, what: str):
    if not ok:
      raise ConfigError(f"{_option(name)} must be {what}, got {getattr(config, name)!r}.")

  need(config.dataset in DATASETS, "dataset", f"one of {', '.join(DATASETS)}")
  models = MODELS_OF[config.dataset]
  need(config.model in models, "model", f"one of {', '.join(models)} for {config.dataset}")
  need(config.optimizer in OPTIMIZERS, "optimizer", f"one of {', '.join(OPTIMIZERS)}")
  need(config.scoping in SCOPINGS, "scoping", f"one of {', '.join(SCOPINGS)}")
  need(config.dtype in DTYPES, "dtype", f"one of {', '.join(DTYPES)}")
  for name in ("epochs", "learning_rate", "langevin_lr", "gamma0", "lr_decay"):
    need(math.isfinite(getattr(config, name)) and getattr(config, name) > 0, name, "> 0")
  for name in ("batch_size", "langevin_steps", "num_seeds", "steps_per_call",
               "eval_batch_size"):
    need(getattr(config, name) >= 1, name, ">= 1")
  for name in ("num_train", "num_test", "checkpoint_every"):
    need(getattr(config, name) >= 0, name, ">= 0")
  for name in ("weight_decay", "noise", "gamma1", "eval_every"):
    need(math.isfinite(getattr(config, name)) and getattr(config, name) >= 0, name, ">= 0")
  for name in ("momentum", "langevin_momentum", "b1", "b2"):
    need(0 <= getattr(config, name) < 1, name, "in [0, 1)")
  need(0 < config.alpha <= 1, "alpha", "in (0, 1]")
  for name in ("dropout", "input_dropout"):
    value = getattr(config, name)
    need(value is None or 0 <= value < 1, name, "in [0, 1) or 'none'")
  epochs = config.lr_decay_epochs
  need(all(e > 0 for e in epochs) and list(epochs) == sorted(set(epochs)), "lr_decay_epochs",
       "increasing positive epochs")
  if not config.is_entropy and config.langevin_steps != 1:
    raise ConfigError(f"--langevin-steps={config.langevin_steps} needs an entropy-* optimizer; "
                      f"--optimizer {config.optimizer} takes --langevin-steps 1.")
  return config


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------


class ArgumentParser(argparse.ArgumentParser):
  """An ``argparse.ArgumentParser`` that raises ``UsageError`` instead of exiting."""

  def error(self, message):
    raise UsageError(f"{message} (see {self.prog} --help)")


def new_parser(prog: str, description: str, epilog: str = "") -> ArgumentParser:
  return ArgumentParser(prog=prog, description=description, epilog=epilog,
                        formatter_class=argparse.RawDescriptionHelpFormatter)


def _parse_optional_float(text: str) -> float | None:
  return None if text.strip().lower() in ("none", "default", "") else float(text)


def _parse_floats(text: str) -> tuple[float, ...]:
  return tuple(float(t) for t in text.split(",") if t.strip())


# argparse names the type in "invalid <name> value" messages.
_parse_optional_float.__name__ = "float or 'none'"
_parse_floats.__name__ = "comma-separated floats"
_PARSERS: dict[str, Callable[[str], Any]] = {
    "int": int, "float": float, "str": str, "float | None": _parse_optional_float,
    "tuple[float, ...]": _parse_floats}
_METAVARS = {"int": "N", "float": "X", "str": "NAME", "float | None": "X",
             "tuple[float, ...]": "E1,E2,..."}


def parse_value(name: str, text: str) -> Any:
  """Parses ``text`` as the value of the ``RunConfig`` field ``name`` (ValueError if invalid)."""
  kind = {f.name: f.type for f in dataclasses.fields(RunConfig)}[name]
  if kind == "bool":
    if text.lower() not in ("true", "false", "yes", "no", "1", "0"):
      raise ValueError(f"not a boolean: {text!r}")
    return text.lower() in ("true", "yes", "1")
  return _PARSERS[kind](text)


def _format(value: Any) -> str:
  if isinstance(value, tuple):
    return ",".join(f"{v:g}" for v in value) or "''"
  if isinstance(value, bool):
    return "yes" if value else "no"
  if isinstance(value, float):
    return f"{value:g}"
  return "none" if value is None else str(value)


def add_config_options(parser: argparse.ArgumentParser, base: RunConfig,
                       presets: Mapping[str, Mapping[str, Any]], *,
                       exclude: Iterable[str] = ("dataset",),
                       choices: Mapping[str, Sequence[str]] | None = None) -> None:
  """Adds ``--preset`` and one option per ``RunConfig`` field (but ``exclude``).

  An option left out keeps the preset's value (or ``base``'s): the parsed namespace holds only
  the options given, so ``config_from_args`` can tell them apart.
  """
  exclude, choices = set(exclude), dict(choices or {})
  parser.add_argument(
      "--preset", choices=sorted(presets), default=next(iter(presets)),
      help=f"the recipe that sets the defaults below (default: {next(iter(presets))})")
  group = parser.add_argument_group(
      "run configuration",
      "Each option overrides the preset's value, shown as (preset: value).\n"
      "A resumed run keeps its saved configuration.")
  for field in dataclasses.fields(RunConfig):
    if field.name in exclude:
      continue
    values = {name: preset.get(field.name, getattr(base, field.name))
              for name, preset in presets.items()}
    if len(set(map(_format, values.values()))) == 1:
      shown = f"default: {_format(next(iter(values.values())))}"
    else:
      shown = "; ".join(f"{name}: {_format(v)}" for name, v in values.items())
    help_text = f"{field.metadata['help']} ({shown})".replace("%", "%%")
    if field.type == "bool":
      group.add_argument(_option(field.name), action=argparse.BooleanOptionalAction,
                         default=argparse.SUPPRESS, help=help_text)
    else:
      field_choices = choices.get(field.name, field.metadata.get("choices"))
      group.add_argument(_option(field.name), type=_PARSERS[field.type], choices=field_choices,
                         default=argparse.SUPPRESS, help=help_text,
                         metavar=None if field_choices else _METAVARS[field.type])


def add_run_options(parser: argparse.ArgumentParser, default_workdir: str,
                    data: bool = True) -> None:
  """Adds the ``RunOptions`` options."""
  group = parser.add_argument_group("run directory and data")
  group.add_argument("--workdir", default=None,
                     help=f"the run directory (default: {default_workdir})")
  group.add_argument("--resume", action="store_true",
                     help="continue the run in --workdir from its last checkpoint, with its "
                     "saved configuration (a finished run is only reported)")
  group.add_argument("--overwrite", action="store_true",
                     help="delete the run in --workdir and start afresh")
  group.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                     help="show a progress bar (default: yes)")
  if data:
    group.add_argument("--data-dir", default=None,
                       help="tfds data directory (default: $TFDS_DATA_DIR or "
                       "~/tensorflow_datasets)")
    group.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                       help="let tfds download and prepare an absent data set (default: yes)")


def explicit_fields(args: argparse.Namespace) -> dict[str, Any]:
  """The ``RunConfig`` fields given on the command line."""
  names = {f.name for f in dataclasses.fields(RunConfig)}
  return {k: v for k, v in vars(args).items() if k in names}


def config_from_args(args: argparse.Namespace, base: RunConfig,
                     presets: Mapping[str, Mapping[str, Any]]) -> RunConfig:
  """``base``, then the preset ``args.preset``, then the options given; validated."""
  return validate(dataclasses.replace(base, **{**presets[args.preset], **explicit_fields(args)}))


def options_from_args(args: argparse.Namespace, default_workdir: str) -> RunOptions:
  if args.resume and args.overwrite:
    raise ConfigError("--resume and --overwrite exclude each other: pick one.")
  return RunOptions(workdir=args.workdir or default_workdir, resume=args.resume,
                    overwrite=args.overwrite, data_dir=getattr(args, "data_dir", None),
                    download=getattr(args, "download", True), progress=args.progress)


def default_workdir(config: RunConfig, root: str = "runs") -> str:
  suffix = "-synthetic" if config.synthetic else ""
  return os.path.join(root, f"{config.dataset}-{config.model}-{config.optimizer}{suffix}")


def _one_line(error: BaseException) -> str:
  return " ".join(str(error).split()) or type(error).__name__


def _known_errors() -> tuple[type[BaseException], ...]:
  from experiments import training  # pylint: disable=g-import-not-at-top
  return (ConfigError, RunExistsError, WorkdirError, data_lib.DatasetUnavailableError,
          training.CheckpointError)


def cli(main: Callable[[Sequence[str] | None], int | None]) -> Callable[..., int]:
  """Wraps a script's ``main(argv)``: known failures give one line on stderr and exit code 1
  (2 for a command line that does not parse), never a traceback; other exceptions are bugs
  and keep theirs."""

  def wrapped(argv: Sequence[str] | None = None) -> int:
    try:
      return main(argv) or 0
    except UsageError as e:
      print(f"error: {_one_line(e)}", file=sys.stderr)
      return 2
    except KeyboardInterrupt:
      print("interrupted: continue the run with --resume", file=sys.stderr)
      return 130
    except Exception as e:  # pylint: disable=broad-except
      if not isinstance(e, _known_errors()):
        raise
      print(f"error: {_one_line(e)}", file=sys.stderr)
      return 1

  wrapped.__doc__ = main.__doc__
  return wrapped


# ---------------------------------------------------------------------------
# Run directories.
# ---------------------------------------------------------------------------


class WorkdirError(OSError):
  """The run directory cannot be created or written."""


def _is_run_dir(path: pathlib.Path) -> bool:
  return any((path / name).exists() for name in _RUN_MARKERS)


def prepare_workdir(workdir: str | os.PathLike, *, resume: bool, overwrite: bool) -> bool:
  """Makes ``workdir`` ready; returns whether it holds a run to resume.

  Never replaces a run without ``overwrite``, and never deletes a directory that is not a run.

  Raises:
    RunExistsError: ``workdir`` holds a run and neither ``resume`` nor ``overwrite`` is set.
    WorkdirError: ``workdir`` cannot be created or written, or ``overwrite`` would delete a
      directory that is not a run.
  """
  path = pathlib.Path(workdir)
  existing = path.is_dir() and any(path.iterdir())
  if existing and not resume:
    if not _is_run_dir(path):
      raise WorkdirError(f"{path} is a non-empty directory that holds no run; choose another "
                         "--workdir (nothing was deleted).")
    if not overwrite:
      raise RunExistsError(f"{path} already holds a run; pass --resume to continue it, "
                           "--overwrite to replace it, or choose another --workdir.")
    shutil.rmtree(path)
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / ".write_test"
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise WorkdirError(f"cannot write the run directory {path} ({e.strerror or e}); pass "
                       "--workdir a writable directory.") from e
  return existing and resume


def read_json(path: pathlib.Path) -> Any:
  return json.loads(pathlib.Path(path).read_text())


def write_json(path: pathlib.Path, value: Any) -> None:
  tmp = pathlib.Path(str(path) + ".tmp")
  tmp.write_text(json.dumps(value, indent=1, default=str) + "\n")
  os.replace(tmp, path)


def _config_from_json(saved: Mapping[str, Any]) -> RunConfig:
  values = dict(saved)
  values["lr_decay_epochs"] = tuple(values.get("lr_decay_epochs", ()))
  return RunConfig(**values)


def saved_config(workdir: pathlib.Path, config: RunConfig,
                 explicit: Mapping[str, Any] = ()) -> RunConfig | None:
  """The config a run in ``workdir`` was started with (None if it never started).

  Raises:
    ConfigError: an option given explicitly (``explicit``) differs from the saved value.
  """
  path = workdir / CONFIG_FILE
  if not path.exists():
    return None
  experiment = read_json(path).get("metadata", {}).get("experiment")
  if experiment is None:
    raise ConfigError(f"{workdir} holds a run that these scripts did not start; it cannot be "
                      "resumed here: choose another --workdir.")
  saved = _config_from_json(experiment)
  differ = [f"{_option(k)} {_format(v)} (saved: {_format(getattr(saved, k))})"
            for k, v in dict(explicit).items() if getattr(saved, k) != v]
  if differ:
    raise ConfigError(f"{workdir} was started with another configuration: {'; '.join(differ)}. "
                      "Drop these options to resume it, or start a new run (--overwrite or "
                      "another --workdir).")
  return saved


# ---------------------------------------------------------------------------
# Data, model, optimizer.
# ---------------------------------------------------------------------------


_DATA_CACHE: dict[tuple[Any, ...], data_lib.Dataset] = {}


def load_data(config: RunConfig, options: RunOptions) -> data_lib.Dataset:
  """The data of ``config``: real (tfds or generated) or synthetic, cut to num_train/num_test.

  Cached in the process (the last data set only): the runs of a grid share their data.
  """
  key = (config.dataset, config.synthetic, config.num_train, config.num_test,
         config.data_seed, options.data_dir)
  if key not in _DATA_CACHE:
    _DATA_CACHE.clear()
    _DATA_CACHE[key] = _load_data(config, options)
  ds = _DATA_CACHE[key]
  if len(ds.train_x) < config.batch_size:
    raise ConfigError(f"--batch-size {config.batch_size} exceeds the {len(ds.train_x)} training "
                      "examples: lower it or use more data.")
  return ds


def _load_data(config: RunConfig, options: RunOptions) -> data_lib.Dataset:
  num_train, num_test = SIZES[config.dataset]
  if config.synthetic:
    ds = data_lib.synthetic_like(config.dataset, config.num_train or num_train,
                                 config.num_test or num_test, seed=config.data_seed)
  elif config.dataset == "cifar10":
    ds = data_lib.load_cifar10(options.data_dir, download=options.download)
  elif config.dataset == "mnist":
    ds = data_lib.load_mnist(options.data_dir, download=options.download)
  else:
    ds = data_lib.load_mnist1d(config.num_train or num_train, config.num_test or num_test,
                               seed=config.data_seed)
  cut = lambda a, n: a[:n] if n else a
  ds = data_lib.Dataset(cut(ds.train_x, config.num_train), cut(ds.train_y, config.num_train),
                        cut(ds.test_x, config.num_test), cut(ds.test_y, config.num_test),
                        num_classes=ds.num_classes, name=ds.name)
  return ds


def make_model(config: RunConfig):
  """The Linen model of ``config``, with its dropout and dtype overrides."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from experiments import models  # pylint: disable=g-import-not-at-top

  overrides: dict[str, Any] = {"dtype": getattr(jnp, config.dtype)}
  fields = {f.name for f in dataclasses.fields(models.MODELS[config.model])}
  for name in ("dropout", "input_dropout"):
    value = getattr(config, name)
    if value is not None:
      if name not in fields:
        raise ConfigError(f"model {config.model} has no {name}; drop {_option(name)}.")
      overrides[name] = value
  return models.create_model(config.model, **overrides)


def steps_per_epoch(config: RunConfig, num_examples: int) -> int:
  """Outer steps per outer epoch (the loop drops the incomplete last mini-batch of a pass)."""
  return max(1, num_examples // config.batch_size)


def make_optimizer(config: RunConfig, num_examples: int):
  """The optax optimizer of ``config``; schedules count outer steps (optimizer updates)."""
  import optax  # pylint: disable=g-import-not-at-top
  import entropy_optax  # pylint: disable=g-import-not-at-top

  per_epoch = num_examples / config.batch_size
  boundaries: dict[int, float] = {}
  for epoch in config.lr_decay_epochs:
    step = max(1, round(epoch * per_epoch))
    boundaries[step] = boundaries.get(step, 1.0) * config.lr_decay
  lr = (optax.piecewise_constant_schedule(config.learning_rate, boundaries) if boundaries
        else config.learning_rate)
  if config.optimizer in ("sgd", "adam"):
    base = (optax.sgd(lr, config.momentum or None, config.nesterov) if config.optimizer == "sgd"
            else optax.adam(lr, config.b1, config.b2))
    return (optax.chain(optax.add_decayed_weights(config.weight_decay), base)
            if config.weight_decay else base)
  scopes = {"exponential": entropy_optax.exponential_scoping,
            "linear": entropy_optax.linear_scoping,
            "quadratic": entropy_optax.quadratic_scoping}
  gamma = (config.gamma0 if config.scoping == "none"
           else scopes[config.scoping](config.gamma0, config.gamma1))
  common = dict(num_langevin_steps=config.langevin_steps, gamma=gamma,
                langevin_lr=config.langevin_lr, noise=config.noise, alpha=config.alpha,
                langevin_momentum=config.langevin_momentum, weight_decay=config.weight_decay,
                scale_by_gamma=config.scale_by_gamma, key=config.seed)
  if config.optimizer == "entropy-sgd":
    return entropy_optax.entropy_sgd(lr, momentum=config.momentum, nesterov=config.nesterov,
                                     **common)
  return entropy_optax.entropy_adam(lr, b1=config.b1, b2=config.b2, **common)


def train_config(config: RunConfig, num_examples: int, progress: bool):
  """The ``experiments.training.TrainConfig`` of ``config``.

  Evaluations come every ``eval_every`` effective epochs (about 20 per run by default),
  rounded to whole jitted calls of at most ``steps_per_call`` outer steps.
  """
  from experiments import training  # pylint: disable=g-import-not-at-top

  per_epoch = steps_per_epoch(config, num_examples)
  num_steps = max(1, math.ceil(config.epochs * num_examples / config.batch_size))
  if config.eval_every:
    eval_steps = max(1, round(config.eval_every / config.langevin_steps * per_epoch))
  else:
    eval_steps = max(1, math.ceil(num_steps / 20))
  call = min(config.steps_per_call, eval_steps)
  eval_steps = max(1, round(eval_steps / call)) * call
  return training.TrainConfig(
      batch_size=config.batch_size, num_steps=num_steps, langevin_steps=config.langevin_steps,
      steps_per_call=call, eval_every=eval_steps,
      eval_batch_size=config.eval_batch_size,
      checkpoint_every=eval_steps * config.checkpoint_every, seed=config.seed,
      num_seeds=config.num_seeds, progress=progress)


# ---------------------------------------------------------------------------
# Running, results, plots.
# ---------------------------------------------------------------------------


def metadata(config: RunConfig) -> dict[str, Any]:
  """What ``training.train`` stores in config.json beside its own config."""
  return {"experiment": dataclasses.asdict(config)}


def summarize(config: RunConfig, records: Sequence[Mapping[str, Any]], *, dataset_name: str,
              num_params: int, num_train: int, num_test: int) -> dict[str, Any]:
  """The results of a finished run, from its metrics records (all of them, resumed or not).

  Errors are in %, on the test split (the paper's "validation" error is on the test set too).
  ``test_error_std`` is the sample standard deviation over seeds (0 for one seed).
  ``time_per_effective_epoch_s`` leaves out the first jitted call (compilation) when there
  are later ones.
  """
  seeds = sorted({r["seed"] for r in records})
  final = [max((r for r in records if r["seed"] == s), key=lambda r: r["step"]) for s in seeds]
  errors = [100 * r["val_error"] for r in final]
  best = [100 * min(r["val_error"] for r in records if r["seed"] == s and "val_error" in r)
          for s in seeds]
  timeline = sorted({(r["step"], r["wall_time"], r["effective_epochs"]) for r in records})
  steps, wall, eff = timeline[-1]
  if len(timeline) > 1:
    first = timeline[0]
    per_step = (wall - first[1]) / (steps - first[0])
  else:
    per_step = wall / steps
  per_effective_epoch = per_step * steps / eff
  return {
      "dataset": dataset_name, "model": config.model, "optimizer": config.optimizer,
      "num_params": num_params, "num_train": num_train, "num_test": num_test,
      "seeds": seeds, "test_error": errors, "test_error_mean": float(np.mean(errors)),
      "test_error_std": float(np.std(errors, ddof=1)) if len(errors) > 1 else 0.0,
      "best_test_error_mean": float(np.mean(best)),
      "final_train_loss": [r["train_loss"] for r in final],
      "epochs": final[0]["epoch"], "effective_epochs": eff, "outer_steps": steps,
      "langevin_steps": config.langevin_steps, "wall_time_s": wall,
      "time_per_step_s": per_step, "time_per_effective_epoch_s": per_effective_epoch,
      "paper": None if config.synthetic else PAPER.get(
          (config.dataset, config.model, config.optimizer)),
  }


def error_curves(records: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
  """Effective epochs (k,) and test error % (seeds, k) of the evaluated records."""
  evaluated = [r for r in records if "val_error" in r]
  seeds = sorted({r["seed"] for r in evaluated})
  x = np.array(sorted({r["effective_epochs"] for r in evaluated}))
  y = np.full((len(seeds), len(x)), np.nan)
  for r in evaluated:
    y[seeds.index(r["seed"]), np.searchsorted(x, r["effective_epochs"])] = 100 * r["val_error"]
  return x, y


def plot_error(panels: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
               path: str | os.PathLike, *, title: str | None = None) -> None:
  """Test error (%) against effective epochs, one panel per entry, one line per run.

  ``panels`` maps a panel title to ``{label: metrics records}``; each line is the mean over
  seeds, with the range of the seeds shaded (the paper's Figs. 4-5 plot the same axes).
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
  for ax, (panel, runs) in zip(axes[0], panels.items()):
    for label, records in runs.items():
      x, y = error_curves(records)
      if not len(x):
        continue
      line, = ax.plot(x, np.nanmean(y, axis=0), marker=".", label=label)
      if len(y) > 1:
        ax.fill_between(x, np.nanmin(y, axis=0), np.nanmax(y, axis=0), alpha=0.2,
                        color=line.get_color())
    ax.set(title=panel, xlabel="effective epochs", ylabel="test error (%)")
    ax.grid(alpha=0.3)
    ax.legend()
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def describe(config: RunConfig) -> str:
  return (f"{config.dataset}{' (synthetic)' if config.synthetic else ''} {config.model} "
          f"{config.optimizer}")


@dataclasses.dataclass
class Run:
  """A finished run.

  Attributes:
    config: its config.
    results: the contents of its ``results.json``.
    records: its metrics records.
    state: the final ``training.LoopState`` when trained in this process, else None (read the
      checkpoints with ``load_final_variables``).
    workdir: its directory.
  """

  config: RunConfig
  results: dict[str, Any]
  records: list[dict[str, Any]]
  state: Any
  workdir: pathlib.Path


def _read_records(workdir: pathlib.Path) -> list[dict[str, Any]]:
  path = workdir / METRICS_FILE
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_experiment(config: RunConfig, options: RunOptions, *,
                   explicit: Mapping[str, Any] = (),
                   log: Callable[[str], None] = print) -> Run:
  """Trains ``config`` in ``options.workdir`` (or resumes it) and writes its results.

  Args:
    config: the run (validated here).
    options: the run directory and data options.
    explicit: the config fields given on the command line: resuming a run started with other
      values of these is an error; the others are taken from the saved run.
    log: where to print progress lines.

  Returns:
    The finished ``Run``.
  """
  from experiments import training  # pylint: disable=g-import-not-at-top

  workdir = pathlib.Path(options.workdir)
  resuming = prepare_workdir(workdir, resume=options.resume, overwrite=options.overwrite)
  if resuming:
    config = saved_config(workdir, config, explicit) or config
    if (workdir / RESULTS_FILE).exists():
      log(f"{workdir}: finished already; its results:")
      return Run(config, read_json(workdir / RESULTS_FILE), _read_records(workdir), None,
                 workdir)
  validate(config)
  ds = load_data(config, options)
  model = make_model(config)
  tx = make_optimizer(config, len(ds.train_x))
  tcfg = train_config(config, len(ds.train_x), options.progress)
  log(f"{workdir}: {describe(config)}, {len(ds.train_x)} train / {len(ds.test_x)} test "
      f"examples, {config.epochs:g} epochs x L={config.langevin_steps} = "
      f"{config.effective_epochs:g} effective epochs, {tcfg.total_steps(len(ds.train_x))} "
      f"outer steps, {config.num_seeds} seed(s)")
  result = training.train(tcfg, model, tx, ds, workdir, resume=None if resuming else False,
                          metadata=metadata(config))
  records = _read_records(workdir)
  num_params = _count_params(result.state.params, config.num_seeds)
  results = summarize(config, records, dataset_name=ds.name, num_params=num_params,
                      num_train=len(ds.train_x), num_test=len(ds.test_x))
  write_json(workdir / RESULTS_FILE, results)
  plot_error({describe(config): {config.optimizer: records}}, workdir / PLOT_FILE)
  return Run(config, results, records, result.state, workdir)


def _count_params(params: Any, num_seeds: int) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  total = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(params))
  return total // num_seeds


def format_result(results: Mapping[str, Any]) -> str:
  """One line: test error mean +- std over seeds, effective epochs, wall time, speed."""
  n = len(results["seeds"])
  paper = f"; paper: {results['paper']}" if results.get("paper") else ""
  return (f"test error {results['test_error_mean']:.2f} ± {results['test_error_std']:.2f}% "
          f"({n} seed{'s' if n > 1 else ''}) after {results['effective_epochs']:g} effective "
          f"epochs, {results['wall_time_s']:.1f} s, "
          f"{results['time_per_effective_epoch_s']:.3g} s per effective epoch{paper}")


def load_final_variables(workdir: str | os.PathLike) -> dict[str, Any]:
  """The ``params`` and ``batch_stats`` (if any) of a run's last checkpoint, as numpy pytrees
  (a leading seed axis when the run trained several seeds)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from experiments import training  # pylint: disable=g-import-not-at-top

  directory = (pathlib.Path(workdir) / CHECKPOINT_DIR).absolute()
  with ocp.CheckpointManager(directory) as manager:
    step = manager.latest_step()
    if step is None:
      raise training.CheckpointError(
          f"{workdir} has no checkpoint to read the final parameters from; rerun it with "
          "--checkpoint-every > 0.")
    restored = manager.restore(step)
  restored = restored.get("default", restored)
  variables = {"params": restored["params"]}
  if restored.get("batch_stats") is not None:
    variables["batch_stats"] = restored["batch_stats"]
  return variables


def run_grid(configs: Mapping[str, RunConfig], options: RunOptions, *,
             log: Callable[[str], None] = print) -> dict[str, Run]:
  """Runs (or resumes) several configs, each in the subdirectory of ``options.workdir`` named
  by its key; ``grid.json`` lists them. With ``options.resume`` finished runs are kept and
  unfinished ones continue; a resumed run must have the config given here."""
  root = pathlib.Path(options.workdir)
  resuming = prepare_workdir(root, resume=options.resume, overwrite=options.overwrite)
  if not (root / GRID_FILE).exists():  # marks the directory as a run (see _RUN_MARKERS)
    write_json(root / GRID_FILE, {name: dataclasses.asdict(c) for name, c in configs.items()})
  runs = {}
  for name, config in configs.items():
    sub = dataclasses.replace(options, workdir=str(root / name), resume=resuming,
                              overwrite=False)
    # Every field counts as given explicitly: a saved run with other values is an error.
    runs[name] = run_experiment(config, sub, explicit=dataclasses.asdict(config), log=log)
    log(f"  {name}: {format_result(runs[name].results)}")
  return runs


def run_script(parser_fn: Callable[[], argparse.ArgumentParser], base: RunConfig,
               presets: Mapping[str, Mapping[str, Any]],
               argv: Sequence[str] | None) -> int:
  """The whole of a single-run script (cifar10, mnist): parse, run, print the result."""
  args = parser_fn().parse_args(argv)
  config = config_from_args(args, base, presets)
  options = options_from_args(args, default_workdir(config))
  run = run_experiment(config, options, explicit=explicit_fields(args))
  print(format_result(run.results))
  print(f"results: {run.workdir / RESULTS_FILE}; plot: {run.workdir / PLOT_FILE}")
  return 0
