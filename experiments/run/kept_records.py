"""A verified copy of a run's records with each checkpoint: metrics.jsonl may be damaged, the
records up to a checkpoint are not lost.

metrics.jsonl is appended after every call, so a kill, a full disk or a hand that edits it can
cut it anywhere. With every checkpoint of step N the run writes ``checkpoints.records/N.jsonl``
(the records of steps <= N, written to a temporary name and renamed) and ``N.sha256`` (its
SHA-256, written after it). ``records_up_to`` is what a resumed run continues with: the copy
of its checkpoint when it verifies, with one line saying which records it restored if the file
had lost them; without a verified copy (a run directory from before the copies), the records
in the file, with one line naming the records of steps <= N that are gone. Never silent.
"""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

from experiments.run import checkpoints as ckpt_lib
from experiments.run import directory

COPY_DIR = "checkpoints.records"


def _paths(workdir: pathlib.Path, step: int) -> tuple[pathlib.Path, pathlib.Path]:
  folder = pathlib.Path(workdir) / COPY_DIR
  return folder / f"{step}.jsonl", folder / f"{step}.sha256"


def write(workdir: pathlib.Path, step: int, records: Sequence[dict[str, Any]], keep: Sequence[int]):
  """Writes the copy of ``records`` (those of steps <= ``step``) for the checkpoint of
  ``step``, then deletes the copies of steps not in ``keep`` (the checkpoints kept)."""
  text = directory.records_text(records)
  copy, digest = _paths(workdir, step)
  copy.parent.mkdir(exist_ok=True)
  ckpt_lib.atomic_write(copy, text)
  ckpt_lib.atomic_write(digest, hashlib.sha256(text.encode()).hexdigest() + "\n")
  for path in copy.parent.iterdir():
    if path.suffix in (".jsonl", ".sha256") and path.stem.isdigit() and int(path.stem) not in keep:
      path.unlink(missing_ok=True)


def read(workdir: pathlib.Path, step: int) -> list[dict[str, Any]] | None:
  """The copy kept with the checkpoint of ``step``; None if it is absent or does not match
  its checksum."""
  copy, digest = _paths(workdir, step)
  try:
    data, expected = copy.read_bytes(), digest.read_text().strip()
  except OSError:
    return None
  if hashlib.sha256(data).hexdigest() != expected:
    return None
  return directory.parse_records(data.decode())[0]


def call_steps(step: int, steps_per_call: int) -> list[int]:
  """The steps that end the calls up to the checkpoint of ``step`` (a call ends at a multiple
  of ``steps_per_call``, or where the run ends): those of its records."""
  return sorted({*range(steps_per_call, step + 1, steps_per_call), step})


def _spans(steps: Sequence[int]) -> str:
  shown = ", ".join(map(str, steps[:5]))
  return shown + (f" and {len(steps) - 5} more" if len(steps) > 5 else "")


def records_up_to(
  workdir: pathlib.Path,
  step: int,
  *,
  seeds: Sequence[int],
  steps_per_call: int,
  log: Callable[[str], None],
) -> list[dict[str, Any]]:
  """The records of steps <= ``step`` that a run resumed from its checkpoint of ``step``
  continues with; a line to ``log`` when metrics.jsonl had lost some of them (see the module
  docstring)."""
  path = pathlib.Path(workdir) / directory.METRICS_FILE
  on_file, bad_lines = directory.parse_records(path.read_text() if path.exists() else "")
  on_file = [r for r in on_file if r.get("step", step + 1) <= step]
  have = {(r["step"], r.get("seed")) for r in on_file}
  damage = f"line {bad_lines[0]} does not parse" if bad_lines else "it was cut short"
  copy = read(workdir, step)
  if copy is not None:
    restored = sorted({r["step"] for r in copy if (r["step"], r.get("seed")) not in have})
    if restored:
      log(
        f"{path} was damaged ({damage}): the records of steps {_spans(restored)} are restored "
        f"from the copy kept with the checkpoint of step {step}."
      )
    return copy
  gone = sorted(
    {s for s in call_steps(step, steps_per_call) for seed in seeds if (s, seed) not in have}
  )
  if gone:
    log(
      f"{path} is damaged ({damage}) and the checkpoint of step {step} has no verified copy "
      f"of it: the records of steps {_spans(gone)} are gone (the run continues from step "
      f"{step}; its tables and plots miss them)."
    )
  return on_file


def finished_records(workdir: pathlib.Path, log: Callable[[str], None]) -> list[dict[str, Any]]:
  """A finished run's records: those up to its newest checkpoint with a verified copy (with a
  line to ``log`` if metrics.jsonl had lost some, as ``records_up_to``), then the file's."""
  folder = pathlib.Path(workdir) / COPY_DIR
  steps = sorted((int(p.stem) for p in folder.glob("*.sha256") if p.stem.isdigit()), reverse=True)
  step = next((s for s in steps if read(workdir, s) is not None), None)
  if step is None:
    return directory.read_records(workdir)
  later = [r for r in directory.read_records(workdir) if r.get("step", 0) > step]
  return records_up_to(workdir, step, seeds=(), steps_per_call=1, log=log) + later
