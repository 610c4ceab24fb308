"""How flat are the minima? Hessian spectra after SGD/Adam and after Entropy-SGD (Sec. 5.1).

    python -m experiments.flatness                       # MNIST-1D CNN, Adam vs Entropy-SGD
    python -m experiments.flatness --model mlp1d         # 15k weights: exact, slower
    python -m experiments.flatness --dataset mnist --model lenet_bn --method lanczos
    python -m experiments.flatness --dataset cifar10 --method fisher

Trains one run per optimizer with the recipes of the data set's script (MNIST-1D: the main
job's, at --effective-epochs; MNIST and CIFAR-10: the presets of experiments.mnist and
experiments.cifar10), then characterises the training loss at each final point, in evaluation
mode (BatchNorm running statistics, no dropout), on the first --hessian-examples training
examples:

* ``exact``: every eigenvalue of the dense Hessian (the paper's method for its ~50k-weight
  nets; for up to --max-exact-params weights: the MNIST-1D CNN has 5k, the MLP 15k);
* ``lanczos``: the extreme eigenvalues by Lanczos and the spectral density by stochastic
  Lanczos quadrature (any size); the fractions of small eigenvalues are then SLQ estimates,
  coarse next to exact counts;
* ``fisher``: the diagonal of the empirical Fisher (the paper's proxy for All-CNN-BN).

It prints the paper's statistics side by side (fraction of |lambda| below 1e-4, 1e-3, 1e-2,
the fraction of negative eigenvalues, the extremes), and saves them (flatness.json,
flatness.md), the eigenvalues (.npy) and spectrum.png (histograms like the paper's Figs. 1
and 3: all eigenvalues on a log count scale, and the bulk around zero) under --workdir
(default runs/flatness-<dataset>-<model>); each trained run has its own directory there.
``--resume`` reuses finished runs.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import pathlib
import time
from typing import Any

import numpy as np

from experiments import cifar10, common, mnist, mnist1d

METHODS = ("auto", "exact", "lanczos", "fisher")
DEFAULT_MODELS = {"mnist1d": "cnn1d", "mnist": "lenet_bn", "cifar10": "allcnn_bn"}
THRESHOLDS = (1e-4, 1e-3, 1e-2)
NAMES = mnist1d.NAMES


def parser():
  p = common.new_parser("python -m experiments.flatness", __doc__.splitlines()[0],
                        __doc__.split("\n\n", 2)[1])
  p.add_argument("--dataset", choices=common.DATASETS, default="mnist1d",
                 help="data set (default: mnist1d, generated offline)")
  p.add_argument("--model", default=None,
                 help="model (default: cnn1d for mnist1d, lenet_bn for mnist, allcnn_bn for "
                 "cifar10)")
  p.add_argument("--optimizers", default=None,
                 help="optimizers to compare, comma-separated (default: adam,entropy-sgd; "
                 "sgd,entropy-sgd for cifar10)")
  p.add_argument("--effective-epochs", type=float, default=None, metavar="X",
                 help="budget of every run (default: 100 for mnist1d; the presets' otherwise)")
  p.add_argument("--num-seeds", type=int, default=1, metavar="N",
                 help="seeds per run; each seed's minimum gets its spectrum (default: 1)")
  p.add_argument("--synthetic", action="store_true",
                 help="random data of the data set's shape (smoke tests)")
  p.add_argument("--num-train", type=int, default=0, metavar="N",
                 help="training examples (0: all; mnist1d: 4000)")
  p.add_argument("--num-test", type=int, default=0, metavar="N",
                 help="test examples (0: all; mnist1d: 1000)")
  p.add_argument("--set", action="append", default=[], metavar="[OPT.]FIELD=VALUE",
                 help="override a RunConfig field for one optimizer or all (repeatable; "
                 "fields as in python -m experiments.mnist1d --help)")
  p.add_argument("--method", choices=METHODS, default="auto",
                 help="exact eigenvalues, Lanczos + SLQ, or the diagonal Fisher (default: "
                 "auto = exact up to --max-exact-params weights, else lanczos)")
  p.add_argument("--max-exact-params", type=int, default=20_000, metavar="N",
                 help="largest model for the exact spectrum (default: 20000; the dense "
                 "Hessian takes n^2 floats)")
  p.add_argument("--hessian-examples", type=int, default=1000, metavar="N",
                 help="training examples the loss is averaged over (default: 1000)")
  p.add_argument("--hessian-batch", type=int, default=500, metavar="N",
                 help="examples per batch of a Hessian-vector product (default: 500)")
  p.add_argument("--lanczos-iters", type=int, default=100, metavar="N",
                 help="Lanczos steps for the extremes and per SLQ probe (default: 100)")
  p.add_argument("--slq-samples", type=int, default=8, metavar="N",
                 help="SLQ probes (default: 8)")
  common.add_run_options(p, "runs/flatness-<dataset>-<model>")
  return p


def run_configs(args) -> dict[str, common.RunConfig]:
  """The runs to compare: {optimizer: config}."""
  dataset = args.dataset
  model = args.model or DEFAULT_MODELS[dataset]
  if model not in common.MODELS_OF[dataset]:
    raise common.ConfigError(f"--model {model!r}: choose from "
                             f"{', '.join(common.MODELS_OF[dataset])} for {dataset}.")
  default = "sgd,entropy-sgd" if dataset == "cifar10" else "adam,entropy-sgd"
  optimizers = mnist1d.parse_names(args.optimizers or default, common.OPTIMIZERS,
                                  "--optimizers")
  sets = mnist1d.parse_sets(args.set)
  for name in ("num_seeds", "num_train", "num_test"):
    if getattr(args, name) < (1 if name == "num_seeds" else 0):
      raise common.ConfigError(f"--{name.replace('_', '-')} must be >= "
                               f"{1 if name == 'num_seeds' else 0}.")
  overrides = dict(num_seeds=args.num_seeds, synthetic=args.synthetic)
  overrides.update({k: getattr(args, k) for k in ("num_train", "num_test") if getattr(args, k)})
  if dataset == "mnist1d":
    configs = mnist1d.run_configs([model], optimizers, args.effective_epochs or 100.0,
                                  overrides, sets)
    return {o: c for (_, o), c in configs.items()}
  script = {"mnist": mnist, "cifar10": cifar10}[dataset]
  configs = {}
  for optimizer in optimizers:
    if optimizer not in script.PRESETS:
      raise common.ConfigError(f"--optimizers: {dataset} has recipes for "
                               f"{', '.join(script.PRESETS)} only.")
    values = {**script.PRESETS[optimizer], **overrides, **sets.get(None, {}),
              **sets.get(optimizer, {}), "model": model}
    if args.effective_epochs:
      values["epochs"] = args.effective_epochs / values.get("langevin_steps", 1)
    configs[optimizer] = common.validate(dataclasses.replace(script.BASE, **values))
  return configs


class EvalLoss:
  """``loss(params, (x, y))``: mean cross entropy of ``model`` in evaluation mode.

  Two of them are equal when their models are and neither has BatchNorm statistics: the
  ``entropy_optax.flatness`` functions take the loss as a static argument of their jitted
  code, so the runs of one model share one compilation.
  """

  def __init__(self, model, batch_stats=None):
    self.model, self.batch_stats = model, batch_stats

  def __call__(self, params, batch):
    from experiments import training  # pylint: disable=g-import-not-at-top
    variables = {"params": params}
    if self.batch_stats is not None:
      variables["batch_stats"] = self.batch_stats
    logits = self.model.apply(variables, batch[0], train=False)
    return training.cross_entropy(logits, batch[1])

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


def analyse(run: common.Run, ds, args, method: str, seed_index: int
            ) -> tuple[dict[str, Any], Any, np.ndarray]:
  """The spectrum statistics of one seed of a finished run, what to plot, and the values
  (eigenvalues, Fisher diagonal, or SLQ nodes)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.flatten_util import ravel_pytree  # pylint: disable=g-import-not-at-top
  from entropy_optax import flatness  # pylint: disable=g-import-not-at-top

  config = run.config
  if run.state is not None:
    variables = {"params": run.state.params}
    if run.state.batch_stats is not None:
      variables["batch_stats"] = run.state.batch_stats
  else:
    variables = common.load_final_variables(run.workdir)
  variables = _seed_variables(jax.device_get(variables), seed_index, config.num_seeds)
  params = variables.pop("params")
  model = common.make_model(config)

  batch = min(args.hessian_batch, args.hessian_examples, len(ds.train_x))
  num_batches = max(1, min(args.hessian_examples, len(ds.train_x)) // batch)
  n = num_batches * batch
  batches = (jnp.asarray(ds.train_x[:n]).reshape(num_batches, batch, *ds.input_shape),
             jnp.asarray(ds.train_y[:n]).reshape(num_batches, batch))

  loss_fn = EvalLoss(model, variables.get("batch_stats"))
  num_params = run.results["num_params"]
  start = time.perf_counter()
  stats: dict[str, Any] = {"method": method, "examples": n, "num_params": num_params}
  if method == "exact":
    values = np.asarray(flatness.hessian_eigenvalues(
        loss_fn, params, batches, max_params=args.max_exact_params))
    stats.update(flatness.spectrum_summary(values, thresholds=THRESHOLDS))
    plotted = values
  elif method == "fisher":
    values = np.asarray(ravel_pytree(flatness.fisher_diagonal(loss_fn, params, batches))[0])
    stats.update(flatness.spectrum_summary(values, thresholds=THRESHOLDS))
    plotted = values
  else:
    extremes = flatness.lanczos_extremes(loss_fn, params, batches,
                                         num_iters=args.lanczos_iters, key=seed_index)
    density = flatness.spectral_density(loss_fn, params, batches, num_iters=args.lanczos_iters,
                                        num_samples=args.slq_samples, key=seed_index + 1)
    nodes, weights = np.asarray(density.nodes), np.asarray(density.weights)
    stats.update({"count": num_params, "max_eigenvalue": float(extremes.largest),
                  "min_eigenvalue": float(extremes.smallest),
                  "frac_negative": float(np.mean(np.sum(weights * (nodes < 0), axis=1)))})
    for t in THRESHOLDS:
      stats[f"frac_abs_below_{t:.0e}"] = float(
          np.mean(np.sum(weights * (np.abs(nodes) < t), axis=1)))
    plotted = density
    values = nodes
  stats["loss"] = float(jnp.mean(jax.lax.map(jax.jit(lambda b: loss_fn(params, b)), batches)))
  stats["seconds"] = time.perf_counter() - start
  stats["test_error"] = run.results["test_error"][seed_index]
  return stats, plotted, values


# Markdown rows; a "|" inside a cell is escaped.
ROWS = [("test error (%)", "test_error", "{:.2f}"), ("training loss", "loss", "{:.4f}"),
        ("weights", "count", "{:d}")] + [
    (f"fraction \\|λ\\| < {t:.0e}", f"frac_abs_below_{t:.0e}", "{:.3f}") for t in THRESHOLDS] + [
    ("fraction λ < 0", "frac_negative", "{:.3f}"), ("largest λ", "max_eigenvalue", "{:.4g}"),
    ("most negative λ", "min_eigenvalue", "{:.4g}")]


def table(columns: dict[str, dict[str, Any]]) -> str:
  """The statistics side by side, one column per run (and seed)."""
  lines = ["| statistic | " + " | ".join(columns) + " |",
           "|---|" + "---|" * len(columns)]
  for label, key, fmt in ROWS:
    lines.append(f"| {label} | " + " | ".join(fmt.format(c[key]) for c in columns.values())
                 + " |")
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
  flatness.plot_spectrum(spectra, right, value_range=(-scale, scale),
                         title=f"the bulk: |λ| < {scale:.2g} (90th percentile of |λ|)")
  for ax in (left, right):
    ax.set_xlabel("eigenvalue")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


@common.cli
def main(argv: Sequence[str] | None = None) -> int:
  """Trains the runs, measures their spectra, prints the comparison; returns the exit code."""
  args = parser().parse_args(argv)
  configs = run_configs(args)
  first = next(iter(configs.values()))
  synthetic = "-synthetic" if first.synthetic else ""
  options = common.options_from_args(
      args, f"runs/flatness-{first.dataset}-{first.model}{synthetic}")
  runs = common.run_grid(configs, options)
  ds = common.load_data(first, options)
  num_params = next(iter(runs.values())).results["num_params"]
  method = args.method
  if method == "auto":
    method = "exact" if num_params <= args.max_exact_params else "lanczos"
  if method == "exact" and num_params > args.max_exact_params:
    raise common.ConfigError(
        f"{first.model} has {num_params:,} weights, more than --max-exact-params "
        f"{args.max_exact_params:,}: use --method lanczos (or fisher), or raise the limit if "
        f"{num_params ** 2 * 4 / 1e9:.1f} GB fit in memory.")
  root = pathlib.Path(options.workdir)
  columns, spectra = {}, {}
  for optimizer, run in runs.items():
    for s in range(run.config.num_seeds):
      label = NAMES.get(optimizer, optimizer) + (f" seed {run.config.seed + s}"
                                                 if run.config.num_seeds > 1 else "")
      stats, plotted, values = analyse(run, ds, args, method, s)
      print(f"{label}: {method} spectrum of {stats['count']} weights in "
            f"{stats['seconds']:.0f} s")
      columns[label], spectra[label] = stats, plotted
      np.save(root / f"eigenvalues-{optimizer}-seed{run.config.seed + s}.npy", values)
  what = {"exact": "Hessian eigenvalues (exact)",
          "lanczos": "Hessian spectrum (Lanczos extremes, SLQ fractions)",
          "fisher": "diagonal of the empirical Fisher"}[method]
  header = (f"{first.dataset}{' (synthetic)' if first.synthetic else ''} {first.model}: "
            f"{what} of the training loss on {columns[label]['examples']} training examples, "
            f"at the end of {first.effective_epochs:g} effective epochs of each optimizer.")
  text = f"{header}\n\n{table(columns)}\n"
  (root / "flatness.md").write_text(text)
  common.write_json(root / "flatness.json", columns)
  plot(spectra, root / "spectrum.png", f"{first.dataset} {first.model}: {what}")
  print(f"\n{text}\nsaved {root / 'flatness.md'}, {root / 'flatness.json'}, "
        f"{root / 'spectrum.png'}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
