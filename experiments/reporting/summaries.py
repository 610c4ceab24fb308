"""Results of runs: summaries, tables, plots, and the one table of display names.

``summarize`` turns a run's metrics records into its ``results.json``; ``format_result`` is
the line a script prints; ``comparison_table`` is the MNIST-1D job's table; ``table1`` pairs
finished runs like the paper's Table 1; ``plot_error`` draws test error against effective
epochs (the paper's Figs. 4-5).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

NAMES = {
  "allcnn_bn": "All-CNN-BN",
  "mnistfc": "mnistfc",
  "lenet_bn": "LeNet-BN",
  "mlp1d": "MLP",
  "cnn1d": "CNN",
  "cifar10": "CIFAR-10",
  "mnist": "MNIST",
  "mnist1d": "MNIST-1D",
  "sgd": "SGD",
  "adam": "Adam",
  "entropy-sgd": "Entropy-SGD",
  "entropy-adam": "Entropy-Adam",
  "entropy-sgd-auto": "Entropy-SGD (auto scope)",
  "entropy-adam-auto": "Entropy-Adam (auto scope)",
  "entropy-sgd-lua": "Entropy-SGD (Lua)",
  "allcnn_bn_authors": "All-CNN-BN (authors' layout)",
  "sgld": "SGLD",
  "smoothing-sgd": "Smoothing-SGD",
  "ptb": "PTB",
  "ptb_large": "PTB-LSTM",
  "ptb_medium": "PTB-LSTM medium",
  "ptb_small": "PTB-LSTM small",
  "char_lstm": "char-LSTM",
  "small_char_lstm": "char-LSTM (Sec. 5.1)",
  "chars:pydoc_data.topics": "pydoc_data.topics",
  "chars:2600-0.txt": "War and Peace",
}
# Language models: how a text's loss is shown (word perplexity, or nats and bits per character).
PERPLEXITY_DATASETS = ("ptb",)
# The baselines the paper compared Entropy-SGD with, and each family's own.
PAPER_BASELINE = {"mnist": "adam", "cifar10": "sgd", "ptb": "sgd"}
FAMILY_BASELINE = {"entropy-sgd": "sgd", "entropy-adam": "adam", "entropy-sgd-lua": "sgd"}


def name(key: str) -> str:
  """The display name of a model, data set or optimizer (the key itself if unnamed)."""
  return NAMES.get(key, key)


def summarize(
  records: Sequence[Mapping[str, Any]],
  *,
  dataset: str,
  model: str,
  optimizer: str,
  langevin_steps: int,
  num_params: int,
  num_train: int,
  num_test: int,
  paper: str | None,
  heldout: Mapping[str, Any] | None = None,
  diverged: Mapping[int, int] | None = None,
) -> dict[str, Any]:
  """The results of a finished run from all its metrics records (resumed or not).

  Errors are in %, on the test split. ``test_error_std`` is the sample standard deviation over
  seeds (0 for one seed). ``time_per_effective_epoch_s`` leaves out the first call
  (compilation) when there are later ones. ``val_loss``: the final loss per seed on the
  evaluated split (nats per token for a language model). ``heldout``: the metrics of a split
  evaluated once at the end (a text's test split, the evaluated one being its validation
  split), stored as ``heldout_loss`` (and ``heldout_error``, in % like ``test_error``) per seed.
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
    "model": model,
    "optimizer": optimizer,
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
    "langevin_steps": langevin_steps,
    "wall_time_s": wall,
    "time_per_step_s": per_step,
    "time_per_effective_epoch_s": per_step * steps / effective,
    "paper": paper,
    **_per_seed(
      "val_loss", [np.nan if r["seed"] in diverged else r.get("val_loss", np.nan) for r in final]
    ),
    "diverged": [{"seed": s, "step": n} for s, n in sorted(diverged.items())],
  }
  if heldout is not None:
    scale = {"loss": 1.0, "error": 100.0}
    for key in ("loss", "error"):
      values = (scale[key] * np.atleast_1d(heldout[f"val_{key}"])).tolist()
      values = [np.nan if s in diverged else v for s, v in zip(seeds, values)]
      out.update(_per_seed(f"heldout_{key}", values))
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
  std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
  return {key: values, f"{key}_mean": _finite_mean(values), f"{key}_std": std}


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


def format_result(results: Mapping[str, Any]) -> str:
  """One line: test error mean ± std over seeds, effective epochs, wall time, speed (a
  language model: validation and test loss, ``text_loss``)."""
  n = len(results["seeds"])
  paper = f"; paper: {results['paper']}" if results.get("paper") else ""
  note = divergence_note(results)
  if all_diverged(results):
    return (
      f"{note} ({n} seed{'s' if n > 1 else ''}; no accuracy), {results['wall_time_s']:.1f} s{paper}"
    )
  paper += f"; {note}" if note else ""
  if "heldout_loss" in results:  # a language model: validation and test loss
    return (
      f"validation {text_loss(results, 'val_loss')}, test {text_loss(results)} after "
      f"{results['effective_epochs']:g} effective epochs, {results['wall_time_s']:.1f} s{paper}"
    )
  return (
    f"test error {results['test_error_mean']:.2f} ± {results['test_error_std']:.2f}% "
    f"({n} seed{'s' if n > 1 else ''}) after {results['effective_epochs']:g} effective "
    f"epochs, {results['wall_time_s']:.1f} s, "
    f"{results['time_per_effective_epoch_s']:.3g} s per effective epoch{paper}"
  )


def _format_time(time: Mapping[str, float] | None) -> str:
  if time is None:
    return ""
  if time.get("diverged_at_step") is not None:
    return f"diverged at step {time['diverged_at_step']}"
  if np.isnan(time["effective_epochs"]):
    return "not reached"
  return f"{time['effective_epochs']:g} / {time['seconds']:.0f}"


def comparison_table(
  results: Mapping[tuple[str, str], Mapping[str, Any]],
  times_to_target: Mapping[tuple[str, str], Mapping[str, float]] | None = None,
) -> str:
  """Test accuracy, effective epochs and wall time of {(model, optimizer): results}, and with
  ``times_to_target`` (``comparison_times_to_target``) the time to the model's target."""
  time_header = " time to target (eff. epochs / s) |" if times_to_target is not None else ""
  lines = [
    "| model | optimizer | test accuracy (%) | best during run (%) | effective epochs "
    f"| updates | seeds | wall time (s) | published (%) |{time_header}",
    "|---|---|---|---|---|---|---|---|---|" + ("---|" if times_to_target is not None else ""),
  ]
  for (model, optimizer), r in results.items():
    published = ""
    if r.get("paper") and "acc." in r["paper"]:  # the benchmark's published accuracy
      published = f"{100 - float(r['paper'].split()[0]):.1f}"
    note = divergence_note(r)
    if all_diverged(r):
      accuracy, best = note, ""
    else:
      accuracy = f"{100 - r['test_error_mean']:.1f} ± {r['test_error_std']:.1f}"
      accuracy += f" ({note})" if note else ""
      best = f"{100 - r['best_test_error_mean']:.1f}"
    lines.append(
      f"| {name(model)} | {name(optimizer)} | {accuracy} | {best} | "
      f"{r['effective_epochs']:g} | {r['outer_steps']} | {len(r['seeds'])} | "
      f"{r['wall_time_s']:.0f} | {published} |"
      + (
        f" {_format_time(times_to_target.get((model, optimizer)))} |"
        if times_to_target is not None
        else ""
      )
    )
  return "\n".join(lines)


def language_model_table(results: Mapping[tuple[str, str], Mapping[str, Any]]) -> str:
  """Validation and test loss (``text_loss``), effective epochs and wall time of
  {(model, optimizer): results} of language-model runs, with the paper's figure."""
  lines = [
    "| model | optimizer | validation | test | effective epochs | updates | seeds "
    "| wall time (s) | paper (test) |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for (model, optimizer), r in results.items():
    lines.append(
      f"| {name(model)} | {name(optimizer)} | {text_loss(r, 'val_loss')} | {text_loss(r)} | "
      f"{r['effective_epochs']:g} | {r['outer_steps']} | {len(r['seeds'])} | "
      f"{r['wall_time_s']:.0f} | {r.get('paper') or ''} |"
    )
  return "\n".join(lines)


def _pair(runs: list[dict[str, Any]], dataset: str) -> list[tuple[dict | None, dict | None]]:
  """Pairs each local-entropy run with a baseline run of the same model and data."""
  entropy = [r for r in runs if r["optimizer"] in FAMILY_BASELINE]
  baselines = [r for r in runs if r["optimizer"] not in FAMILY_BASELINE]
  rows = []
  for run in entropy:
    preferred = [PAPER_BASELINE.get(dataset), FAMILY_BASELINE[run["optimizer"]]]
    match = next((b for n in preferred for b in baselines if b["optimizer"] == n), None)
    if match is None and baselines:
      match = baselines[0]
    if match is not None:
      baselines.remove(match)
    rows.append((run, match))
  rows.extend((None, b) for b in baselines)
  return rows


def text_loss(run: Mapping[str, Any], key: str = "heldout_loss") -> str:
  """A language model's loss per seed ``run[key]`` (nats per token) as the paper reports it:
  word perplexity (PTB), or nats and bits per character; mean ± std over seeds (seeds)."""
  nats = np.asarray(run[key], np.float64)  # a diverged seed's: NaN (null in results.json)
  nats = nats[np.isfinite(nats)]
  if not len(nats):
    return divergence_note(run) or "not finite"
  std = lambda a: float(np.std(a, ddof=1)) if len(a) > 1 else 0.0  # noqa: E731
  if run["dataset"].split(":")[0] in PERPLEXITY_DATASETS:
    ppl = np.exp(nats)
    return f"ppl {ppl.mean():.2f} ± {std(ppl):.2f} ({len(nats)})"
  bits = nats / np.log(2.0)
  return f"{nats.mean():.3f} ± {std(nats):.3f} nats, {bits.mean():.3f} bits ({len(nats)})"


def _cells(run: dict[str, Any] | None, synthetic: bool) -> list[str]:
  if run is None:
    return ["", "", "", ""]
  error = f"{run['test_error_mean']:.2f} ± {run['test_error_std']:.2f} ({len(run['seeds'])})"
  if "heldout_loss" in run:  # a language model: its test split's loss
    error = text_loss(run)
  if all_diverged(run):
    error = divergence_note(run)
  elif divergence_note(run):
    error += f", {divergence_note(run)}"
  paper = "" if synthetic else (run.get("paper") or "")
  return [name(run["optimizer"]), error, f"{run['effective_epochs']:g}", paper]


TABLE1_NOTE = (
  "Test error in %: mean ± standard deviation over seeds (number of seeds); language models: "
  "test word perplexity (PTB) or cross-entropy per character in nats and bits (the paper's "
  "char-LSTM figures are nats). Epochs are "
  "effective epochs (L x outer epochs for Entropy-*). Paper: Chaudhari et al. (2017), "
  "Table 1, error ± std (effective epochs); MNIST-1D: the benchmark's published test "
  "accuracy (Greydanus 2020)."
)


def table1(runs: list[dict[str, Any]]) -> str:
  """Finished runs (results.json contents with their ``path``) paired like the paper's Table 1:
  per model and data set within a directory, each Entropy-* run beside its baseline."""
  groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
  for run in runs:
    key = (str(pathlib.Path(run["path"]).parent), run["dataset"], run["model"])
    groups.setdefault(key, []).append(run)
  lines = [
    "| Model | Data | Entropy-* | error (%) | eff. epochs | paper | SGD / Adam | error (%) "
    "| epochs | paper |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for (_, dataset, model), group in groups.items():
    synthetic = dataset.startswith("synthetic:")
    base = dataset.removeprefix("synthetic:")
    data = name(base) + (" (synthetic)" if synthetic else "")
    for entropy, baseline in _pair(group, base):
      cells = [name(model), data, *_cells(entropy, synthetic), *_cells(baseline, synthetic)]
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def error_curves(
  records: Sequence[Mapping[str, Any]], key: str = "val_error", scale: float = 100.0
) -> tuple[np.ndarray, np.ndarray]:
  """Effective epochs (k,) and ``scale`` x ``key`` (seeds, k) of the evaluated records (by
  default the test error in %)."""
  evaluated = [r for r in records if key in r]
  seeds = sorted({r["seed"] for r in evaluated})
  x = np.array(sorted({r["effective_epochs"] for r in evaluated}))
  y = np.full((len(seeds), len(x)), np.nan)
  for r in evaluated:
    y[seeds.index(r["seed"]), np.searchsorted(x, r["effective_epochs"])] = scale * r[key]
  return x, y


def plot_error(
  panels: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
  path: str | os.PathLike,
  *,
  title: str | None = None,
  key: str = "val_error",
  scale: float = 100.0,
  ylabel: str = "test error (%)",
) -> None:
  """Test error (%) against effective epochs: one panel per entry of ``panels`` ({panel
  title: {line label: metrics records}}), each line the mean over seeds, their range shaded.
  ``key``, ``scale``, ``ylabel``: another evaluated metric (e.g. ``val_loss``)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
  for ax, (panel, runs) in zip(axes[0], panels.items()):
    for label, records in runs.items():
      x, y = error_curves(records, key, scale)
      kept = ~np.isnan(y).all(0)  # evaluations after every seed diverged: NaN
      x, y = x[kept], y[:, kept]
      if not len(x):
        continue
      (line,) = ax.plot(x, np.nanmean(y, axis=0), marker=".", label=label)
      if len(y) > 1:
        ax.fill_between(
          x, np.nanmin(y, axis=0), np.nanmax(y, axis=0), alpha=0.2, color=line.get_color()
        )
    ax.set(title=panel, xlabel="effective epochs", ylabel=ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # a run that diverged before evaluating has no line
      ax.legend()
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
