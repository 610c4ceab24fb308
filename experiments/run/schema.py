"""The schema of a training run (``RunConfig``), its validation, and presets (``Preset``).

``RunConfig`` is everything that fixes a run's trajectory: data, model, optimizer and its
schedule, budget, seeds. It is plain data: stored with the results (``config.json``), reused
by a resumed run, and turned into command-line options by ``experiments.launch.cli`` (each field's
docstring is its ``--help``).

Units are in the names, one definition each:

* ``steps_per_epoch = num_train // batch_size``: the mini-batches of one shuffled pass over
  the training set (the loop drops the incomplete last one). An *outer epoch* is that many
  outer steps (optimizer updates).
* An outer step of a local-entropy optimizer costs ``langevin_steps`` = L gradient evaluations
  on L fresh mini-batches, so it consumes L mini-batches: *effective epochs* = L x outer epochs.
  Optimizers are compared at equal effective epochs (the x axis of every plot and table).
* ``outer_epochs`` and ``lr_decay_outer_epochs`` count outer epochs (the paper's recipes say
  "Entropy-SGD for 10 epochs"); ``eval_every_effective_epochs`` counts effective epochs;
  ``checkpoint_every_evals`` counts evaluations. ``schedule`` turns these into the loop's counts
  in outer steps (``Schedule``), the one place that does.

The same ``RunConfig`` travels from the command line to the jitted step: the loop
(``experiments.trainer.loop``) reads its fields, the registries build the data, model and
optimizer from it (``experiments.launch.components``, ``experiments.optimizers.registry``), and
``config.json`` stores it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal


class ConfigError(ValueError):
  """A configuration or command line that cannot run; the message says what to change."""


def option(name: str) -> str:
  """The command-line option of field ``name``: ``--learning-rate`` for ``learning_rate``."""
  return "--" + name.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """A training run: what its results depend on (units: see experiments/run/schema.py)."""

  dataset: str = "mnist1d"
  """data set (experiments/launch/components.py: DATASETS)"""
  model: str = "mlp1d"
  """model (experiments/launch/components.py: DATASETS[dataset].models)"""
  optimizer: str = "sgd"
  """optimizer (experiments/optimizers/registry.py: OPTIMIZERS)"""
  outer_epochs: float = 10.0
  """training length in outer epochs (num_train // batch_size outer steps each); a local-entropy
  optimizer costs langevin_steps x outer_epochs effective epochs"""
  batch_size: int = 128
  """examples per mini-batch"""
  learning_rate: float = 0.1
  """(outer) learning rate"""
  lr_decay: float = 1.0
  """factor multiplying the learning rate at each of lr_decay_outer_epochs"""
  lr_decay_outer_epochs: tuple[float, ...] = ()
  """outer epochs at which the learning rate is multiplied by lr_decay (increasing)"""
  momentum: float = 0.9
  """momentum of SGD and of Entropy-SGD's outer loop"""
  nesterov: bool = True
  """Nesterov momentum (SGD, Entropy-SGD)"""
  b1: float = 0.9
  """Adam's and Entropy-Adam's b1"""
  b2: float = 0.999
  """Adam's and Entropy-Adam's b2"""
  weight_decay: float = 0.0
  """L2 coefficient added to the gradient (local-entropy optimizers add it inside the Langevin
  loop too, as the authors' PyTorch port; entropy-sgd-lua: the Lua code's --L2, inside only)"""
  langevin_steps: int = 1
  """L: Langevin steps = gradient evaluations (fresh mini-batches) per update; 1 for sgd/adam"""
  langevin_lr: float = 0.1
  """Langevin step size eta'"""
  noise: float = 1e-4
  """thermal noise epsilon: each Langevin step adds sqrt(langevin_lr) * noise * N(0, I)
  (entropy-sgd-lua: the Lua code's epsilon, sqrt(2 langevin_lr) * noise * N(0, I))"""
  alpha: float = 0.75
  """weight of the newest Langevin sample in the running mean mu"""
  gamma0: float = 0.03
  """scope gamma at the first update"""
  gamma1: float = 1e-3
  """scoping rate: gamma = gamma0 (1 + gamma1)^t for exponential scoping (auto: the target
  ratio's rate)"""
  scoping: Literal["exponential", "linear", "quadratic", "none", "auto"] = "exponential"
  """how gamma grows with the update count t; auto: gamma set after every update so that
  norm(gamma (x - mu)) / norm(grad f) follows min(target_ratio (1 + gamma1)^t, max_target_ratio)
  (entropy_optax.auto_scoping; gamma0 is then only the first update's gamma)"""
  target_ratio: float = 0.02
  """scoping auto: the target ratio norm(gamma (x - mu)) / norm(grad f) at the first update"""
  max_target_ratio: float = 0.5
  """scoping auto: the largest target ratio (ratios lie below 1 where the loss is convex)"""
  langevin_momentum: float = 0.0
  """(Nesterov) momentum inside the Langevin loop, zeroed every update (authors' codes: 0.9)"""
  replicas: int = 1
  """replicas per seed, vmapped on one device, each its own data order and noise (parle:
  coupled elastically; sgd: averaged every step, i.e. data-parallel SGD on that many workers);
  the replicas' average is evaluated, with BatchNorm statistics re-estimated at it"""
  rho: float = 1.0
  """parle: coupling rho of each replica to the replicas' average, scoped like gamma (--scoping,
  --gamma1); inf: the hard coupling (replicas averaged after every step)"""
  gamma_max: float = 0.0
  """parle: cap on the scoped gamma (the authors' code: 1; 0: none)"""
  rho_max: float = 0.0
  """parle: cap on the scoped rho (the authors' code: 10; 0: none)"""
  center: Literal["params", "langevin_mean"] = "params"
  """parle: what the replicas are pulled towards: the average of the replicas (params: the
  paper's text) or of their Langevin means (langevin_mean: both authors' codes)"""
  scale_by_gamma: bool = False
  """outer gradient gamma (x - mu) (Alg. 1 line 7) instead of x - mu (the paper's practice)"""
  sampling: Literal["shuffle", "replacement"] = "shuffle"
  """mini-batches: shuffle (each data pass a fresh permutation) or replacement (each mini-batch
  drawn with replacement, as the authors' codes)"""
  bn_reestimate: bool = False
  """before every evaluation, re-estimate the BatchNorm running statistics at the weights on the
  training set (batches of 1024, dropout off), as the authors' codes
  (experiments/trainer/batchnorm.py)"""
  dropout: float | None = None
  """dropout rate of the hidden layers (None: the model's)"""
  input_dropout: float | None = None
  """dropout rate of the input (None: the model's)"""
  dtype: Literal["float32", "bfloat16"] = "float32"
  """compute dtype; parameters stay float32"""
  synthetic: bool = False
  """random data of the data set's shape (speed measurements)"""
  num_train: int = 0
  """use the first N training examples (0: all)"""
  num_test: int = 0
  """use the first N test examples (0: all)"""
  validation_examples: int = 0
  """hold out the last N of the training examples (after --num-train's cut) as a validation
  split: never trained on, evaluated at the end of the run (results.json: validation_error), for
  what is chosen during training (a learning rate, a schedule) while the test set stays unseen;
  0: none (image data sets only: a text has its own validation split)"""
  data_seed: int = 42
  """seed of generated data (MNIST-1D, synthetic)"""
  seed: int = 0
  """seed of the initialisation, dropout, data order and Langevin noise"""
  num_seeds: int = 1
  """train seeds seed .. seed + num_seeds - 1 at once (vmapped in one jit)"""
  eval_every_effective_epochs: float = 0.0
  """evaluate on the test set every this many effective epochs (0: about 20 times a run)"""
  checkpoint_every_evals: int = 1
  """save a checkpoint at every this many evaluations and at the end (0: none)"""
  steps_per_call: int = 100
  """at most this many outer steps per jitted call (one host sync per call)"""
  step_runner: Literal["auto", "scan", "dispatch"] = "auto"
  """how a call runs its steps: scan (one lax.scan), dispatch (one jitted step each, no host
  sync), auto (dispatch for conv nets on CPU, where XLA runs convolutions slowly in a scan)"""
  eval_batch_size: int = 1000
  """examples per evaluation batch (text data sets: parallel evaluation streams)"""
  sgld_decay_power: float = 0.55
  """sgld: step size learning_rate / (1 + t)^sgld_decay_power, t the update count (App. C.1;
  --lr-decay and --lr-decay-outer-epochs are not used)"""
  sgld_temperature: float = 0.0
  """sgld: temperature T; each step adds sqrt(2 lr_t T) N(0, I) to the weights (1/num_train:
  the posterior of the mean loss; 0: no noise)"""
  smoothing_sigma: float = 0.01
  """smoothing-sgd: width sigma of the L - 1 Gaussian perturbations x + sigma eps per update"""
  clip_norm: float = 0.0
  """clip every gradient evaluation (the one at x and each Langevin step's) to this global
  norm; 0: no clipping (the recurrent recipes: 5 or 10)"""
  bptt_steps: int = 35
  """text data sets: tokens per segment of truncated backpropagation through time"""
  text_file: str | None = None
  """chars data set: a UTF-8 text file, split 80/10/10 in order (None: the offline
  pydoc_data.topics that ships with CPython)"""

  @property
  def effective_epochs(self) -> float:
    return self.langevin_steps * self.outer_epochs

  def replace(self, **changes: Any) -> RunConfig:
    return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class Preset:
  """A named recipe of an experiment.

  Attributes:
    description: one line for ``--help``.
    config: the run it trains.
    paper: the paper's result it targets, per model (``{"lenet_bn": "0.50 ± 0.01 (80)"}``:
      test error % ± std, effective epochs in brackets); shown beside the run's result.
  """

  description: str
  config: RunConfig
  paper: dict[str, str] = dataclasses.field(default_factory=dict)


def field_names() -> tuple[str, ...]:
  return tuple(f.name for f in dataclasses.fields(RunConfig))


def from_json(values: dict[str, Any]) -> RunConfig:
  """The ``RunConfig`` of ``dataclasses.asdict`` output read back from JSON (a field a run
  saved before it existed takes its default).

  A null in a field typed ``float`` was infinite (``--rho inf``): strict JSON has no infinity,
  and the run directory's writer writes it as null.
  """
  types = {f.name: f.type for f in dataclasses.fields(RunConfig)}
  values = {
    k: tuple(v)
    if isinstance(v, list)
    else (math.inf if v is None and types.get(k) in ("float", float) else v)
    for k, v in values.items()
  }
  return RunConfig(**values)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A run's counts in outer steps, all worked out from its ``RunConfig`` and the size of its
  training set by ``schedule``, the one place that converts epochs to steps.

  Attributes:
    steps_per_epoch: outer steps of one outer epoch (full mini-batches of one data pass).
    num_steps: outer steps of the run.
    steps_per_call: outer steps per jitted call (one host sync each).
    eval_every_steps: evaluate every this many outer steps (a multiple of steps_per_call).
    checkpoint_every_steps: checkpoint every this many outer steps (0: never).
  """

  steps_per_epoch: int
  num_steps: int
  steps_per_call: int
  eval_every_steps: int
  checkpoint_every_steps: int


def schedule(config: RunConfig, num_examples: int) -> Schedule:
  """The ``Schedule`` of ``config`` on ``num_examples`` training examples.

  Evaluations come every ``eval_every_effective_epochs`` (about 20 a run when 0), rounded to
  whole calls of at most ``steps_per_call`` outer steps; checkpoints every
  ``checkpoint_every_evals`` evaluations.

  Raises:
    ConfigError: fewer training examples than ``batch_size``.
  """
  if num_examples < config.batch_size:
    raise ConfigError(
      f"--batch-size {config.batch_size} exceeds the {num_examples} training examples: lower "
      "it or use more data."
    )
  per_epoch = num_examples // config.batch_size
  num_steps = max(1, math.ceil(config.outer_epochs * per_epoch))
  if config.eval_every_effective_epochs:
    eval_steps = max(
      1, round(config.eval_every_effective_epochs / config.langevin_steps * per_epoch)
    )
  else:
    eval_steps = max(1, math.ceil(num_steps / 20))
  call = min(config.steps_per_call, eval_steps)
  eval_steps = max(1, round(eval_steps / call)) * call
  return Schedule(
    steps_per_epoch=per_epoch,
    num_steps=num_steps,
    steps_per_call=call,
    eval_every_steps=eval_steps,
    checkpoint_every_steps=eval_steps * config.checkpoint_every_evals,
  )
