"""Data, model and task of a ``RunConfig``, from two small registries (the optimizers':
``experiments.optimizers.registry.OPTIMIZERS``), and ``validate``: a config checked against
itself and the registries.

Adding a data set or a model is one entry here:

* ``DATASETS[name] = DatasetEntry(load, models, sizes)``: ``load(config, data_dir, download)``
  returns an ``experiments.data.datasets.Dataset``; ``models`` lists the model names it takes
  (each a key
  of ``experiments.models.feedforward.MODELS``); ``sizes`` the (train, test) sizes of
  ``--synthetic``.
* a model: a Linen module in ``experiments.models.feedforward.MODELS``, called as
  ``model.apply(variables, x, train=bool)``; then list its name in its data set's entry.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from experiments.data import datasets as data_lib
from experiments.data import mnist_format
from experiments.models import feedforward as models
from experiments.models import recurrent
from experiments.optimizers import registry as optimizers_lib
from experiments.run import schema as config_lib
from experiments.run.schema import ConfigError, RunConfig
from experiments.trainer import batchnorm, bptt, tasks


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
  """``heldout(config, data_dir)``: the (x, y) of a split evaluated once at the end of a run
  (a text's test split: the loop evaluates its validation split); ``sequence``: examples are
  segments of text streams (``experiments/trainer/bptt.py``), num_train/num_test count tokens."""

  load: Callable[[RunConfig, str | None, bool], data_lib.Dataset]
  models: tuple[str, ...]
  sizes: tuple[int, int]
  heldout: Callable[[RunConfig, str | None], tuple[Any, Any]] | None = None
  sequence: bool = False


def _mnist1d(config: RunConfig, data_dir, download) -> data_lib.Dataset:
  del data_dir, download  # generated offline
  return data_lib.load_mnist1d(
    config.num_train or 4000, config.num_test or 1000, seed=config.data_seed
  )


def _text(config: RunConfig, data_dir, download) -> data_lib.Dataset:

  del download  # a text is read from a file (or ships with CPython)
  return bptt.load_text(config, data_dir)


def _text_test(config: RunConfig, data_dir):

  return bptt.text_split(config, data_dir, "test")


DATASETS: dict[str, DatasetEntry] = {
  "cifar10": DatasetEntry(
    lambda c, d, dl: data_lib.load_cifar10(d, download=dl),
    ("allcnn_bn", "allcnn_bn_authors"),
    (50_000, 10_000),
  ),
  # From a directory of IDX files (--data-dir), a system package's, or tfds.
  "mnist": DatasetEntry(
    lambda c, d, dl: mnist_format.load_mnist(d, download=dl),
    ("mnistfc", "lenet_bn"),
    (60_000, 10_000),
  ),
  "fashion_mnist": DatasetEntry(
    lambda c, d, dl: mnist_format.load_fashion_mnist(d, download=dl),
    ("mnistfc", "lenet_bn"),
    (60_000, 10_000),
  ),
  "mnist1d": DatasetEntry(_mnist1d, ("mlp1d", "cnn1d"), (4000, 1000)),
  # Texts (experiments/data/text.py): PTB from --data-dir, characters from --text-file.
  "ptb": DatasetEntry(
    _text, ("ptb_large", "ptb_medium", "ptb_small"), (0, 0), _text_test, sequence=True
  ),
  "chars": DatasetEntry(_text, ("char_lstm", "small_char_lstm"), (0, 0), _text_test, sequence=True),
}


def make_task(config: RunConfig, model) -> Any:
  """The loop's ``tasks.Task`` of ``config``: its mini-batch sampling and the BatchNorm
  re-estimation before every evaluation (``--sampling``, ``--bn-reestimate``)."""

  if DATASETS[config.dataset].sequence:  # stateful truncated BPTT
    return bptt.make_task(config, model)
  return tasks.Task(
    batch_indices=(
      tasks.replacement_batch_indices
      if config.sampling == "replacement"
      else tasks.shuffled_batch_indices
    ),
    before_eval=(
      batchnorm.BatchNormReestimation(model)
      if config.bn_reestimate or config.replicas > 1
      else None
    ),
    clip_norm=config.clip_norm,
  )


# The fields typed Literal[...] and their values.
_CHOICES = {
  name: typing.get_args(hint)
  for name, hint in typing.get_type_hints(RunConfig).items()
  if typing.get_origin(hint) is typing.Literal
}


def validate(config: RunConfig, prefix: str = "") -> RunConfig:
  """Checks ``config`` against itself and the registries; raises ``ConfigError`` naming the
  option to fix.

  Args:
    config: the run.
    prefix: the options' prefix in messages (``entropy-sgd.`` for a job's recipe).
  """
  datasets, optimizers = DATASETS, optimizers_lib.OPTIMIZERS

  def fail(name: str, what: str):
    raise ConfigError(
      f"--{prefix}{config_lib.option(name)[2:]} must be {what}, got {getattr(config, name)!r}."
    )

  def need(ok: bool, name: str, what: str):
    if not ok:
      fail(name, what)

  need(config.dataset in datasets, "dataset", f"one of {', '.join(datasets)}")
  models = datasets[config.dataset].models
  need(config.model in models, "model", f"one of {', '.join(models)} for {config.dataset}")
  need(config.optimizer in optimizers, "optimizer", f"one of {', '.join(optimizers)}")
  for name, choices in _CHOICES.items():  # tyro checks these on the command line only
    need(getattr(config, name) in choices, name, f"one of {', '.join(choices)}")
  for name in ("outer_epochs", "learning_rate", "langevin_lr", "gamma0", "lr_decay"):
    need(math.isfinite(getattr(config, name)) and getattr(config, name) > 0, name, "> 0")
  for name in (
    "batch_size",
    "langevin_steps",
    "num_seeds",
    "replicas",
    "steps_per_call",
    "eval_batch_size",
    "bptt_steps",
  ):
    need(getattr(config, name) >= 1, name, ">= 1")
  for name in ("num_train", "num_test", "validation_examples", "checkpoint_every_evals"):
    need(getattr(config, name) >= 0, name, ">= 0")
  for name in (
    "weight_decay",
    "noise",
    "gamma1",
    "eval_every_effective_epochs",
    "sgld_decay_power",
    "sgld_temperature",
    "smoothing_sigma",
    "clip_norm",
    "gamma_max",
    "rho_max",
  ):
    need(math.isfinite(getattr(config, name)) and getattr(config, name) >= 0, name, ">= 0")
  need(config.rho >= 0, "rho", ">= 0 (inf: the hard coupling)")
  for name in ("momentum", "langevin_momentum", "b1", "b2"):
    need(0 <= getattr(config, name) < 1, name, "in [0, 1)")
  need(0 < config.alpha <= 1, "alpha", "in (0, 1]")
  need(0 < config.max_target_ratio < 1, "max_target_ratio", "in (0, 1)")
  need(
    0 < config.target_ratio <= config.max_target_ratio,
    "target_ratio",
    f"in (0, max_target_ratio = {config.max_target_ratio}]",
  )
  for name in ("dropout", "input_dropout"):
    value = getattr(config, name)
    need(value is None or 0 <= value < 1, name, "in [0, 1) or None")
  epochs = config.lr_decay_outer_epochs
  need(
    all(e > 0 for e in epochs) and list(epochs) == sorted(set(epochs)),
    "lr_decay_outer_epochs",
    "increasing positive outer epochs",
  )
  if not optimizers[config.optimizer].takes_grad_fn and config.langevin_steps != 1:
    takes = ", ".join(name for name, entry in optimizers.items() if entry.takes_grad_fn)
    raise ConfigError(
      f"--{prefix}langevin-steps {config.langevin_steps} needs an optimizer that makes one "
      f"update per L mini-batches ({takes}); --{prefix}optimizer {config.optimizer} takes "
      f"--{prefix}langevin-steps 1."
    )
  if config.replicas > 1 and not optimizers[config.optimizer].takes_replicas:
    takes = ", ".join(name for name, entry in optimizers.items() if entry.takes_replicas)
    raise ConfigError(
      f"--{prefix}replicas {config.replicas} needs an optimizer that couples replicas "
      f"({takes}); --{prefix}optimizer {config.optimizer} takes --{prefix}replicas 1."
    )
  return config


_DATA_CACHE: dict[tuple[Any, ...], data_lib.Dataset] = {}


def load_data(
  config: RunConfig, data_dir: str | None = None, download: bool = True
) -> data_lib.Dataset:
  """The data of ``config``: real or synthetic, cut to num_train / num_test, the last
  validation_examples of the training examples held out as ``val_x``, ``val_y``.

  The last data set is cached in the process: the runs of a grid share their data.
  """
  entry = DATASETS[config.dataset]
  key = (
    config.dataset,
    config.synthetic,
    config.num_train,
    config.num_test,
    config.validation_examples,
    config.data_seed,
    data_dir,
  )
  if entry.sequence:  # the examples are cut from the text for the batch and BPTT length
    if config.synthetic:
      raise ConfigError(
        f"--synthetic has no text data set: drop it for --dataset {config.dataset}."
      )
    if config.validation_examples:
      raise ConfigError(
        f"--validation-examples: a text has its own validation split; drop it for --dataset "
        f"{config.dataset}."
      )
    key += (config.text_file, config.batch_size, config.bptt_steps, config.eval_batch_size)
  if key not in _DATA_CACHE:
    _DATA_CACHE.clear()
    if config.synthetic:
      ds = data_lib.synthetic_like(
        config.dataset,
        config.num_train or entry.sizes[0],
        config.num_test or entry.sizes[1],
        seed=config.data_seed,
      )
    else:
      ds = entry.load(config, data_dir, download)
    cut = lambda a, n: a[:n] if n and not entry.sequence else a  # a text is cut in tokens
    train_x, train_y = cut(ds.train_x, config.num_train), cut(ds.train_y, config.num_train)
    held = config.validation_examples
    if held and held >= len(train_x):
      raise ConfigError(
        f"--validation-examples {held} leaves no training example of {len(train_x)}: lower it."
      )
    _DATA_CACHE[key] = data_lib.Dataset(
      train_x[: len(train_x) - held],
      train_y[: len(train_y) - held],
      cut(ds.test_x, config.num_test),
      cut(ds.test_y, config.num_test),
      num_classes=ds.num_classes,
      name=ds.name,
      val_x=train_x[len(train_x) - held :] if held else None,
      val_y=train_y[len(train_y) - held :] if held else None,
    )
  return _DATA_CACHE[key]


def make_model(config: RunConfig, num_classes: int | None = None):
  """The Linen model of ``config``, with its dropout and dtype overrides; a language model
  (``experiments.models.recurrent.MODELS``) needs ``num_classes``, its vocabulary size."""

  overrides: dict[str, Any] = {"dtype": getattr(jnp, config.dtype)}
  if config.model in recurrent.MODELS:
    if num_classes is None:
      raise ValueError(f"model {config.model} needs num_classes (its vocabulary size).")
    if config.input_dropout is not None:
      raise ConfigError(f"model {config.model} has no input_dropout; drop --input-dropout.")
    if config.dropout is not None:
      overrides["dropout_rate"] = config.dropout
    return recurrent.MODELS[config.model](num_classes, **overrides)
  fields = {f.name for f in dataclasses.fields(models.MODELS[config.model])}
  for name in ("dropout", "input_dropout"):
    value = getattr(config, name)
    if value is not None:
      if name not in fields:
        raise ConfigError(f"model {config.model} has no {name}; drop {config_lib.option(name)}.")
      overrides[name] = value
  return models.create_model(config.model, **overrides)
