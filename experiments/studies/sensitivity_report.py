"""The sensitivity study: runs a ``SensitivityGrid``, says what won, tabulates and plots it.

``run_study`` trains, per model, the main job's recipes (``experiments/configs/mnist1d.py``, at
the grid's budget with the job's learning-rate drops: ``recipe``) over the grid's values:
Entropy-SGD over gamma0 x Langevin step x noise for each L, SGD over learning rates, SGLD over
eta, smoothing-SGD over sigma; each block one jitted vmapped program of all its points and seeds
(``sensitivity_training.train_grid``), and optionally the first Entropy-SGD block again one run
after another (``throughput_check``). ``summary_lines`` is the printed report,
``plot_heatmaps`` the figure. Seconds in time-to-target are the block's running time
(compilation excluded) shared equally among its runs: per run, as if run alone at that rate.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from experiments.configs import mnist1d
from experiments.configs.sensitivity import SensitivityGrid
from experiments.launch import comparison, components
from experiments.reporting import display_names, time_to_target
from experiments.run import grid_job
from experiments.run.schema import RunConfig
from experiments.studies import sensitivity_training

FLAT_TOLERANCE = 0.01  # "flat": grid points within 1 accuracy point of the best


def recipe(grid: SensitivityGrid, model: str, name: str, **changes: Any) -> RunConfig:
  """The main job's recipe ``name`` (with ``changes``) for ``model`` at the grid's budget, as
  the main job expands it (``comparison.expand``: outer epochs and learning-rate drops)."""
  job = grid_job.GridJob(
    models=(model,),
    optimizers=(name,),
    recipe={name: mnist1d.PRESETS[name].config.replace(**changes)},
    effective_epochs=grid.effective_epochs,
    lr_decay_at_fractions=mnist1d.LR_DECAY_AT_FRACTIONS,
    eval_every_effective_epochs=grid.effective_epochs / grid.num_evals,
    num_seeds=grid.seeds,
    seed=0,
    batch_size=grid.batch_size,
    num_train=grid.num_train,
    num_test=grid.num_test,
  )
  return comparison.expand(job, job)[model, name]


def _train(configs: Sequence[RunConfig], points: list[dict], label: str, fast_compile: bool, log):
  timings: dict[str, float] = {}
  curves = sensitivity_training.train_grid(configs, fast_compile=fast_compile, timings=timings)
  accuracy = 1 - curves.val_error  # (points, seeds, evaluations)
  final = accuracy[..., -1]
  log(
    f"  {label}: {final.size} runs in one program, compile {timings['compile_s']:.1f} s + run "
    f"{timings['run_s']:.1f} s; best mean final accuracy {final.mean(1).max():.3f}"
  )
  return {
    "recipe": dataclasses.asdict(configs[0]),
    "points": points,
    "final_accuracy": final.tolist(),
    "mean_curve": accuracy.mean(1).tolist(),
    "effective_epochs": list(curves.effective_epochs),
    "best_index": int(np.argmax(final.mean(1))),
    **timings,
  }


def _sweep(base: RunConfig, points: list[dict]) -> list[RunConfig]:
  return [base.replace(**p) for p in points]


def entropy_points(grid: SensitivityGrid) -> list[dict[str, float]]:
  return [
    {"gamma0": g, "langevin_lr": lr, "noise": n}
    for g, lr, n in itertools.product(grid.gamma0, grid.langevin_lr, grid.noise)
  ]


def run_study(grid: SensitivityGrid, log: Callable[[str], None] = print) -> dict[str, Any]:
  """Trains every block of ``grid``; returns the JSON-ready results (see the module doc)."""
  start = time.perf_counter()
  ds = components.load_data(recipe(grid, grid.models[0], "sgd"))
  results: dict[str, Any] = {
    "grid": dataclasses.asdict(grid),
    "models": {},
    "num_train": len(ds.train_x),
    "num_test": len(ds.test_x),
  }
  for model in grid.models:
    log(f"{model}:")
    fast = model in grid.fast_compile
    blocks: dict[str, Any] = {}
    points = entropy_points(grid)
    for steps in grid.langevin_steps:
      base = recipe(grid, model, "entropy-sgd", langevin_steps=steps)
      label = f"entropy-sgd L={steps}"
      blocks[label] = _train(_sweep(base, points), points, label, fast, log)
    points = [{"learning_rate": lr} for lr in grid.sgd_learning_rates]
    blocks["sgd"] = _train(_sweep(recipe(grid, model, "sgd"), points), points, "sgd", fast, log)
    points = [{"learning_rate": lr} for lr in grid.sgld_learning_rates]
    blocks["sgld"] = _train(_sweep(recipe(grid, model, "sgld"), points), points, "sgld", fast, log)
    best_sgd_lr = grid.sgd_learning_rates[blocks["sgd"]["best_index"]]
    points = [{"smoothing_sigma": s, "learning_rate": best_sgd_lr} for s in grid.smoothing_sigmas]
    steps = grid.smoothing_langevin_steps
    base = recipe(grid, model, "smoothing-sgd", langevin_steps=steps)
    label = f"smoothing-sgd L={steps}"
    blocks[label] = _train(_sweep(base, points), points, label, fast, log)
    results["models"][model] = {"blocks": blocks, **_verdict(grid, blocks)}
  if grid.throughput_check:
    results["throughput"] = _throughput(grid, results, log)
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
  verdicts = {}
  for name, block in blocks.items():
    if name.startswith("entropy-sgd"):
      final = np.array(block["final_accuracy"])
      summary = summarise(final, sgd_final, FLAT_TOLERANCE)
      summary["spread"] = float(final.mean(1).max() - final.mean(1).min())
      verdicts[name] = summary
  best = {n: float(np.array(b["final_accuracy"]).mean(1).max()) for n, b in blocks.items()}
  target = time_to_target.accuracy_target(list(best.values()))
  times = {}
  for name, block in blocks.items():
    epochs = block["effective_epochs"]
    per_run_s = block["run_s"] / (len(block["points"]) * grid.seeds)
    seconds = [per_run_s * e / epochs[-1] for e in epochs]
    curve = block["mean_curve"][block["best_index"]]
    e, s = time_to_target.time_to_target(curve, epochs, seconds, target)
    times[name] = {"effective_epochs": e, "seconds": s}
  return {"summary": verdicts, "target_accuracy": target, "time_to_target": times}


def _throughput(grid: SensitivityGrid, results: dict[str, Any], log) -> dict[str, Any]:
  """The first model's first-L Entropy-SGD block again, one run after another."""
  model, steps = grid.models[0], grid.langevin_steps[0]
  timings: dict[str, float] = {}
  base = recipe(grid, model, "entropy-sgd", langevin_steps=steps)
  curves = sensitivity_training.train_grid(
    _sweep(base, entropy_points(grid)),
    one_program=False,
    fast_compile=model in grid.fast_compile,
    timings=timings,
  )
  vmapped = results["models"][model]["blocks"][f"entropy-sgd L={steps}"]
  final = 1 - curves.val_error[..., -1]
  difference = np.abs(final - np.array(vmapped["final_accuracy"])).max()
  out = {
    "model": model,
    "langevin_steps": steps,
    "runs": int(final.size),
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
  return display_names.name(label) + (f" ({steps})" if steps else "")


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
        f"| {display_names.name(model)} | {_name(name)} | {_setting(block['points'][best])} | "
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
        f"- {display_names.name(model)}, {_name(name)}: best {100 * s['best_entropy']:.1f}% vs "
        f"best SGD {100 * s['best_sgd']:.1f}%; {where}; {s['flat_fraction']:.0%} of the grid "
        f"within 1 point of its best, spread {100 * s['spread']:.1f} points."
      )
    verdict.append(
      f"- {display_names.name(model)}: target {100 * r['target_accuracy']:.1f}% "
      f"({time_to_target.TARGET_FRACTION:g} x the best final accuracy)."
    )
  return lines + [""] + verdict


def plot_heatmaps(results: dict[str, Any], path: str | os.PathLike) -> None:
  """Mean final test accuracy of Entropy-SGD over gamma0 x Langevin step: a row per model, a
  panel per (L, noise)."""
  grid = results["grid"]
  columns = list(itertools.product(grid["langevin_steps"], grid["noise"]))
  rows = list(results["models"])
  fig = Figure(figsize=(3.2 * len(columns), 2.8 * len(rows)))
  axes = fig.subplots(len(rows), len(columns), squeeze=False)
  shape = (len(grid["gamma0"]), len(grid["langevin_lr"]), len(grid["noise"]))
  for i, model in enumerate(rows):
    for j, (steps, noise) in enumerate(columns):
      block = results["models"][model]["blocks"][f"entropy-sgd L={steps}"]
      accuracy = 100 * np.array(block["final_accuracy"]).mean(1).reshape(shape)
      values = accuracy[:, :, grid["noise"].index(noise)]
      ax = axes[i, j]
      image = ax.imshow(values, cmap="viridis", origin="lower", aspect="auto")
      for (a, b), v in np.ndenumerate(values):
        ax.text(b, a, f"{v:.1f}", ha="center", va="center", color="w", fontsize=8)
      ax.set_xticks(range(shape[1]), [f"{v:g}" for v in grid["langevin_lr"]])
      ax.set_yticks(range(shape[0]), [f"{v:g}" for v in grid["gamma0"]])
      ax.set(xlabel="Langevin step", ylabel="gamma0")
      ax.set_title(f"{display_names.name(model)} L={steps} noise {noise:g}", fontsize=9)
      fig.colorbar(image, ax=ax, label="test acc. (%)")
  fig.tight_layout()
  fig.savefig(path, dpi=80)
