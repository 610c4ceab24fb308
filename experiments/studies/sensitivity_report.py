"""The sensitivity study: runs a ``SensitivityGrid``, says what won, tabulates and plots it.

``run_study`` trains, per model, Entropy-SGD's grid (gamma0 x Langevin step x noise, all seeds)
for each L as one jitted vmapped program (``sensitivity_training.train_grid``), and the baselines at
the same effective epochs (SGD over learning rates, SGLD over eta, smoothing-SGD over sigma),
each also one program; optionally the first Entropy-SGD block again one run after another
(``throughput_check``). ``summary_lines`` / ``point_table`` are the printed report,
``plot_heatmaps`` the figure. Seconds in time-to-target are the block's running time
(compilation excluded) shared equally among its runs: per run, as if run alone at that rate.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from experiments.configs.sensitivity import SensitivityGrid
from experiments.reporting import summaries, time_to_target
from experiments.studies import sensitivity_training

FLAT_TOLERANCE = 0.01  # "flat": grid points within 1 accuracy point of the best


def _block(final: np.ndarray, curves: np.ndarray, points: list[dict], timings: dict) -> dict:
  mean = final.mean(1)
  return {
    "points": points,
    "final_accuracy": final.tolist(),
    "mean_curve": curves.mean(1).tolist(),
    "best_index": int(np.argmax(mean)),
    **timings,
  }


def _entropy_grid(grid: SensitivityGrid) -> tuple[list[dict], dict[str, np.ndarray]]:
  points = [
    {"gamma0": g, "langevin_lr": lr, "noise": n}
    for g, lr, n in itertools.product(grid.gamma0, grid.langevin_lr, grid.noise)
  ]
  arrays = {
    "gamma": np.array([p["gamma0"] for p in points]),
    "langevin_lr": np.array([p["langevin_lr"] for p in points]),
    "noise": np.array([p["noise"] for p in points]),
    "learning_rate": np.full(len(points), grid.learning_rate),
  }
  return points, arrays


def run_study(
  grid: SensitivityGrid,
  data: sensitivity_training.Data,
  log: Callable[[str], None] = print,
  mesh=None,
) -> dict[str, Any]:
  """Trains every block of ``grid`` (each program's seeds split over ``mesh``'s ``seed`` axis,
  if given); returns the JSON-ready results (see the module doc)."""
  start = time.perf_counter()
  num_train = data[0].shape[0]
  common = dict(
    seeds=grid.seeds,
    effective_epochs=grid.effective_epochs,
    batch_size=grid.batch_size,
    num_evals=grid.num_evals,
  )
  results: dict[str, Any] = {"grid": dataclasses.asdict(grid), "models": {}, "num_train": num_train}

  def train(model, optimizer, arrays, points, label, **kwargs):
    timings: dict[str, float] = {}
    curves = sensitivity_training.train_grid(
      model,
      data,
      optimizer,
      arrays,
      timings=timings,
      fast_compile=model in grid.fast_compile,
      mesh=mesh,
      **common,
      **kwargs,
    )
    runs = len(points) * grid.seeds
    log(
      f"  {label}: {runs} runs in one program, compile {timings['compile_s']:.1f} s + run "
      f"{timings['run_s']:.1f} s; best mean final accuracy {curves[..., -1].mean(1).max():.3f}"
    )
    return _block(curves[..., -1], curves, points, timings)

  entropy_points, entropy_arrays = _entropy_grid(grid)
  for model in grid.models:
    log(f"{model}:")
    blocks: dict[str, Any] = {}
    for steps in grid.langevin_steps:
      blocks[f"entropy_sgd L={steps}"] = train(
        model,
        "entropy_sgd",
        entropy_arrays,
        entropy_points,
        f"Entropy-SGD L={steps}",
        num_langevin_steps=steps,
        outer_momentum=0.9,
      )
    sgd_points = [{"learning_rate": lr} for lr in grid.sgd_learning_rates]
    blocks["sgd"] = train(
      model, "sgd", {"learning_rate": grid.sgd_learning_rates}, sgd_points, "SGD"
    )
    sgld_points = [
      {"learning_rate": lr, "decay_power": 0.55, "temperature": 1 / num_train}
      for lr in grid.sgld_learning_rates
    ]
    sgld_arrays = {k: [p[k] for p in sgld_points] for k in sensitivity_training.SGLD_KEYS}
    blocks["sgld"] = train(model, "sgld", sgld_arrays, sgld_points, "SGLD")
    best_sgd_lr = grid.sgd_learning_rates[blocks["sgd"]["best_index"]]
    smooth_points = [{"sigma": s, "learning_rate": best_sgd_lr} for s in grid.smoothing_sigmas]
    smooth_arrays = {k: [p[k] for p in smooth_points] for k in sensitivity_training.SMOOTHING_KEYS}
    blocks[f"smoothing_sgd L={grid.smoothing_langevin_steps}"] = train(
      model,
      "smoothing_sgd",
      smooth_arrays,
      smooth_points,
      f"smoothing-SGD L={grid.smoothing_langevin_steps}",
      num_langevin_steps=grid.smoothing_langevin_steps,
    )
    results["models"][model] = {"blocks": blocks, **_verdict(grid, blocks)}
  if grid.throughput_check:
    results["throughput"] = _throughput(grid, data, entropy_arrays, common, results, log)
  results["wall_s"] = time.perf_counter() - start
  return results


def summarise(entropy_final: np.ndarray, sgd_final: np.ndarray, tolerance: float = 0.01):
  """Where Entropy-SGD beats the best SGD, and how flat its grid is.

  Args:
    entropy_final: (grid points, seeds) final test accuracy of Entropy-SGD.
    sgd_final: (learning rates, seeds) of SGD.
    tolerance: "flat" counts grid points within this accuracy of Entropy-SGD's best mean.

  Returns:
    dict: best SGD mean, Entropy-SGD best mean, indices of grid points whose mean beats the best
    SGD by more than two standard errors of the difference, and the flat fraction.
  """
  sgd_mean = sgd_final.mean(1)
  best = int(np.argmax(sgd_mean))
  sgd_se = sgd_final[best].std(ddof=1) / np.sqrt(sgd_final.shape[1])
  mean = entropy_final.mean(1)
  se = entropy_final.std(1, ddof=1) / np.sqrt(entropy_final.shape[1])
  beats = np.nonzero(mean - sgd_mean[best] > 2 * np.sqrt(se**2 + sgd_se**2))[0]
  return {
    "best_sgd": float(sgd_mean[best]),
    "best_sgd_index": best,
    "best_entropy": float(mean.max()),
    "beats_best_sgd": beats.tolist(),
    "flat_fraction": float(np.mean(mean >= mean.max() - tolerance)),
  }


def _verdict(grid: SensitivityGrid, blocks: dict[str, Any]) -> dict[str, Any]:
  """Where Entropy-SGD beats the best SGD, how flat its grid is, and time to target."""
  sgd_final = np.array(blocks["sgd"]["final_accuracy"])
  summaries = {}
  for name, block in blocks.items():
    if name.startswith("entropy_sgd"):
      final = np.array(block["final_accuracy"])
      summary = summarise(final, sgd_final, FLAT_TOLERANCE)
      summary["spread"] = float(final.mean(1).max() - final.mean(1).min())
      summaries[name] = summary
  best = {n: float(np.array(b["final_accuracy"]).mean(1).max()) for n, b in blocks.items()}
  target = time_to_target.accuracy_target(list(best.values()))
  epochs = [(i + 1) * grid.effective_epochs / grid.num_evals for i in range(grid.num_evals)]
  times = {}
  for name, block in blocks.items():
    per_run_s = block["run_s"] / (len(block["points"]) * grid.seeds)
    seconds = [per_run_s * (i + 1) / grid.num_evals for i in range(grid.num_evals)]
    curve = block["mean_curve"][block["best_index"]]
    e, s = time_to_target.time_to_target(curve, epochs, seconds, target)
    times[name] = {"effective_epochs": e, "seconds": s}
  return {"summary": summaries, "target_accuracy": target, "time_to_target": times}


def _throughput(grid, data, arrays, common, results, log) -> dict[str, Any]:
  """The first model's first-L Entropy-SGD block again, one run after another."""
  model, steps = grid.models[0], grid.langevin_steps[0]
  timings: dict[str, float] = {}
  curves = sensitivity_training.train_grid(
    model,
    data,
    "entropy_sgd",
    arrays,
    num_langevin_steps=steps,
    outer_momentum=0.9,
    timings=timings,
    fast_compile=model in grid.fast_compile,
    one_program=False,
    **common,
  )
  vmapped = results["models"][model]["blocks"][f"entropy_sgd L={steps}"]
  difference = np.abs(curves[..., -1] - np.array(vmapped["final_accuracy"])).max()
  out = {
    "model": model,
    "langevin_steps": steps,
    "runs": int(curves.shape[0] * curves.shape[1]),
    "vmapped_compile_s": vmapped["compile_s"],
    "vmapped_run_s": vmapped["run_s"],
    "sequential_compile_s": timings["compile_s"],
    "sequential_run_s": timings["run_s"],
    "speedup": timings["run_s"] / vmapped["run_s"],
    "max_final_accuracy_difference": float(difference),
  }
  with_compile = (timings["compile_s"] + timings["run_s"]) / (
    vmapped["compile_s"] + vmapped["run_s"]
  )
  out["speedup_with_compile"] = with_compile
  log(
    f"throughput ({model}, Entropy-SGD L={steps}, {out['runs']} runs): one vmapped program "
    f"{out['vmapped_run_s']:.1f} s (+{out['vmapped_compile_s']:.1f} s compile), one after "
    f"another {out['sequential_run_s']:.1f} s (+{out['sequential_compile_s']:.1f} s): "
    f"vmapped is {out['speedup']:.2f}x the speed ({with_compile:.2f}x counting compilation"
    f"{'' if with_compile > 1.1 else ': batching the grid does not pay on this device'})"
  )
  return out


def _name(block: str) -> str:
  label, _, steps = block.partition(" ")
  return summaries.name(label.replace("_", "-")) + (f" ({steps})" if steps else "")


def _setting(point: dict) -> str:
  return ", ".join(f"{k} {v:.3g}" for k, v in point.items())


def summary_lines(results: dict[str, Any]) -> list[str]:
  """The study's table (best setting per optimizer) and its verdict, as Markdown lines."""
  lines = [
    "| model | optimizer | best setting | final test accuracy (%) | grid range (%) | within 1 "
    "point of best | time to target (eff. epochs / s per run) |",
    "|---|---|---|---|---|---|---|",
  ]
  verdict = []
  for model, r in results["models"].items():
    for name, block in r["blocks"].items():
      final = np.array(block["final_accuracy"])
      mean, best = final.mean(1), block["best_index"]
      t = r["time_to_target"][name]
      reached = f"{t['effective_epochs']:g} / {t['seconds']:.2f}"
      if np.isnan(t["seconds"]):
        reached = "not reached"
      flat = f"{np.mean(mean >= mean.max() - FLAT_TOLERANCE):.0%}"
      lines.append(
        f"| {summaries.name(model)} | {_name(name)} | {_setting(block['points'][best])} | "
        f"{100 * mean[best]:.1f} ± {100 * final[best].std(ddof=1):.1f} | "
        f"{100 * mean.min():.1f}-{100 * mean.max():.1f} | {flat} | {reached} |"
      )
    for name, s in r["summary"].items():
      beats = s["beats_best_sgd"]
      where = (
        "beats the best SGD at "
        + "; ".join(_setting(r["blocks"][name]["points"][i]) for i in beats)
        if beats
        else "beats the best SGD nowhere (by two standard errors)"
      )
      verdict.append(
        f"- {summaries.name(model)}, {_name(name)}: best {100 * s['best_entropy']:.1f}% vs best "
        f"SGD {100 * s['best_sgd']:.1f}%; {where}; {s['flat_fraction']:.0%} of the grid within "
        f"1 point of its best, spread {100 * s['spread']:.1f} points."
      )
    verdict.append(
      f"- {summaries.name(model)}: target {100 * r['target_accuracy']:.1f}% "
      f"({time_to_target.TARGET_FRACTION:g} x the best final accuracy)."
    )
  return lines + [""] + verdict


def plot_heatmaps(results: dict[str, Any], path: str | os.PathLike) -> None:
  """Mean final test accuracy of Entropy-SGD over gamma0 x Langevin step: a row per model, a
  panel per (L, noise)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  grid = results["grid"]
  columns = list(itertools.product(grid["langevin_steps"], grid["noise"]))
  rows = list(results["models"])
  fig, axes = plt.subplots(
    len(rows), len(columns), figsize=(3.2 * len(columns), 2.8 * len(rows)), squeeze=False
  )
  shape = (len(grid["gamma0"]), len(grid["langevin_lr"]), len(grid["noise"]))
  for i, model in enumerate(rows):
    for j, (steps, noise) in enumerate(columns):
      block = results["models"][model]["blocks"][f"entropy_sgd L={steps}"]
      accuracy = 100 * np.array(block["final_accuracy"]).mean(1).reshape(shape)
      values = accuracy[:, :, grid["noise"].index(noise)]
      ax = axes[i, j]
      image = ax.imshow(values, cmap="viridis", origin="lower", aspect="auto")
      for (a, b), v in np.ndenumerate(values):
        ax.text(b, a, f"{v:.1f}", ha="center", va="center", color="w", fontsize=8)
      ax.set_xticks(range(shape[1]), [f"{v:g}" for v in grid["langevin_lr"]])
      ax.set_yticks(range(shape[0]), [f"{v:g}" for v in grid["gamma0"]])
      ax.set(xlabel="Langevin step", ylabel="gamma0")
      ax.set_title(f"{summaries.name(model)} L={steps} noise {noise:g}", fontsize=9)
      fig.colorbar(image, ax=ax, label="test acc. (%)")
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
