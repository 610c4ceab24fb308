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
) -> dict[str, Any]:
  """The results of a finished run from all its metrics records (resumed or not).

  Errors are in %, on the test split. ``test_error_std`` is the sample standard deviation over
  seeds (0 for one seed). ``time_per_effective_epoch_s`` leaves out the first call
  (compilation) when there are later ones. ``val_loss``: the final loss per seed on the
  evaluated split (nats per token for a language model). ``heldout``: the metrics of a split
  evaluated once at the end (a text's test split, the evaluated one being its validation
  split), stored as ``heldout_loss`` (and ``heldout_error``, in % like ``test_error``) per seed.
  """
  seeds = sorted({r["seed"] for r in records})
  final = [max((r for r in records if r["seed"] == s), key=lambda r: r["step"]) for s in seeds]
  errors = [100 * r["val_error"] for r in final]
  best = [
    100 * min(r["val_error"] for r in records if r["seed"] == s and "val_error" in r) for s in seeds
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
    "test_error": errors,
    "test_error_mean": float(np.mean(errors)),
    "test_error_std": float(np.std(errors, ddof=1)) if len(errors) > 1 else 0.0,
    "best_test_error_mean": float(np.mean(best)),
    "final_train_loss": [r["train_loss"] for r in final],
    "outer_epochs": final[0]["epoch"],
    "effective_epochs": effective,
    "outer_steps": steps,
    "langevin_steps": langevin_steps,
    "wall_time_s": wall,
    "time_per_step_s": per_step,
    "time_per_effective_epoch_s": per_step * steps / effective,
    "paper": paper,
    **_per_seed("val_loss", [r.get("val_loss", np.nan) for r in final]),
  }
  if heldout is not None:
    out.update(_per_seed("heldout_loss", np.atleast_1d(heldout["val_loss"]).tolist()))
    out.update(_per_seed("heldout_error", (100 * np.atleast_1d(heldout["val_error"])).tolist()))
  return out


def _per_seed(key: str, values: Sequence[float]) -> dict[str, Any]:
  """``key`` (a value per seed), its mean and its sample standard deviation."""
  values = [float(v) for v in values]
  std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return {key: values, f"{key}_mean": float(np.mean(values)), f"{key}_std": std}


def format_result(results: Mapping[str, Any]) -> str:
  """One line: test error mean ± std over seeds, effective epochs, wall time, speed (a
  language model: validation and test loss, ``text_loss``)."""
  n = len(results["seeds"])
  paper = f"; paper: {results['paper']}" if results.get("paper") else ""
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
    lines.append(
      f"| {name(model)} | {name(optimizer)} | {100 - r['test_error_mean']:.1f} ± "
      f"{r['test_error_std']:.1f} | {100 - r['best_test_error_mean']:.1f} | "
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
  nats = np.asarray(run[key], np.float64)
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
      if not len(x):
        continue
      (line,) = ax.plot(x, np.nanmean(y, axis=0), marker=".", label=label)
      if len(y) > 1:
        ax.fill_between(
          x, np.nanmin(y, axis=0), np.nanmax(y, axis=0), alpha=0.2, color=line.get_color()
        )
    ax.set(title=panel, xlabel="effective epochs", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
