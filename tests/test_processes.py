"""The check-in of a run's processes before jax.distributed (experiments/run/processes.py), with
threads standing in for processes on 127.0.0.1; the two-process cases end to end are in
tests/test_scale_out.py."""

from __future__ import annotations

import socket
import threading

import pytest

from experiments.run import processes
from experiments.run.schema import ConfigError


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))  # the loopback address only
    return s.getsockname()[1]


def join_in_threads(num_processes: int, ids, timeout_s: float) -> dict[int, BaseException | None]:
  """``processes.join`` of each id in ``ids`` (one thread each) at one free 127.0.0.1 port:
  what each raised (None: joined)."""
  address = f"127.0.0.1:{free_port()}"
  outcome: dict[int, BaseException | None] = {}

  def one(index: int, process_id: int) -> None:
    try:
      processes.join(address, num_processes, process_id, timeout_s)
      outcome[index] = None
    except ConfigError as e:
      outcome[index] = e

  threads = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(ids)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=timeout_s + 30)
  outcome["address"] = address
  return outcome


def test_every_process_joins():
  outcome = join_in_threads(3, [0, 1, 2], timeout_s=20)
  assert [outcome[i] for i in range(3)] == [None, None, None]


def test_a_missing_process_is_named_after_the_timeout():
  outcome = join_in_threads(3, [0, 1], timeout_s=1)
  address = outcome["address"]
  assert str(outcome[0]) == (
    f"process(es) 2 of 3 did not join the run at {address} within 1 s: start every process "
    f"with --coordinator-address {address} --num-processes 3 and its own --process-id, or wait "
    "longer with --process-timeout-s."
  )
  assert str(outcome[1]).startswith(
    f"process 0 at {address} did not start the run (other processes missing): "
  )


def test_no_process_0_and_a_duplicate_id():
  outcome = join_in_threads(2, [1], timeout_s=0.5)
  assert str(outcome[0]).startswith(
    f"process 0 of the run did not answer at {outcome['address']} within 0.5 s: "
  )
  outcome = join_in_threads(3, [0, 1, 1], timeout_s=5)
  assert "as --process-id 1 of --num-processes 3, which this run of 3 already has" in str(
    outcome[0]
  )


def test_a_lost_peer_is_recognised_in_the_error_chain():
  gloo = ValueError(
    "UNKNOWN: Gloo AllGather failed: [external/gloo/gloo/transport/tcp/pair.cc:547] "
    "Connection closed by peer [127.0.0.1]:16268"
  )
  try:
    try:
      raise gloo
    finally:
      raise RuntimeError("a barrier after it")  # noqa: B012
  except RuntimeError as e:
    chained = e
  assert processes.lost_peer(chained) == (
    "another process of the run is gone (stopped or killed: Gloo AllGather failed: Connection "
    "closed by peer); this process stopped too: continue the run with --resume once every "
    "process runs again"
  )
  assert processes.lost_peer(RuntimeError("Gloo is fine")) is None
  assert not processes.is_alone(chained)  # one process: nothing to leave


def test_stop_together_with_one_process_raises_its_own_error():
  processes.stop_together(None)
  with pytest.raises(OSError, match="full"):
    processes.stop_together(OSError(28, "full"))
