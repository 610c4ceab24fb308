"""A run of several processes when one of them fails, is lost or never comes: one line each.

* ``join(address, num_processes, process_id, timeout_s)``: before ``jax.distributed`` starts,
  every process checks in with process 0 on the coordinator's port, so that a process that
  never comes is an error naming it after ``timeout_s`` (``--process-timeout-s``), not a silent
  wait and an abort. JAX gets the same timeout for its own heartbeats.
* ``stop_together(error)``: a failure of one process outside the collective operations (e.g.
  process 0 alone cannot append its records) stops every process after the same call, each
  with one line: the failing one with its error, the others with ``ProcessError`` naming it.
* ``alone(error)``: marks a failure the other processes cannot hear of through a collective (a
  checkpoint save failed inside orbax's collective writes, where they wait for this one);
  ``is_alone`` also recognises a lost peer (a collective failed: gloo's connection to another
  process closed). A process that stops alone leaves at once (``leave_alone``), as waiting for
  the others in JAX's shutdown would never end; it first says why in the coordinator's
  key-value store, where every process's ``watch`` thread reads it (twice a second) and stops
  that process with a line naming it. Process 0, whose coordinator the others need to leave
  cleanly, waits for them (``LEAVE_WAIT_S`` at most) before it goes.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
import threading
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from experiments.run.run_options import RunOptions
from experiments.run.schema import ConfigError

DEFAULT_TIMEOUT_S = RunOptions.process_timeout_s
"""How long a run waits for a process to join, or hears nothing from one, before it stops."""
LEAVE_WAIT_S = 10.0
"""How long process 0, stopping alone, waits for the others to leave before it goes."""
_HELLO = b"entropy_optax join"
_MESSAGE_BYTES = 1024
_STOPPED_KEY = "entropy_optax/stopped"
_LEFT_KEY = "entropy_optax/left/"


class ProcessError(RuntimeError):
  """Another process of the run stopped it (its message says which and why)."""


def join(address: str, num_processes: int, process_id: int, timeout_s: float) -> None:
  """Waits until all ``num_processes`` processes have checked in at ``address`` (process 0
  listens on its port; the others connect), at most ``timeout_s`` seconds.

  Raises:
    ConfigError: a process did not come in time (naming it), or two claim the same id
      (``address`` is HOST:PORT, checked by ``distributed.initialize``).
  """
  host, _, port = address.rpartition(":")
  deadline = time.monotonic() + timeout_s
  if process_id == 0:
    _gather(host.strip("[]"), int(port), num_processes, deadline, address, timeout_s)
  else:
    _check_in(host.strip("[]"), int(port), num_processes, process_id, deadline, address, timeout_s)


def _missing_hint(address: str, num_processes: int) -> str:
  return (
    f"start every process with --coordinator-address {address} --num-processes "
    f"{num_processes} and its own --process-id, or wait longer with --process-timeout-s"
  )


def _gather(host, port, num_processes, deadline, address, timeout_s) -> None:
  joined: dict[int, socket.socket] = {}
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      server.bind((host, port))
    except OSError:  # not an address of this host (e.g. behind NAT): every interface, as JAX
      server.bind(("", port))
    server.listen(num_processes)
    try:
      while len(joined) < num_processes - 1:
        server.settimeout(max(0.01, deadline - time.monotonic()))
        try:
          conn, _ = server.accept()
        except TimeoutError:
          missing = sorted(set(range(1, num_processes)) - set(joined))
          raise ConfigError(
            f"process(es) {', '.join(map(str, missing))} of {num_processes} did not join the run "
            f"at {address} within {timeout_s:g} s: {_missing_hint(address, num_processes)}."
          ) from None
        conn.settimeout(5)
        words = conn.recv(256).split()
        if len(words) != 4 or b" ".join(words[:2]) != _HELLO or not words[2].isdigit():
          conn.close()  # not a process of this program: ignore it
          continue
        other, claimed = int(words[2]), int(words[3]) if words[3].isdigit() else -1
        if claimed != num_processes or other in joined or not 0 < other < num_processes:
          conn.sendall(b"refused")
          conn.close()
          raise ConfigError(
            f"a process joined {address} as --process-id {other} of --num-processes "
            f"{claimed}, which this run of {num_processes} already has or cannot have: "
            "give each process its own --process-id and the same --num-processes."
          )
        joined[other] = conn
      for conn in joined.values():
        conn.sendall(b"go")
      for conn in joined.values():  # they close first: the port stays free for JAX
        conn.settimeout(5)
        try:
          conn.recv(16)
        except OSError:
          pass
    finally:
      for conn in joined.values():
        conn.close()


def _check_in(host, port, num_processes, process_id, deadline, address, timeout_s) -> None:
  while True:
    try:
      conn = socket.create_connection((host, port), timeout=2)
      break
    except OSError:
      if time.monotonic() > deadline:
        raise ConfigError(
          f"process 0 of the run did not answer at {address} within {timeout_s:g} s: "
          f"{_missing_hint(address, num_processes)}."
        ) from None
      time.sleep(0.2)
  with conn:
    conn.sendall(b"%s %d %d" % (_HELLO, process_id, num_processes))
    conn.settimeout(max(1.0, deadline - time.monotonic() + 5))
    try:
      answer = conn.recv(16)
    except TimeoutError:
      answer = b""
    if answer != b"go":
      raise ConfigError(
        f"process 0 at {address} did not start the run "
        f"({'it refused this process' if answer == b'refused' else 'other processes missing'}): "
        f"{_missing_hint(address, num_processes)}."
      )


def stop_together(error: Exception | None) -> None:
  """Raises on every process if ``error`` (this process's failure, or None) happened on any:
  the failing process raises ``error``, the others a ``ProcessError`` naming the first process
  that failed, with its message. Every process must call it, in the same order."""
  if jax.process_count() == 1:
    if error is not None:
      raise error
    return
  failed = multihost_utils.process_allgather(np.int32(error is not None))
  if not np.any(failed):
    return
  text = " ".join(str(error).split()).encode()[:_MESSAGE_BYTES] if error is not None else b""
  message = np.zeros(_MESSAGE_BYTES, np.uint8)
  message[: len(text)] = np.frombuffer(text, np.uint8)
  messages = np.asarray(multihost_utils.process_allgather(message))
  if error is not None:
    raise error
  first = int(np.flatnonzero(np.asarray(failed))[0])
  said = bytes(messages[first]).rstrip(b"\0").decode(errors="replace")
  raise ProcessError(f"process {first} of the run stopped it: {said}")


def alone(error: BaseException) -> BaseException:
  """``error``, marked as a failure of this process alone (see the module docstring)."""
  error.stopped_alone = True
  return error


def is_alone(error: BaseException | None) -> bool:
  """Whether ``error`` stops this process without the others (marked ``alone``, a lost peer,
  or a second signal); False with one process."""
  if error is None or not jax.distributed.is_initialized():
    return False
  if getattr(error, "stopped_alone", False) or lost_peer(error) is not None:
    return True
  return type(error) is KeyboardInterrupt  # a second signal: it stops at once


def lost_peer(error: BaseException | None) -> str | None:
  """The line that reports a lost process when ``error`` (or one in its chain) is a collective
  that failed because another process is gone (what it said if it stopped alone and said why);
  None otherwise."""
  while error is not None:
    text = " ".join(str(error).split())
    cause = re.search(r"Connection (?:closed|reset) by peer|Read error|Timed out", text)
    if "Gloo" in text and cause:
      count, me = jax.process_count(), jax.process_index()
      said = _stopped_by_another(me)
      if said is not None:
        return f"process {said[0]} of the run stopped it: {said[1]}"
      who = f"process {1 - me}" if count == 2 else "another process"
      detail = f"{text[text.index('Gloo') :].split(' [')[0]} {cause[0]}"
      return (
        f"{who} of the run is gone (stopped or killed: {detail}); this process stopped too: "
        "continue the run with --resume once every process runs again"
      )
    error = error.__cause__ or error.__context__
  return None


def _client():
  """JAX's coordination client (None without ``jax.distributed``)."""
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top

  return getattr(jax_distributed.global_state, "client", None)


def watch() -> None:
  """Starts the thread that stops this process when another one stops alone."""
  client = _client()
  if client is not None:
    threading.Thread(target=_watch, args=(client,), name="run-watch", daemon=True).start()


def _stopped_by_another(me: int) -> tuple[int, str] | None:
  """``(process, line)`` of another process that stopped alone (``leave_alone``), if any."""
  client = _client()
  if client is None:
    return None
  try:
    who, _, line = client.key_value_try_get(_STOPPED_KEY).partition(":")
  except Exception:  # pylint: disable=broad-except  # not there, or the coordinator is gone
    return None
  return None if int(who) == me else (int(who), line)


def _watch(client) -> None:
  me = jax.process_index()
  while True:
    time.sleep(0.5)
    try:
      client.key_value_try_get(_STOPPED_KEY)
    except Exception as e:  # pylint: disable=broad-except
      if "NOT_FOUND" in str(e):
        continue
      return  # the coordinator is gone: the next collective says so
    said = _stopped_by_another(me)
    if said is None:
      return
    print(f"error: process {said[0]} of the run stopped it: {said[1]}", file=sys.stderr)
    with contextlib.suppress(Exception):
      client.key_value_set(f"{_LEFT_KEY}{me}", "1")
    leave_now(1)


def leave_alone(error: BaseException, line: str, code: int) -> None:
  """Exits at once with ``code`` after ``error`` stopped this process alone (``is_alone``);
  unless another process is gone (it would hear nothing), the others first read ``line``
  (``watch``)."""
  client = _client()
  if client is not None and lost_peer(error) is None:
    me, count = jax.process_index(), jax.process_count()
    with contextlib.suppress(Exception):  # several stopping at once: the first one says it
      client.key_value_set(_STOPPED_KEY, f"{me}:{line}")
      deadline = time.monotonic() + LEAVE_WAIT_S
      while me == 0 and time.monotonic() < deadline:
        if len(client.key_value_dir_get(_LEFT_KEY)) >= count - 1:
          break
        time.sleep(0.1)
  leave_now(code)


def leave_now(code: int) -> None:
  """Exits at once with ``code``, skipping JAX's shutdown (which waits for every process)."""
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)
