"""Runs a check script of tests/ in a fresh process, where JAX starts with the simulated CPU
devices it needs (the device count is fixed when JAX starts), bounded in time."""

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
# What tests/conftest.py adds to XLA_FLAGS: LLVM's optimization level 0, which halves compile times.
FAST_COMPILE_FLAG = "--xla_backend_optimization_level=0"


def environment(devices: int, **extra: str) -> dict[str, str]:
  """This process's environment for a fresh JAX process on the CPU with ``devices`` simulated
  devices: the suite's XLA flags (tests/conftest.py) kept, the repository importable, ``extra``
  added."""
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
  return dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), **extra)


def run_check(script: str, *args: str, devices: int = 1, timeout_s: int = 900) -> dict:
  """The JSON report that ``tests/<script>`` prints last, run with ``devices`` simulated CPU
  devices; fails the test with the script's stderr if it fails."""
  out = subprocess.run(
    [sys.executable, str(REPO / "tests" / script), *args],
    env=environment(devices),
    capture_output=True,
    text=True,
    timeout=timeout_s,
    cwd=REPO,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])
