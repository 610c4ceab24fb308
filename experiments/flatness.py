"""How flat are the minima? Hessian spectra after SGD/Adam and after Entropy-SGD (Sec. 5.1).

    python -m experiments.flatness mnist1d                  # MNIST-1D CNN, Adam vs Entropy-SGD
    python -m experiments.flatness mnist1d --models mlp1d   # 15k weights: exact, slower
    python -m experiments.flatness mnist --method lanczos
    python -m experiments.flatness cifar10 --method fisher
    python -m experiments.flatness charlstm                 # Sec. 5.1's small char-LSTM
    python -m experiments.flatness fashion_mnist --models mnistfc --data-dir DIR
    python -m experiments.flatness fashion_mnist --runs RUN_DIR RUN_DIR --data-dir DIR

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

It then measures the same loss at random points x + r d around each final point (the same
directions for every run): radii relative to each weight array's norm (--relative-radii) and
absolute (--absolute-radii), and the local entropy log mean exp(-loss) on each sphere.
--per-array adds each weight array's own curvature (the top eigenvalue of its Hessian block,
times its norm squared: the scale-free measure for arrays that feed a BatchNorm).

It prints the paper's statistics side by side (fraction of |lambda| below 1e-4, 1e-3, 1e-2,
of negative eigenvalues, the extremes) and the perturbed losses, and saves flatness.json,
flatness.md, the values (.npy), spectrum.png and perturbation.png under --workdir (default
runs/flatness-<dataset>-<model>). --runs DIR... measures finished runs (for instance the
full-length runs of a data set's own script) instead of training.
"""

from __future__ import annotations

from experiments.run import signals

# Before the slow imports below: a signal during them waits for a safe point.
signals.defer_if_main(__name__)

import pathlib
import sys
from collections.abc import Sequence

import numpy as np
import tyro

from experiments.configs.flatness import JOBS
from experiments.launch import cli, comparison, components, final_state, jobs
from experiments.reporting import display_names, summaries
from experiments.run import directory, distributed
from experiments.run.schema import ConfigError
from experiments.studies import flatness_perturbation
from experiments.studies.flatness_analysis import analyse, choose_method
from experiments.studies.flatness_report import WHAT, array_table, plot, table

PROG = "python -m experiments.flatness"


@cli.main
def main(argv: Sequence[str] | None = None) -> int:
  """Trains the runs, measures their spectra, prints the comparison; returns the exit code."""
  argv = list(sys.argv[1:] if argv is None else argv)
  args = cli.parse(
    lambda: tyro.extras.overridable_config_cli(JOBS, prog=PROG, description=__doc__, args=argv),
    PROG,
  )
  default = JOBS[next(a for a in argv if a in JOBS)][1]
  if args.runs:  # measure finished runs: their own configs
    runs = _finished_runs(args.runs)
    configs = {name: run.config for name, run in runs.items()}
  else:
    configs = {name: c for (_, name), c in comparison.expand(args, default).items()}
    if len(args.models) != 1:
      raise ConfigError("--models: the flatness experiment takes one model.")
  first = next(iter(configs.values()))
  synthetic = "-synthetic" if first.synthetic else ""
  options = args.run.replace(
    workdir=args.run.workdir or f"runs/flatness-{first.dataset}-{first.model}{synthetic}"
  )
  jobs.join_processes(options)
  if distributed.process_count() > 1:
    raise ConfigError(
      "the flatness analysis runs in one process (each spectrum needs the whole model on one "
      "host): drop --num-processes; --mesh splits the training over this host's devices."
    )
  if args.runs:
    pathlib.Path(options.workdir).mkdir(parents=True, exist_ok=True)
  else:
    runs = jobs.run_grid(configs, options, prefixes={name: f"recipe.{name}." for name in configs})
  for name, run in runs.items():  # NaN parameters have no spectrum; an older checkpoint is
    if run.results.get("diverged"):  # not the run's final point
      raise ConfigError(
        f"{run.workdir} diverged ({summaries.divergence_note(run.results)}): its parameters "
        "are not finite, so there is no minimum to analyse; train it with a lower "
        f"--recipe.{name}.learning-rate (or --recipe.{name}.clip-norm) in another --workdir."
      )
  ds = components.load_data(first, options.data_dir, options.download)
  method = choose_method(args, configs, next(iter(runs.values())).results["num_params"])
  root = pathlib.Path(options.workdir)
  columns, spectra = {}, {}
  for optimizer, run in runs.items():
    for s in range(run.config.num_seeds):
      label = display_names.name(optimizer) + (
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
  if any(c["perturbation"] for c in columns.values()):
    text += (
      f"\nThe training loss (same examples, evaluation mode) at x + r d along "
      f"{args.perturbation_samples} random directions d per radius (mean ± std), and the local "
      "entropy log mean exp(-loss) (higher: wider):\n\n"
      f"{flatness_perturbation.table(columns)}"
    )
    flatness_perturbation.plot(
      columns, root / "perturbation.png", f"{first.dataset} {first.model}: random perturbations"
    )
  if args.per_array:
    text += (
      "\nEach weight array's own curvature: the largest eigenvalue of its block of the Hessian "
      "(the other arrays held fixed), its norm, and eigenvalue × norm² (unchanged when an array "
      "that feeds a BatchNorm is rescaled):\n\n"
      f"{array_table(columns)}\n"
    )
  (root / "flatness.md").write_text(text)
  directory.write_json(root / "flatness.json", columns)
  plot(spectra, root / "spectrum.png", f"{first.dataset} {first.model}: {WHAT[method]}")
  print(f"\n{text}\nsaved flatness.md, flatness.json, spectrum.png, perturbation.png in {root}")
  return 0


def _finished_runs(workdirs: Sequence[str]) -> dict[str, final_state.Run]:
  """The finished runs of ``--runs``, keyed by optimizer (by directory name when two share
  one); all of one data set and model."""
  runs = [final_state.load_finished(w) for w in workdirs]
  kinds = {(r.config.dataset, r.config.model) for r in runs}
  if len(kinds) > 1:
    raise ConfigError(f"--runs: the runs must share one data set and model, got {sorted(kinds)}.")
  names = [r.config.optimizer for r in runs]
  if len(set(names)) < len(names):
    names = [pathlib.Path(w).name for w in workdirs]
  return dict(zip(names, runs))


if __name__ == "__main__":
  raise SystemExit(main())
