"""Two local processes of one MNIST-1D run (jax.distributed on 127.0.0.1) against one process.

    python tests/two_process_check.py WORKDIR

Runs, through the command line (``python -m experiments.mnist1d``), each bounded in time:

1. one process with 4 simulated CPU devices, ``--mesh data=4``: the reference;
2. two processes with 2 devices each (4 in all), ``--mesh data=4``: SIGTERM to process 1 alone
   once their first checkpoint is complete: both stop after the same call with a checkpoint of
   it;
3. ``--resume`` of those two, process 1 SIGKILLed once their next checkpoint is complete:
   process 0 stops by itself (a lost process);
4. ``--resume`` again, which finishes the run: it must equal the reference;
5. a missing process: process 0 started alone with ``--process-timeout-s 3``;
6. process 0 alone cannot append the records of step 24 (a full disk, injected): both stop after
   that call;
7. ``--resume`` of that run, in which process 0 alone fails its checkpoint save of step 32
   (injected inside orbax's collective save, where process 1 waits for it): both stop.

A process started as ``two_process_check.py --inject WHAT STEP ARGS...`` is a run of the script
with that failure injected (``records``: process 0's append of step STEP's records;
``checkpoint``: process 0's checkpoint save of step STEP).

Prints a JSON report (the final parameters' largest difference from the reference, the
records of both, what each process printed); tests/test_scale_out.py checks it.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from tests import fresh_process  # noqa: E402  (after the path above)

REPO = fresh_process.REPO
RUN = "mlp1d-entropy-sgd"
ARGS = [
  "--models", "mlp1d", "--optimizers", "entropy-sgd", "--recipe.entropy-sgd.langevin-steps", "2",
  "--num-train", "128", "--num-test", "64", "--batch-size", "32", "--num-seeds", "2",
  "--effective-epochs", "24", "--eval-every-effective-epochs", "2",
  "--recipe.entropy-sgd.steps-per-call", "4", "--no-progress", "--mesh", "data=4",
]  # fmt: skip
TIMEOUT_S = 240


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start(
  workdir: pathlib.Path, devices: int, *extra: str, inject=(), **env: str
) -> subprocess.Popen:
  """The script on ``workdir``; ``inject``: ``(what, step)`` of a failure to inject."""
  program = [sys.executable, "-m", "experiments.mnist1d"]
  if inject:
    program = [sys.executable, __file__, "--inject", *map(str, inject)]
  return subprocess.Popen(
    [*program, *ARGS, "--workdir", str(workdir), *extra],
    cwd=REPO,
    env=fresh_process.environment(devices, **env),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def two_processes(workdir: pathlib.Path, *extra: str, inject=()) -> list[subprocess.Popen]:
  address = f"127.0.0.1:{free_port()}"  # the loopback address only
  return [
    start(
      workdir,
      2,
      *extra,
      inject=inject,
      JAX_COORDINATOR_ADDRESS=address,
      JAX_NUM_PROCESSES="2",
      JAX_PROCESS_ID=str(i),
    )
    for i in range(2)
  ]


def finish(procs: list[subprocess.Popen]) -> list[dict]:
  """Each process's exit code, output (stdout and stderr) and stderr, and the seconds until it
  ended (from this call)."""
  out, began = [], time.monotonic()
  for p in procs:
    try:
      text, err = p.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
      p.kill()
      text, err = p.communicate()
    out.append(
      {
        "code": p.returncode,
        "output": (text + err)[-3000:],
        "stderr": err[-3000:],
        "seconds": time.monotonic() - began,
      }
    )
  return out


def final_params(workdir: pathlib.Path):
  from experiments.launch import final_state  # pylint: disable=g-import-not-at-top

  return final_state.load_final_variables(workdir / RUN)


def wait_for_checkpoint(
  procs: list[subprocess.Popen], checksums: pathlib.Path, after: int = -1
) -> None:
  """Waits until a checkpoint of the run after step ``after`` is complete (or a process ended,
  or the time is up)."""
  deadline = time.monotonic() + TIMEOUT_S
  while max(steps_saved(checksums), default=-1) <= after and time.monotonic() < deadline:
    if any(p.poll() is not None for p in procs):
      break
    time.sleep(0.02)


def steps_saved(checksums: pathlib.Path) -> list[int]:
  return sorted(int(p.stem) for p in checksums.glob("*.json"))


def signals(root: pathlib.Path, report: dict) -> None:
  """Phases 2-4, one run: SIGTERM, resume, SIGKILL, resume."""
  run = root / "two" / RUN
  checksums = run / "checkpoints.sha256"
  procs = two_processes(root / "two")
  wait_for_checkpoint(procs, checksums)
  report["term_first_checkpoints"] = steps_saved(checksums)
  if procs[1].poll() is None:
    os.kill(procs[1].pid, signal.SIGTERM)  # process 1 only: process 0 must hear of it
  report["terminated"] = finish(procs)
  report["terminated_checkpoints"] = steps_saved(checksums)
  report["terminated_last_step"] = records_keys(run)[-1][0]
  report["terminated_results"] = (run / "results.json").exists()
  procs = two_processes(root / "two", "--resume")
  wait_for_checkpoint(procs, checksums, after=max(report["terminated_checkpoints"], default=-1))
  report["killed_at_checkpoints"] = steps_saved(checksums)
  if procs[1].poll() is None:
    os.kill(procs[1].pid, signal.SIGKILL)  # process 1 only: process 0 must stop by itself
  report["killed"] = finish(procs)
  report["resumed"] = finish(two_processes(root / "two", "--resume"))


def missing(root: pathlib.Path, report: dict) -> None:
  """Phase 5."""
  address = f"127.0.0.1:{free_port()}"
  alone = start(
    root / "alone",
    2,
    "--process-timeout-s",
    "3",
    JAX_COORDINATOR_ADDRESS=address,
    JAX_NUM_PROCESSES="2",
    JAX_PROCESS_ID="0",
  )
  report["alone"] = finish([alone])
  report["alone_address"] = address


def write_failures(root: pathlib.Path, report: dict) -> None:
  """Phases 6 and 7."""
  run = root / "full" / RUN
  report["records_failed"] = finish(two_processes(root / "full", inject=("records", 24)))
  report["records_failed_keys"] = records_keys(run)
  report["records_failed_checkpoints"] = steps_saved(run / "checkpoints.sha256")
  resumed = two_processes(root / "full", "--resume", inject=("checkpoint", 32))
  report["checkpoint_failed"] = finish(resumed)
  report["checkpoint_failed_keys"] = records_keys(run)
  report["checkpoint_failed_checkpoints"] = steps_saved(run / "checkpoints.sha256")


def records_keys(run: pathlib.Path) -> list[list[int]]:
  lines = (run / "metrics.jsonl").read_text().splitlines()
  return [[r["step"], r["seed"]] for r in map(json.loads, lines)]


def run_with_failure(what: str, step: int, argv: list[str]) -> int:
  """The script with a full disk injected at ``step``: process 0's append of its records
  (``records``) or process 0's save of its checkpoint (``checkpoint``)."""
  import errno  # pylint: disable=g-import-not-at-top

  from experiments import mnist1d  # pylint: disable=g-import-not-at-top
  from experiments.run import checkpoints, directory  # pylint: disable=g-import-not-at-top

  full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  if what == "records":
    append = directory.append_records

    def failing_append(path, records):
      if records and records[0]["step"] == step:
        raise full
      append(path, records)

    directory.append_records = failing_append
  elif os.environ["JAX_PROCESS_ID"] == "0":
    save = checkpoints.ocp.CheckpointManager.save

    def failing_save(self, at, *args, **kwargs):
      if at == step:
        raise full
      return save(self, at, *args, **kwargs)

    checkpoints.ocp.CheckpointManager.save = failing_save
  return mnist1d.main(argv)


def main():
  if sys.argv[1] == "--inject":
    return run_with_failure(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
  root = pathlib.Path(sys.argv[1])
  report = {"phase_seconds": {}}
  began = time.monotonic()

  def timed(name):  # the seconds each phase took, for whoever trims the check
    nonlocal began
    report["phase_seconds"][name] = round(time.monotonic() - began, 1)
    began = time.monotonic()

  report["one"] = finish([start(root / "one", 4)])
  timed("one")
  signals(root, report)
  timed("signals")
  one, two = final_params(root / "one"), final_params(root / "two")
  import jax  # pylint: disable=g-import-not-at-top

  diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), one, two)
  report["max_param_diff"] = max(jax.tree.leaves(diffs))
  for name in ("one", "two"):
    lines = (root / name / RUN / "metrics.jsonl").read_text().splitlines()
    report[f"records_{name}"] = [json.loads(line) for line in lines]
    report[f"config_{name}"] = json.loads((root / name / RUN / "config.json").read_text())
  report["files_two"] = sorted(str(p.relative_to(root / "two")) for p in (root / "two").rglob("*"))
  missing(root, report)
  timed("missing")
  write_failures(root, report)
  timed("write_failures")
  print(json.dumps(report))


if __name__ == "__main__":
  sys.exit(main())
