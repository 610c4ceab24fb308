"""Divergence: a seed whose training loss or parameters stop being finite.

The loop checks each call's training losses (every step's, already on the host) and whether the
parameters are still finite (one reduction on the device, fetched with the metrics), so a
divergence is caught at the call's record, at no extra host sync. A diverged seed keeps its
step in every later record (``diverged_at_step``); its evaluations are set to NaN (a model with
NaN parameters predicts class 0 everywhere, an accuracy that means nothing). Vmapped seeds that
are still finite go on; when every seed has diverged the run stops.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

DIVERGED_FIELD = "diverged_at_step"
# Evaluated metrics of a diverged seed: not measured (NaN), whatever the evaluation returned.
_EVALUATED = ("val_loss", "val_error", "val_bits", "val_perplexity")


@functools.partial(jax.jit, static_argnames="batched")
def params_finite(params: Any, *, batched: bool) -> jax.Array:
  """Whether every parameter is finite: a bool, or one per seed (leading axis) if ``batched``."""
  per_leaf = [
    jnp.isfinite(p).reshape(p.shape[0], -1).all(1) if batched else jnp.isfinite(p).all()
    for p in jax.tree.leaves(params)
  ]
  return jnp.stack(per_leaf).all(0)


def find(
  train_loss: np.ndarray,
  finite: np.ndarray,
  *,
  step: int,
  seeds: Sequence[int],
  batched: bool,
) -> dict[int, int]:
  """The seeds that diverged during a call and the step at which each did.

  Args:
    train_loss: the call's losses, (steps,) or (seeds, steps) when ``batched``.
    finite: ``params_finite`` after the call.
    step: outer steps done at the end of the call.
    seeds: the seeds, in the order of the leading axis.
    batched: whether the arrays have a leading seed axis.

  Returns:
    ``{seed: step}``: the first step whose loss is not finite (steps count from 1), or the
    call's last step when only the parameters are not finite.
  """
  losses = np.asarray(train_loss).reshape(len(seeds), -1)
  finite = np.asarray(finite).reshape(len(seeds))
  num_steps = losses.shape[1]
  out = {}
  for seed, loss, ok in zip(seeds, losses, finite):
    bad = np.flatnonzero(~np.isfinite(loss))
    if len(bad):
      out[int(seed)] = step - num_steps + int(bad[0]) + 1
    elif not ok:
      out[int(seed)] = step
  return out


def mark(records: Sequence[dict[str, Any]], diverged: Mapping[int, int]) -> None:
  """Marks the records of diverged seeds in place: their step, no evaluation."""
  for record in records:
    if record["seed"] in diverged:
      record[DIVERGED_FIELD] = diverged[record["seed"]]
      for name in _EVALUATED:
        if name in record:
          record[name] = float("nan")


def from_records(records: Sequence[Mapping[str, Any]]) -> dict[int, int]:
  """``{seed: step}`` of the seeds that diverged in ``records`` (a resumed run's)."""
  return {r["seed"]: r[DIVERGED_FIELD] for r in records if r.get(DIVERGED_FIELD) is not None}


def message(name: str, seed: int, step: int, hint: str) -> str:
  """The one line that reports a divergence."""
  return (
    f"{name}: seed {seed} diverged at step {step} (the training loss or the parameters are not "
    f"finite); {hint}"
  )
