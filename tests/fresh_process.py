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


def xla_flags(devices: int) -> str:
  """This process's XLA flags (the suite's, tests/conftest.py) with ``devices`` simulated CPU
  devices."""
  return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"


def run_check(script: str, *args: str, devices: int = 1, timeout_s: int = 900) -> dict:
  """The JSON report that ``tests/<script>`` prints last, run with ``devices`` simulated CPU
  devices; fails the test with the script's stderr if it fails."""
  env = dict(
    os.environ,
    XLA_FLAGS=xla_flags(devices),
    JAX_PLATFORMS="cpu",
    PYTHONPATH=str(REPO),
  )
  out = subprocess.run(
    [sys.executable, str(REPO / "tests" / script), *args],
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout_s,
    cwd=REPO,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])
