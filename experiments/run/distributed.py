"""The processes and devices of a run: ``jax.distributed``, the device mesh, process 0 writes.

One run may span several processes (hosts), each running the same program on its own devices:

* ``initialize(...)`` joins them through ``jax.distributed`` (before anything touches a device);
  on CPU the cross-process collectives are gloo's.
* ``is_writer()``: only process 0 writes a run's files (config.json, metrics, checksums, plots,
  summaries, TensorBoard events); every process takes part in orbax's checkpoint saves.
* ``agree(value)``: process 0's value on every process (e.g. which checkpoint is good), so that
  no process decides alone; ``writer_decides(fn)``: ``fn`` (which writes) on process 0 alone,
  its result or its error on every process.
* ``make_mesh("seed=2,data=4", ...)``: the devices of a run as a ``jax.sharding.Mesh`` with the
  axes ``seed`` (the seeds of a run on different devices) and ``data`` (each batch split).
* ``fetch(tree)``: the host copy of arrays that may span other processes' devices.

With one process (the default) every function here is what the one-device code did before.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import jax
import numpy as np
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import Mesh

from experiments.run import processes
from experiments.run.schema import ConfigError

T = TypeVar("T")
SEED_AXIS = "seed"
DATA_AXIS = "data"
MESH_AXES = (SEED_AXIS, DATA_AXIS)
# The environment variables read when the options are not given (JAX itself reads the first).
ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = (
  "JAX_COORDINATOR_ADDRESS",
  "JAX_NUM_PROCESSES",
  "JAX_PROCESS_ID",
)


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  timeout_s: float = processes.DEFAULT_TIMEOUT_S,
) -> None:
  """Joins the processes of a run through ``jax.distributed`` (nothing for one process).

  Each argument left as None is read from the environment (``JAX_COORDINATOR_ADDRESS``,
  ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``). Calling it again is a no-op.

  Args:
    coordinator_address: ``host:port`` of process 0's coordinator.
    num_processes: how many processes the run has.
    process_id: this process's index, 0 .. num_processes - 1.
    timeout_s: how long to wait for every process to join (``processes.join``), and how long
      JAX waits without a heartbeat from a process before it declares it dead.

  Raises:
    ConfigError: the options are incomplete or inconsistent, a process did not join within
      ``timeout_s``, or JAX has started already.
  """
  coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
  num_processes = num_processes or _env_int(ENV_NUM_PROCESSES) or 1
  process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
  if num_processes == 1 and coordinator_address is None:
    return
  if jax.distributed.is_initialized():
    return
  if coordinator_address is None or process_id is None or num_processes < 2:
    raise ConfigError(
      "several processes need --coordinator-address HOST:PORT, --num-processes N >= 2 and "
      f"--process-id I (or ${ENV_COORDINATOR}, ${ENV_NUM_PROCESSES}, ${ENV_PROCESS_ID}); got "
      f"{coordinator_address!r}, {num_processes}, {process_id}."
    )
  host, _, port = coordinator_address.rpartition(":")
  if not (host and port.isdigit() and 0 < int(port) < 65536):
    raise ConfigError(
      f"--coordinator-address must be HOST:PORT (e.g. 10.0.0.1:1234), got {coordinator_address!r}."
    )
  if not 0 <= process_id < num_processes:
    raise ConfigError(f"--process-id must be in 0 .. {num_processes - 1}, got {process_id}.")
  if not timeout_s > 0:
    raise ConfigError(f"--process-timeout-s must be > 0 seconds, got {timeout_s}.")
  # On CPU, cross-process collectives need an implementation (gloo ships with jaxlib).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  processes.join(coordinator_address, num_processes, process_id, timeout_s)
  try:
    jax.distributed.initialize(
      coordinator_address,
      num_processes,
      process_id,
      initialization_timeout=max(1, round(timeout_s)),
      heartbeat_timeout_seconds=max(1, round(timeout_s)),
    )
    processes.watch()  # a process that stops alone stops the others (processes.leave_alone)
  except RuntimeError as e:
    raise ConfigError(
      f"joining the run's processes through {coordinator_address} failed "
      f"({' '.join(str(e).split())[:200]}): start every process with the same "
      "--coordinator-address and --num-processes, before any other JAX work."
    ) from None


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise ConfigError(f"${name} must be an integer, got {value!r}.") from None


def is_writer() -> bool:
  """Whether this process writes the run's files: process 0 (the only one without
  ``jax.distributed``)."""
  return jax.process_index() == 0


def process_count() -> int:
  return jax.process_count()


def barrier(name: str) -> None:
  """Waits until every process gets here (nothing for one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def agree(value: Any) -> Any:
  """Process 0's ``value`` (a pytree of numbers) on every process; ``value`` itself for one."""
  if jax.process_count() == 1:
    return value
  return jax.tree.map(
    lambda a: np.asarray(a).item() if np.ndim(a) == 0 else np.asarray(a),
    multihost_utils.broadcast_one_to_all(value),
  )


def largest(value: int) -> int:
  """The largest of every process's ``value`` (``value`` itself for one process); every process
  must call it, in the same order."""
  if jax.process_count() == 1:
    return value
  return int(np.max(multihost_utils.process_allgather(np.asarray(value, np.int32))))


_MESSAGE_BYTES = 1024


def writer_decides(fn: Callable[[], T]) -> T:
  """``fn()`` run by process 0 alone (e.g. preparing the run directory); its result (None, a
  bool or an int) on every process, or its error: process 0 re-raises it, the others raise a
  ``ConfigError`` with its message (so that no process waits for one that failed)."""
  if jax.process_count() == 1:
    return fn()
  status, value, message = np.zeros(3, np.int64), None, np.zeros(_MESSAGE_BYTES, np.uint8)
  error = None
  if is_writer():
    try:
      value = fn()
      status[:] = (0, int(value or 0), value is None)
    except Exception as e:  # pylint: disable=broad-except  # every process must hear of it
      error = e
      text = f"process 0: {' '.join(str(e).split())}".encode()[:_MESSAGE_BYTES]
      status[0], message[: len(text)] = 1, np.frombuffer(text, np.uint8)
  status, message = agree((status, message))
  if error is not None:
    raise error
  if status[0]:
    raise ConfigError(bytes(np.asarray(message, np.uint8)).rstrip(b"\0").decode(errors="replace"))
  if is_writer():
    return value
  return None if status[2] else int(status[1])  # a bool comes back as 0 or 1


def fetch(tree: Any) -> Any:
  """The host (numpy) copy of a pytree of arrays, also of arrays on other processes'
  devices (every process must call it, in the same order)."""

  def get(a):
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return jax.device_get(a)

  return jax.tree.map(get, tree)


def parse_mesh(spec: str) -> dict[str, int]:
  """``"seed=2,data=4"`` -> ``{"seed": 2, "data": 4}`` (absent axes are 1).

  Raises:
    ConfigError: the text is not AXIS=SIZE pairs of the axes seed and data.
  """
  sizes = {axis: 1 for axis in MESH_AXES}
  seen = set()
  for part in spec.split(","):
    match = re.fullmatch(r"\s*([a-z]+)\s*=\s*(\d+)\s*", part)
    if match is None or match[1] not in MESH_AXES or match[1] in seen or int(match[2]) < 1:
      raise ConfigError(
        f"--mesh must be AXIS=SIZE pairs of the axes {' and '.join(MESH_AXES)}, each once, "
        f"sizes >= 1 (e.g. data=8 or seed=2,data=4), got {spec!r}."
      )
    seen.add(match[1])
    sizes[match[1]] = int(match[2])
  return sizes


def make_mesh(spec: str | None, *, num_seeds: int, batch_size: int) -> Mesh | None:
  """The mesh of ``--mesh spec`` over the first seed x data devices (None: one device).

  Raises:
    ConfigError: a size does not divide the device count, the seeds or the batch, or several
      processes without a mesh over all their devices.
  """
  count = jax.device_count()
  if spec is None:
    if jax.process_count() > 1:
      raise ConfigError(
        f"a run of {jax.process_count()} processes needs --mesh over their {count} devices, "
        f"e.g. --mesh data={count}."
      )
    return None
  sizes = parse_mesh(spec)
  seeds, data = sizes[SEED_AXIS], sizes[DATA_AXIS]
  used = seeds * data
  if count % used or (jax.process_count() > 1 and used != count):
    what = "equal" if jax.process_count() > 1 else "divide"
    raise ConfigError(
      f"--mesh {spec} uses {used} devices, which must {what} the {count} devices of this "
      f"run ({jax.process_count()} process(es))."
    )
  devices = mesh_utils.create_device_mesh((seeds, data), jax.devices()[:used])
  mesh = Mesh(devices, MESH_AXES)
  check_mesh(mesh, num_seeds=num_seeds, batch_size=batch_size)
  return mesh


def axis_size(mesh: Mesh | None, axis: str) -> int:
  """The devices along ``axis`` of ``mesh`` (1 without a mesh or without that axis)."""
  return mesh.shape[axis] if mesh is not None and axis in mesh.axis_names else 1


def check_mesh(mesh: Mesh, *, num_seeds: int, batch_size: int) -> None:
  """The one check that ``mesh`` can train ``num_seeds`` seeds on batches of ``batch_size``.

  Raises:
    ConfigError: the mesh has neither axis, or its sizes do not divide the seeds or the batch.
  """
  if not set(mesh.axis_names) & set(MESH_AXES):
    raise ConfigError(
      f"the mesh needs an axis named {' or '.join(map(repr, MESH_AXES))}; it has {mesh.axis_names}."
    )
  seeds, data = axis_size(mesh, SEED_AXIS), axis_size(mesh, DATA_AXIS)
  if num_seeds % seeds:
    raise ConfigError(
      f"the mesh's seed={seeds} must divide --num-seeds {num_seeds} (each device trains the "
      "same number of seeds)."
    )
  if batch_size % data:
    raise ConfigError(
      f"the mesh's data={data} must divide --batch-size {batch_size} (each device takes an "
      "equal share of every batch)."
    )


def describe(mesh: Mesh | None) -> dict[str, Any]:
  """What config.json records of the devices a run used."""
  if mesh is None:
    sizes: Mapping[str, int] = {axis: 1 for axis in MESH_AXES}
    devices = [jax.devices()[0]]
  else:
    sizes = dict(mesh.shape)
    devices = list(mesh.devices.flat)
  return {
    "mesh": dict(sizes),
    "devices": [str(d) for d in devices],
    "platform": devices[0].platform,
    "device_processes": [d.process_index for d in devices],
    "process_count": jax.process_count(),
    "device_count": jax.device_count(),
  }
