"""Two local processes of one MNIST-1D run (jax.distributed on 127.0.0.1) against one process.

    python tests/two_process_check.py WORKDIR

Runs, through the command line (``python -m experiments.mnist1d``), each bounded in time:

1. one process with 4 simulated CPU devices, ``--mesh data=4``: the reference;
2. two processes with 2 devices each (4 in all), ``--mesh data=4``, SIGKILLed (both) once
   their first checkpoint is complete;
3. the same two processes with ``--resume``, which finish the run.

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

REPO = pathlib.Path(__file__).resolve().parents[1]
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


def start(workdir: pathlib.Path, devices: int, *extra: str, **env: str) -> subprocess.Popen:
  environ = dict(
    os.environ,
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=str(REPO),
    **env,
  )
  return subprocess.Popen(
    [sys.executable, "-m", "experiments.mnist1d", *ARGS, "--workdir", str(workdir), *extra],
    cwd=REPO,
    env=environ,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def two_processes(workdir: pathlib.Path, *extra: str) -> list[subprocess.Popen]:
  address = f"127.0.0.1:{free_port()}"  # the loopback address only
  return [
    start(
      workdir,
      2,
      *extra,
      JAX_COORDINATOR_ADDRESS=address,
      JAX_NUM_PROCESSES="2",
      JAX_PROCESS_ID=str(i),
    )
    for i in range(2)
  ]


def finish(procs: list[subprocess.Popen]) -> list[dict]:
  out = []
  for p in procs:
    try:
      text, _ = p.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
      p.kill()
      text, _ = p.communicate()
    out.append({"code": p.returncode, "output": text[-3000:]})
  return out


def final_params(workdir: pathlib.Path):
  from experiments.run import final_state  # pylint: disable=g-import-not-at-top

  return final_state.load_final_variables(workdir / RUN)


def main():
  root = pathlib.Path(sys.argv[1])
  report = {}
  report["one"] = finish([start(root / "one", 4)])
  procs = two_processes(root / "two")
  checksums = root / "two" / RUN / "checkpoints.sha256"
  deadline = time.monotonic() + TIMEOUT_S
  while not any(checksums.glob("*.json")) and time.monotonic() < deadline:
    if any(p.poll() is not None for p in procs):
      break
    time.sleep(0.02)
  killed_at = sorted(int(p.stem) for p in checksums.glob("*.json"))
  for p in procs:
    if p.poll() is None:
      os.kill(p.pid, signal.SIGKILL)
  report["killed"] = finish(procs)
  report["killed_at_checkpoints"] = killed_at
  report["killed_records"] = len((root / "two" / RUN / "metrics.jsonl").read_text().splitlines())
  report["resumed"] = finish(two_processes(root / "two", "--resume"))
  one, two = final_params(root / "one"), final_params(root / "two")
  import jax  # pylint: disable=g-import-not-at-top

  diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), one, two)
  report["max_param_diff"] = max(jax.tree.leaves(diffs))
  for name in ("one", "two"):
    lines = (root / name / RUN / "metrics.jsonl").read_text().splitlines()
    report[f"records_{name}"] = [json.loads(line) for line in lines]
    report[f"config_{name}"] = json.loads((root / name / RUN / "config.json").read_text())
  report["files_two"] = sorted(str(p.relative_to(root / "two")) for p in (root / "two").rglob("*"))
  print(json.dumps(report))


if __name__ == "__main__":
  sys.exit(main())
