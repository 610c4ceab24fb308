"""Data, model and optimizer of a ``RunConfig``, from three small registries.

Adding a data set, a model or an optimizer is one entry here:

* ``DATASETS[name] = DatasetEntry(load, models, sizes)``: ``load(config, data_dir, download)``
  returns an ``experiments.data.Dataset``; ``models`` lists the model names it takes (each a key
  of ``experiments.models.MODELS``); ``sizes`` the (train, test) sizes of ``--synthetic``.
* a model: a Linen module in ``experiments.models.MODELS``, called as
  ``model.apply(variables, x, train=bool)``; then list its name in its data set's entry.
* ``OPTIMIZERS[name] = OptimizerEntry(make, local_entropy)``: ``make(config, lr, key)`` returns
  the optax transformation, where ``lr`` is the learning-rate schedule (counting outer steps)
  and ``key`` the seed's PRNG key (the loop builds one optimizer per seed with its own key);
  ``local_entropy`` says whether it takes ``langevin_steps`` > 1 and a ``grad_fn``.

jax, optax and the data libraries are imported inside the functions: ``--help`` stays fast.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from experiments import baselines
from experiments import config as config_lib
from experiments import data as data_lib
from experiments.config import ConfigError, RunConfig


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
  """``heldout(config, data_dir)``: the (x, y) of a split evaluated once at the end of a run
  (a text's test split: the loop evaluates its validation split); ``sequence``: examples are
  segments of text streams (``experiments/bptt.py``), num_train/num_test count tokens."""

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
  from experiments import bptt  # pylint: disable=g-import-not-at-top

  del download  # a text is read from a file (or ships with CPython)
  return bptt.load_text(config, data_dir)


def _text_test(config: RunConfig, data_dir):
  from experiments import bptt  # pylint: disable=g-import-not-at-top

  return bptt.text_split(config, data_dir, "test")


DATASETS: dict[str, DatasetEntry] = {
  "cifar10": DatasetEntry(
    lambda c, d, dl: data_lib.load_cifar10(d, download=dl),
    ("allcnn_bn", "allcnn_bn_authors"),
    (50_000, 10_000),
  ),
  "mnist": DatasetEntry(
    lambda c, d, dl: data_lib.load_mnist(d, download=dl), ("mnistfc", "lenet_bn"), (60_000, 10_000)
  ),
  "mnist1d": DatasetEntry(_mnist1d, ("mlp1d", "cnn1d"), (4000, 1000)),
  # Texts (experiments/text_data.py): PTB from --data-dir, characters from --text-file.
  "ptb": DatasetEntry(
    _text, ("ptb_large", "ptb_medium", "ptb_small"), (0, 0), _text_test, sequence=True
  ),
  "chars": DatasetEntry(_text, ("char_lstm", "small_char_lstm"), (0, 0), _text_test, sequence=True),
}


def _plain(config: RunConfig, base):
  import optax  # pylint: disable=g-import-not-at-top

  if config.weight_decay:
    return optax.chain(optax.add_decayed_weights(config.weight_decay), base)
  return base


def _gamma(config: RunConfig):
  import entropy_optax  # pylint: disable=g-import-not-at-top

  if config.scoping == "none":
    return config.gamma0
  scope = getattr(entropy_optax, f"{config.scoping}_scoping")
  return scope(config.gamma0, config.gamma1)


def _langevin(config: RunConfig, key) -> dict[str, Any]:
  return dict(
    num_langevin_steps=config.langevin_steps,
    gamma=_gamma(config),
    langevin_lr=config.langevin_lr,
    noise=config.noise,
    alpha=config.alpha,
    langevin_momentum=config.langevin_momentum,
    weight_decay=config.weight_decay,
    scale_by_gamma=config.scale_by_gamma,
    key=key,
  )


def _sgd(config, lr, key):
  import optax  # pylint: disable=g-import-not-at-top

  del key
  return _plain(config, optax.sgd(lr, config.momentum or None, config.nesterov))


def _adam(config, lr, key):
  import optax  # pylint: disable=g-import-not-at-top

  del key
  return _plain(config, optax.adam(lr, config.b1, config.b2))


def _entropy_sgd(config, lr, key):
  import entropy_optax  # pylint: disable=g-import-not-at-top

  return entropy_optax.entropy_sgd(
    lr, momentum=config.momentum, nesterov=config.nesterov, **_langevin(config, key)
  )


def _entropy_sgd_lua(config, lr, key):
  """The authors' Lua code, which ran the paper: ``authors_entropy_sgd(code="lua")``.

  Its outer step is lr (x - mu) with no momentum and no weight decay; --langevin-momentum is the
  Nesterov momentum of the Langevin loop (0.9), --weight-decay the code's --L2 (inside the loop,
  after the momentum), --noise the code's epsilon (adds sqrt(2 langevin_lr) noise), --gamma0 and
  --gamma1 its --gamma and --scoping (t counted from 1); alpha is the code's 0.25 and --momentum
  is unused.
  """
  import entropy_optax  # pylint: disable=g-import-not-at-top

  if config.scoping not in ("exponential", "none") or config.scale_by_gamma:
    raise ConfigError(
      "--optimizer entropy-sgd-lua takes --scoping exponential or none and no "
      "--scale-by-gamma: the Lua code scopes gamma (1 + gamma1)^t and steps "
      "by x - mu."
    )
  if not config.nesterov or not config.langevin_momentum:
    raise ConfigError(
      "--optimizer entropy-sgd-lua needs --nesterov and --langevin-momentum > 0, "
      "as the Lua code runs (see entropy_optax.authors_entropy_sgd)."
    )
  return entropy_optax.authors_entropy_sgd(
    lr,
    code="lua",
    num_langevin_steps=config.langevin_steps,
    gamma=config.gamma0,
    scoping=config.gamma1 if config.scoping == "exponential" else 0.0,
    noise=config.noise,
    langevin_lr=config.langevin_lr,
    momentum=config.langevin_momentum,
    nesterov=True,
    weight_decay=config.weight_decay,
    key=key,
  )


def _entropy_adam(config, lr, key):
  import entropy_optax  # pylint: disable=g-import-not-at-top

  return entropy_optax.entropy_adam(lr, b1=config.b1, b2=config.b2, **_langevin(config, key))


@dataclasses.dataclass(frozen=True)
class OptimizerEntry:
  make: Callable[[RunConfig, Any, Any], Any]
  local_entropy: bool


OPTIMIZERS: dict[str, OptimizerEntry] = {
  "sgd": OptimizerEntry(_sgd, False),
  "adam": OptimizerEntry(_adam, False),
  "entropy-sgd": OptimizerEntry(_entropy_sgd, True),
  "entropy-adam": OptimizerEntry(_entropy_adam, True),
  "entropy-sgd-lua": OptimizerEntry(_entropy_sgd_lua, True),
  "sgld": OptimizerEntry(baselines.sgld, False),
  # Not local entropy, but like it: L gradient evaluations (fresh mini-batches) per update.
  "smoothing-sgd": OptimizerEntry(baselines.smoothing_sgd, True),
}


def make_task(config: RunConfig, model) -> Any:
  """The loop's ``steps.Task`` of ``config``: its mini-batch sampling and the BatchNorm
  re-estimation before every evaluation (``--sampling``, ``--bn-reestimate``)."""
  from experiments import batchnorm, steps  # pylint: disable=g-import-not-at-top

  if DATASETS[config.dataset].sequence:  # stateful truncated BPTT
    from experiments import bptt  # pylint: disable=g-import-not-at-top

    return bptt.make_task(config, model)
  return steps.Task(
    batch_indices=(
      steps.replacement_batch_indices
      if config.sampling == "replacement"
      else steps.shuffled_batch_indices
    ),
    before_eval=batchnorm.BatchNormReestimation(model) if config.bn_reestimate else None,
    clip_norm=config.clip_norm,
  )


def validate(config: RunConfig, prefix: str = "") -> RunConfig:
  """``experiments.config.validate`` against these registries."""
  return config_lib.validate(config, datasets=DATASETS, optimizers=OPTIMIZERS, prefix=prefix)


def is_local_entropy(config: RunConfig) -> bool:
  return OPTIMIZERS[config.optimizer].local_entropy


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Outer steps of one outer epoch: the full mini-batches of one pass over the data."""
  return max(1, num_examples // batch_size)


_DATA_CACHE: dict[tuple[Any, ...], data_lib.Dataset] = {}


def load_data(
  config: RunConfig, data_dir: str | None = None, download: bool = True
) -> data_lib.Dataset:
  """The data of ``config``: real or synthetic, cut to num_train / num_test.

  The last data set is cached in the process: the runs of a grid share their data.
  """
  entry = DATASETS[config.dataset]
  key = (
    config.dataset,
    config.synthetic,
    config.num_train,
    config.num_test,
    config.data_seed,
    data_dir,
  )
  if entry.sequence:  # the examples are cut from the text for the batch and BPTT length
    if config.synthetic:
      raise ConfigError(
        f"--synthetic has no text data set: drop it for --dataset {config.dataset}."
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
    _DATA_CACHE[key] = data_lib.Dataset(
      cut(ds.train_x, config.num_train),
      cut(ds.train_y, config.num_train),
      cut(ds.test_x, config.num_test),
      cut(ds.test_y, config.num_test),
      num_classes=ds.num_classes,
      name=ds.name,
    )
  ds = _DATA_CACHE[key]
  if len(ds.train_x) < config.batch_size:
    raise ConfigError(
      f"--batch-size {config.batch_size} exceeds the {len(ds.train_x)} "
      "training examples: lower it or use more data."
    )
  return ds


def make_model(config: RunConfig, num_classes: int | None = None):
  """The Linen model of ``config``, with its dropout and dtype overrides; a language model
  (``experiments.recurrent_models.MODELS``) needs ``num_classes``, its vocabulary size."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from experiments import models, recurrent_models  # pylint: disable=g-import-not-at-top

  overrides: dict[str, Any] = {"dtype": getattr(jnp, config.dtype)}
  if config.model in recurrent_models.MODELS:
    if num_classes is None:
      raise ValueError(f"model {config.model} needs num_classes (its vocabulary size).")
    if config.input_dropout is not None:
      raise ConfigError(f"model {config.model} has no input_dropout; drop --input-dropout.")
    if config.dropout is not None:
      overrides["dropout_rate"] = config.dropout
    return recurrent_models.MODELS[config.model](num_classes, **overrides)
  fields = {f.name for f in dataclasses.fields(models.MODELS[config.model])}
  for name in ("dropout", "input_dropout"):
    value = getattr(config, name)
    if value is not None:
      if name not in fields:
        raise ConfigError(f"model {config.model} has no {name}; drop {config_lib.option(name)}.")
      overrides[name] = value
  return models.create_model(config.model, **overrides)


def learning_rate(config: RunConfig, num_examples: int):
  """The learning rate: a constant, or piecewise constant in outer steps."""
  import optax  # pylint: disable=g-import-not-at-top

  per_epoch = steps_per_epoch(num_examples, config.batch_size)
  boundaries: dict[int, float] = {}
  for epoch in config.lr_decay_outer_epochs:
    step = max(1, round(epoch * per_epoch))
    boundaries[step] = boundaries.get(step, 1.0) * config.lr_decay
  if not boundaries:
    return config.learning_rate
  return optax.piecewise_constant_schedule(config.learning_rate, boundaries)


def optimizer_factory(config: RunConfig, num_examples: int) -> Callable[[Any], Any]:
  """``make(key)``: the optax optimizer of ``config`` with the Langevin noise key ``key``.

  The factory is cached per (config, num_examples) so that equal runs share compilations.
  """
  return _factory(config, num_examples)


@dataclasses.dataclass(frozen=True)
class _Factory:
  config: RunConfig
  num_examples: int

  def __call__(self, key):
    lr = learning_rate(self.config, self.num_examples)
    return OPTIMIZERS[self.config.optimizer].make(self.config, lr, key)


def _factory(config: RunConfig, num_examples: int) -> _Factory:
  return _Factory(config, num_examples)
