"""Tables across runs: the MNIST-1D job's (``comparison_table``), the language models'
(``language_model_table``), and finished runs paired like the paper's Table 1 (``table1``).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from experiments.reporting import display_names, summaries

# The baselines the paper compared Entropy-SGD with, and each family's own.
PAPER_BASELINE = {"mnist": "adam", "fashion_mnist": "adam", "cifar10": "sgd", "ptb": "sgd"}
FAMILY_BASELINE = {"entropy-sgd": "sgd", "entropy-adam": "adam", "entropy-sgd-lua": "sgd"}


def _format_time(time: Mapping[str, float] | None) -> str:
  if time is None:
    return ""
  if time.get("diverged_at_step") is not None:
    return f"diverged at step {time['diverged_at_step']}"
  if np.isnan(time["effective_epochs"]):
    return "not reached"
  # Evaluations fall on whole outer steps: 2.00855 effective epochs reads as 2.01.
  epochs = time["effective_epochs"]
  return (
    f"{epochs:.3g} / {time['seconds']:.0f}"
    if epochs < 100
    else f"{epochs:.0f} / {time['seconds']:.0f}"
  )


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
    if r.get("paper") and summaries.is_benchmark_figure(r["paper"]):
      published = f"{100 - float(r['paper'].split()[0]):.1f}"
    note = summaries.divergence_note(r)
    if summaries.all_diverged(r):
      accuracy, best = note, ""
    else:
      accuracy = f"{100 - r['test_error_mean']:.1f} ± {r['test_error_std']:.1f}"
      accuracy += f" ({note})" if note else ""
      best = f"{100 - r['best_test_error_mean']:.1f}"
    lines.append(
      f"| {display_names.name(model)} | {display_names.name(optimizer)} | {accuracy} | {best} | "
      f"{r['effective_epochs']:g} | {r['outer_steps']} | {summaries.seed_count(r)} | "
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
      f"| {display_names.name(model)} | {display_names.name(optimizer)} | "
      f"{summaries.text_loss(r, 'val_loss')} | {summaries.text_loss(r)} | "
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


def _cells(run: dict[str, Any] | None, synthetic: bool) -> list[str]:
  if run is None:
    return ["", "", "", ""]
  error = (
    f"{run['test_error_mean']:.2f} ± {run['test_error_std']:.2f} ({summaries.seed_count(run)})"
  )
  if "heldout_loss" in run:  # a language model: its test split's loss
    error = summaries.text_loss(run)
  if summaries.all_diverged(run):
    error = summaries.divergence_note(run)
  elif summaries.divergence_note(run):
    error += f", {summaries.divergence_note(run)}"
  paper = "" if synthetic else (run.get("paper") or "")
  return [display_names.name(run["optimizer"]), error, f"{run['effective_epochs']:g}", paper]


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
    data = display_names.name(base) + (" (synthetic)" if synthetic else "")
    for entropy, baseline in _pair(group, base):
      cells = [display_names.name(model), data, *_cells(entropy, synthetic)]
      cells += _cells(baseline, synthetic)
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)
