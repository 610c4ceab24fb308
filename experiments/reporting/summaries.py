"""The results of one run: its ``results.json`` and the lines that describe it.

``summarize`` turns a run's metrics records into its ``results.json``; ``format_result`` is
the line a script prints; ``divergence_note`` and ``all_diverged`` say whether and where its
seeds diverged; ``text_loss`` is a language model's loss as the paper reports it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from experiments.run.schema import RunConfig

# Language models: how a text's loss is shown (word perplexity, or nats and bits per character).
PERPLEXITY_DATASETS = ("ptb",)


def summarize(
  records: Sequence[Mapping[str, Any]],
  config: RunConfig,
  *,
  dataset: str,
  num_params: int,
  num_train: int,
  num_test: int,
  paper: str | None,
  heldout: Mapping[str, Any] | None = None,
  validation: Mapping[str, Any] | None = None,
  diverged: Mapping[int, int] | None = None,
) -> dict[str, Any]:
  """The results of a finished run from all its metrics records (resumed or not) and its
  config (its model, optimizer and L); ``dataset`` is the data set's display key (a text's
  file), ``num_params`` per seed.

  Errors are in %, on the test split. ``test_error_std`` is the sample standard deviation over
  seeds (0 for one seed). ``time_per_effective_epoch_s`` leaves out the first call
  (compilation) when there are later ones. ``val_loss``: the final loss per seed on the
  evaluated split (nats per token for a language model). ``heldout``: the metrics of a split
  evaluated once at the end (a text's test split, the evaluated one being its validation
  split), stored as ``heldout_loss`` (and ``heldout_error``, in % like ``test_error``) per seed.
  ``validation``: the metrics at the end of the validation split carved from the training set
  (``--validation-examples``), stored as ``validation_loss`` and ``validation_error`` (%).
  ``diverged``: ``{seed: step}`` of the seeds whose loss or parameters stopped being finite;
  their errors are NaN, means and standard deviations are over the other seeds (NaN when none
  is left), and ``diverged`` lists ``{"seed", "step"}`` of each.
  """
  diverged = dict(diverged or {})
  seeds = sorted({r["seed"] for r in records})
  final = [max((r for r in records if r["seed"] == s), key=lambda r: r["step"]) for s in seeds]
  errors = [np.nan if r["seed"] in diverged else 100 * r.get("val_error", np.nan) for r in final]
  best = [
    np.nan
    if s in diverged
    else 100 * min(r["val_error"] for r in records if r["seed"] == s and "val_error" in r)
    for s in seeds
  ]
  timeline = sorted({(r["step"], r["wall_time"], r["effective_epochs"]) for r in records})
  steps, wall, effective = timeline[-1]
  first = timeline[0]
  per_step = (wall - first[1]) / (steps - first[0]) if len(timeline) > 1 else wall / steps
  out = {
    "dataset": dataset,
    "model": config.model,
    "optimizer": config.optimizer,
    "num_params": num_params,
    "num_train": num_train,
    "num_test": num_test,
    "seeds": seeds,
    **_per_seed("test_error", errors),
    "best_test_error_mean": _finite_mean(best),
    "final_train_loss": [r["train_loss"] for r in final],
    "outer_epochs": final[0]["epoch"],
    "effective_epochs": effective,
    "outer_steps": steps,
    "langevin_steps": config.langevin_steps,
    "wall_time_s": wall,
    "time_per_step_s": per_step,
    "time_per_effective_epoch_s": per_step * steps / effective,
    "paper": paper,
    **_per_seed(
      "val_loss", [np.nan if r["seed"] in diverged else r.get("val_loss", np.nan) for r in final]
    ),
    "diverged": [{"seed": s, "step": n} for s, n in sorted(diverged.items())],
  }
  scale = {"loss": 1.0, "error": 100.0}
  for name, metrics in (("heldout", heldout), ("validation", validation)):
    if metrics is not None:
      for key in ("loss", "error"):
        values = (scale[key] * np.atleast_1d(metrics[f"val_{key}"])).tolist()
        values = [np.nan if s in diverged else v for s, v in zip(seeds, values)]
        out.update(_per_seed(f"{name}_{key}", values))
  return out


def _finite_mean(values: Sequence[float]) -> float:
  """The mean of the finite values (NaN if there is none)."""
  finite = [float(v) for v in values if np.isfinite(v)]
  return float(np.mean(finite)) if finite else float("nan")


def _per_seed(key: str, values: Sequence[float]) -> dict[str, Any]:
  """``key`` (a value per seed), and the mean and sample standard deviation of its finite
  values (a diverged seed's are NaN; the mean is NaN when no value is finite)."""
  values = [float(v) for v in values]
  finite = [v for v in values if np.isfinite(v)]
  return {key: values, f"{key}_mean": _finite_mean(values), f"{key}_std": _sample_std(finite)}


def _sample_std(values: Sequence[float] | np.ndarray) -> float:
  """The sample standard deviation (ddof 1) of ``values``; 0 for a single value, NaN for none
  (every seed diverged: no spread to report, as there is no mean)."""
  if not len(values):
    return float("nan")
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def seed_count(results: Mapping[str, Any]) -> str:
  """The seeds that the means and standard deviations are over: "4", or "2 of 4" when some
  diverged (their errors are left out).

  Examples:
    >>> seed_count({"seeds": [0, 1, 2, 3], "diverged": [{"seed": 1, "step": 7}]})
    '3 of 4'
  """
  n = len(results["seeds"])
  counted = n - len(results.get("diverged") or [])
  return f"{counted} of {n}" if counted != n else str(n)


def divergence_note(results: Mapping[str, Any]) -> str:
  """How a run diverged, "" if it did not: "diverged at step N" when every seed did (N the
  first), else which seeds did and at which steps.

  Examples:
    >>> divergence_note({"seeds": [0], "diverged": [{"seed": 0, "step": 7}]})
    'diverged at step 7'
    >>> divergence_note({"seeds": [0, 1], "diverged": [{"seed": 1, "step": 7}]})
    'seed 1 diverged at step 7'
  """
  diverged = results.get("diverged") or []
  if not diverged:
    return ""
  if len(diverged) == len(results["seeds"]):
    return f"diverged at step {min(d['step'] for d in diverged)}"
  return ", ".join(f"seed {d['seed']} diverged at step {d['step']}" for d in diverged)


def all_diverged(results: Mapping[str, Any]) -> bool:
  """Whether every seed of a run diverged (it has no accuracy to report)."""
  diverged = results.get("diverged") or []
  return bool(diverged) and len(diverged) == len(results["seeds"])


def is_benchmark_figure(paper: str) -> bool:
  """Whether a run's ``paper`` figure is its data set's published benchmark (a data set the paper
  did not use, e.g. Fashion-MNIST: "11.7 (benchmark MLP 256-128-100: 88.3% acc.)"), not the
  paper's own."""
  return "acc." in paper


def format_result(results: Mapping[str, Any]) -> str:
  """One line: test error mean ± std over seeds, effective epochs, wall time, speed (a
  language model: validation and test loss, ``text_loss``)."""
  n = len(results["seeds"])
  paper = ""
  if results.get("paper"):
    label = "published" if is_benchmark_figure(results["paper"]) else "paper"
    paper = f"; {label}: {results['paper']}"
  note = divergence_note(results)
  if all_diverged(results):
    return (
      f"{note} ({n} seed{'s' if n > 1 else ''}; no accuracy), {results['wall_time_s']:.1f} s{paper}"
    )
  paper += f"; {note}" if note else ""
  if "validation_error_mean" in results:
    paper = f"; validation error {results['validation_error_mean']:.2f}%" + paper
  if "heldout_loss" in results:  # a language model: validation and test loss
    return (
      f"validation {text_loss(results, 'val_loss')}, test {text_loss(results)} after "
      f"{results['effective_epochs']:g} effective epochs, {results['wall_time_s']:.1f} s{paper}"
    )
  return (
    f"test error {results['test_error_mean']:.2f} ± {results['test_error_std']:.2f}% "
    f"({seed_count(results)} seed{'s' if n > 1 else ''}) after "
    f"{results['effective_epochs']:g} effective epochs, {results['wall_time_s']:.1f} s, "
    f"{results['time_per_effective_epoch_s']:.3g} s per effective epoch{paper}"
  )


def text_loss(run: Mapping[str, Any], key: str = "heldout_loss") -> str:
  """A language model's loss per seed ``run[key]`` (nats per token) as the paper reports it:
  word perplexity (PTB), or nats and bits per character; mean ± std over seeds (seeds)."""
  nats = np.asarray(run[key], np.float64)  # a diverged seed's: NaN (null in results.json)
  nats = nats[np.isfinite(nats)]
  if not len(nats):
    return divergence_note(run) or "not finite"
  if run["dataset"].split(":")[0] in PERPLEXITY_DATASETS:
    ppl = np.exp(nats)
    return f"ppl {ppl.mean():.2f} ± {_sample_std(ppl):.2f} ({len(nats)})"
  bits = nats / np.log(2.0)
  return f"{nats.mean():.3f} ± {_sample_std(nats):.3f} nats, {bits.mean():.3f} bits ({len(nats)})"
