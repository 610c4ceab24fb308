"""How flat are the minima? Hessian spectra after SGD/Adam and after Entropy-SGD (Sec. 5.1).

    python -m experiments.flatness mnist1d                  # MNIST-1D CNN, Adam vs Entropy-SGD
    python -m experiments.flatness mnist1d --models mlp1d   # 15k weights: exact, slower
    python -m experiments.flatness mnist --method lanczos
    python -m experiments.flatness cifar10 --method fisher
    python -m experiments.flatness charlstm                 # Sec. 5.1's small char-LSTM

Trains one run per recipe (MNIST-1D: the main job's, at --effective-epochs; MNIST and
CIFAR-10: the presets of experiments/configs), then characterises the training loss at each
final point, in evaluation mode (BatchNorm running statistics, no dropout), on the first
--hessian-examples training examples:

* exact: every eigenvalue of the dense Hessian (the paper's method for its ~50k-weight nets;
  up to --max-exact-params weights: the MNIST-1D CNN has 5k, the MLP 15k);
* lanczos: the extreme eigenvalues by Lanczos and the spectral density by stochastic Lanczos
  quadrature (any size); the fractions of small eigenvalues are then SLQ estimates;
* fisher: the diagonal of the per-example empirical Fisher at the final point;
* adam-fisher: the paper's proxy for All-CNN-BN, Adam's bias-corrected second moment of the
  minibatch gradients along the trajectory (adam and entropy-adam runs only).

It prints the paper's statistics side by side (fraction of |lambda| below 1e-4, 1e-3, 1e-2,
of negative eigenvalues, the extremes), and saves flatness.json, flatness.md, the values (.npy)
and spectrum.png under --workdir (default runs/flatness-<dataset>-<model>).
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import tyro

from experiments import build, cli, grid, launch, reporting, rundir
from experiments.config import ConfigError
from experiments.configs import EXPERIMENTS

THRESHOLDS = (1e-4, 1e-3, 1e-2)
PROG = "python -m experiments.flatness"


@dataclasses.dataclass(frozen=True)
class FlatnessJob(grid.GridJob):
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


class EvalLoss:
  """``loss(params, (x, y))``: mean cross entropy of ``model`` in evaluation mode (a language
  model: per token, every segment from the zero state, as the paper's independent lines).

  Two of them are equal when their models are and neither has BatchNorm statistics: the
  ``entropy_optax.flatness`` functions take the loss as a static argument of their jitted
  code, so the runs of one model share one compilation.
  """

  def __init__(self, model, batch_stats=None):
    self.model, self.batch_stats = model, batch_stats

  def __call__(self, params, batch):
    from experiments import steps  # pylint: disable=g-import-not-at-top

    variables = {"params": params}
    if self.batch_stats is not None:
      variables["batch_stats"] = self.batch_stats
    from experiments import recurrent_models  # pylint: disable=g-import-not-at-top

    if isinstance(self.model, recurrent_models.LSTMLanguageModel):
      zero = recurrent_models.zero_state(self.model, batch[0].shape[0])
      logits, _ = self.model.apply(variables, batch[0], zero, train=False)
    else:
      logits = self.model.apply(variables, batch[0], train=False)
    return steps.cross_entropy(logits, batch[1])

  def _key(self):
    return (self.model,) if self.batch_stats is None else (self.model, id(self))

  def __eq__(self, other):
    return isinstance(other, EvalLoss) and self._key() == other._key()

  def __hash__(self):
    return hash(self._key())


def _seed_variables(variables: dict[str, Any], seed_index: int, num_seeds: int):
  import jax  # pylint: disable=g-import-not-at-top

  if num_seeds == 1:
    return variables
  return jax.tree.map(lambda a: a[seed_index], variables)


def _batches(ds, args: FlatnessJob):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  batch = min(args.hessian_batch, args.hessian_examples, len(ds.train_x))
  num_batches = max(1, min(args.hessian_examples, len(ds.train_x)) // batch)
  n = num_batches * batch
  return (
    jnp.asarray(ds.train_x[:n]).reshape(num_batches, batch, *ds.input_shape),
    jnp.asarray(ds.train_y[:n]).reshape(num_batches, batch, *ds.train_y.shape[1:]),
  ), n


def analyse(
  run: launch.Run, ds, args: FlatnessJob, method: str, seed_index: int
) -> tuple[dict[str, Any], Any, np.ndarray]:
  """The statistics of one seed of a finished run, what to plot, and the values (eigenvalues,
  Fisher diagonal, or SLQ nodes)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.flatten_util import ravel_pytree  # pylint: disable=g-import-not-at-top

  from entropy_optax import flatness  # pylint: disable=g-import-not-at-top

  config = run.config
  if run.state is not None:
    state = {
      "params": run.state.params,
      "batch_stats": run.state.batch_stats,
      "opt_state": run.state.opt_state,
    }
  else:
    state = launch.load_final_state(run.workdir, args.run.data_dir)
  state = _seed_variables(jax.device_get(state), seed_index, config.num_seeds)
  params = state["params"]
  batches, n = _batches(ds, args)
  loss_fn = EvalLoss(build.make_model(config, ds.num_classes), state.get("batch_stats"))
  num_params = run.results["num_params"]
  start = time.perf_counter()
  stats: dict[str, Any] = {"method": method, "examples": n, "num_params": num_params}
  if method == "exact":
    values = np.asarray(
      flatness.hessian_eigenvalues(loss_fn, params, batches, max_params=args.max_exact_params)
    )
    stats.update(flatness.spectrum_summary(values, thresholds=THRESHOLDS))
    plotted = values
  elif method in ("fisher", "adam-fisher"):
    if method == "fisher":
      diagonal = flatness.fisher_diagonal(loss_fn, params, batches)
    else:
      diagonal = flatness.fisher_diagonal_from_adam(state["opt_state"], b2=config.b2)
    values = np.asarray(ravel_pytree(diagonal)[0])
    stats.update(flatness.spectrum_summary(values, thresholds=THRESHOLDS))
    plotted = values
  else:
    extremes = flatness.lanczos_extremes(
      loss_fn, params, batches, num_iters=args.lanczos_iters, key=seed_index
    )
    density = flatness.spectral_density(
      loss_fn,
      params,
      batches,
      num_iters=args.lanczos_iters,
      num_samples=args.slq_samples,
      key=seed_index + 1,
    )
    nodes, weights = np.asarray(density.nodes), np.asarray(density.weights)
    stats.update(
      {
        "count": num_params,
        "max_eigenvalue": float(extremes.largest),
        "min_eigenvalue": float(extremes.smallest),
        "frac_negative": float(np.mean(np.sum(weights * (nodes < 0), axis=1))),
      }
    )
    for t in THRESHOLDS:
      stats[f"frac_abs_below_{t:.0e}"] = float(
        np.mean(np.sum(weights * (np.abs(nodes) < t), axis=1))
      )
    plotted, values = density, nodes
  stats["loss"] = float(jnp.mean(jax.lax.map(jax.jit(lambda b: loss_fn(params, b)), batches)))
  stats["seconds"] = time.perf_counter() - start
  stats["test_error"] = run.results["test_error"][seed_index]
  return stats, plotted, values


# Markdown rows; a "|" inside a cell is escaped.
ROWS = (
  [
    ("test error (%)", "test_error", "{:.2f}"),
    ("training loss", "loss", "{:.4f}"),
    ("weights", "count", "{:d}"),
  ]
  + [(f"fraction \\|λ\\| < {t:.0e}", f"frac_abs_below_{t:.0e}", "{:.3f}") for t in THRESHOLDS]
  + [
    ("fraction λ < 0", "frac_negative", "{:.3f}"),
    ("largest λ", "max_eigenvalue", "{:.4g}"),
    ("most negative λ", "min_eigenvalue", "{:.4g}"),
  ]
)


def table(columns: dict[str, dict[str, Any]]) -> str:
  """The statistics side by side, one column per run (and seed)."""
  lines = ["| statistic | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
  for label, key, fmt in ROWS:
    lines.append(f"| {label} | " + " | ".join(fmt.format(c[key]) for c in columns.values()) + " |")
  return "\n".join(lines)


def plot(spectra: dict[str, Any], path: pathlib.Path, title: str) -> None:
  """Histograms of the spectra: everything (log counts), and the bulk around zero."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  from entropy_optax import flatness  # pylint: disable=g-import-not-at-top

  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  flatness.plot_spectrum(spectra, left, title="all eigenvalues")
  values = [np.asarray(s.nodes if hasattr(s, "nodes") else s).ravel() for s in spectra.values()]
  scale = max(float(np.percentile(np.abs(v), 90)) for v in values) or 1e-3
  flatness.plot_spectrum(
    spectra,
    right,
    value_range=(-scale, scale),
    title=f"the bulk: |λ| < {scale:.2g} (90th percentile of |λ|)",
  )
  for ax in (left, right):
    ax.set_xlabel("eigenvalue")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


WHAT = {
  "exact": "Hessian eigenvalues (exact)",
  "lanczos": "Hessian spectrum (Lanczos extremes, SLQ fractions)",
  "fisher": "diagonal of the per-example empirical Fisher at the final point",
  "adam-fisher": "Adam's second moment along the trajectory (the paper's Fisher proxy)",
}


def _method(args: FlatnessJob, configs: dict, num_params: int) -> str:
  method = args.method
  if method == "auto":
    method = "exact" if num_params <= args.max_exact_params else "lanczos"
  if method == "exact" and num_params > args.max_exact_params:
    raise ConfigError(
      f"the model has {num_params:,} weights, more than --max-exact-params "
      f"{args.max_exact_params:,}: use --method lanczos (or fisher), or raise the limit if "
      f"{num_params**2 * 4 / 1e9:.1f} GB fit in memory."
    )
  if method == "adam-fisher":
    other = [c.optimizer for c in configs.values() if c.optimizer not in ("adam", "entropy-adam")]
    if other:
      raise ConfigError(
        f"--method adam-fisher reads Adam's second moment: --optimizers may "
        f"name adam and entropy-adam runs only, not {', '.join(other)}."
      )
  return method


@cli.main
def main(argv: Sequence[str] | None = None) -> int:
  """Trains the runs, measures their spectra, prints the comparison; returns the exit code."""
  argv = list(sys.argv[1:] if argv is None else argv)
  args = cli.parse(
    lambda: tyro.extras.overridable_config_cli(JOBS, prog=PROG, description=__doc__, args=argv),
    PROG,
  )
  default = JOBS[next(a for a in argv if a in JOBS)][1]
  configs = {name: c for (_, name), c in grid.expand(args, default).items()}
  if len(args.models) != 1:
    raise ConfigError("--models: the flatness experiment takes one model.")
  first = next(iter(configs.values()))
  synthetic = "-synthetic" if first.synthetic else ""
  options = args.run.replace(
    workdir=args.run.workdir or f"runs/flatness-{first.dataset}-{first.model}{synthetic}"
  )
  runs = launch.run_grid(configs, options, prefixes={name: f"recipe.{name}." for name in configs})
  ds = build.load_data(first, options.data_dir, options.download)
  method = _method(args, configs, next(iter(runs.values())).results["num_params"])
  root = pathlib.Path(options.workdir)
  columns, spectra = {}, {}
  for optimizer, run in runs.items():
    for s in range(run.config.num_seeds):
      label = reporting.name(optimizer) + (
        f" seed {run.config.seed + s}" if run.config.num_seeds > 1 else ""
      )
      stats, plotted, values = analyse(run, ds, args, method, s)
      print(f"{label}: {method} spectrum of {stats['count']} values in {stats['seconds']:.0f} s")
      columns[label], spectra[label] = stats, plotted
      np.save(root / f"eigenvalues-{optimizer}-seed{run.config.seed + s}.npy", values)
  header = (
    f"{first.dataset}{' (synthetic)' if first.synthetic else ''} {first.model}: "
    f"{WHAT[method]} of the training loss on {columns[label]['examples']} training "
    f"examples, at the end of {first.effective_epochs:g} effective epochs of each "
    "optimizer."
  )
  text = f"{header}\n\n{table(columns)}\n"
  (root / "flatness.md").write_text(text)
  rundir.write_json(root / "flatness.json", columns)
  plot(spectra, root / "spectrum.png", f"{first.dataset} {first.model}: {WHAT[method]}")
  print(
    f"\n{text}\nsaved {root / 'flatness.md'}, {root / 'flatness.json'}, {root / 'spectrum.png'}"
  )
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
