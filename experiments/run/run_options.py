"""How a run is carried out, without changing its results: ``RunOptions`` (the run directory,
resuming, progress and TensorBoard, where the data is, the devices and the processes).

Every script's command line has these options beside the run's own fields
(``experiments.run.schema.RunConfig``); a resumed run may change them.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """How a run is carried out, without changing its results."""

  workdir: str | None = None
  """the run directory (default: runs/<dataset>-<model>-<optimizer>[-synthetic])"""
  resume: bool = False
  """continue the run in --workdir from its last good checkpoint and saved configuration"""
  overwrite: bool = False
  """delete the run in --workdir and start afresh (never a directory holding no run)"""
  progress: bool = True
  """show a progress bar (on a terminal only)"""
  tensorboard: bool = True
  """write TensorBoard events of the metrics beside metrics.jsonl (tensorboard --logdir runs/)"""
  data_dir: str | None = None
  """tfds data directory, or (mnist, fashion_mnist) a directory of the four IDX files"""
  download: bool = True
  """let tfds download and prepare an absent data set"""
  mesh: str | None = None
  """devices as AXIS=SIZE pairs of seed (seeds) and data (batches), e.g. seed=2,data=4"""
  coordinator_address: str | None = None
  """HOST:PORT of process 0's jax.distributed coordinator (default: $JAX_COORDINATOR_ADDRESS)"""
  num_processes: int | None = None
  """the run's number of processes (default: $JAX_NUM_PROCESSES, else 1)"""
  process_id: int | None = None
  """this process's index in 0 .. num_processes - 1 (default: $JAX_PROCESS_ID)"""
  process_timeout_s: float = 120.0
  """seconds to wait for a process that has not joined or stopped answering, then stop"""

  def replace(self, **changes: Any) -> RunOptions:
    return dataclasses.replace(self, **changes)
