"""Runs the training loop on one device and over a Mesh of all devices; prints a JSON report.

Run by tests/test_training.py in a fresh process with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (the device count is fixed at JAX start-up).
"""

import json
import sys

import jax
import numpy as np
from jax.sharding import Mesh

from experiments.run import distributed
from experiments.trainer import loop, loop_state, step_runners, tasks
from tests import test_training as t


def main():
  devices = jax.devices()
  cfg = t.config(num_steps=20, eval_every_steps=0, checkpoint_every_steps=0)
  single = loop.train(cfg, t.MODEL, t.TX, t.tiny_data())
  mesh = Mesh(np.array(devices), (distributed.DATA_AXIS,))
  sharded = loop.train(cfg, t.MODEL, t.TX, t.tiny_data(), mesh=mesh)
  diffs = jax.tree.map(
    lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
    loop_state.state_dict(single.state),
    loop_state.state_dict(sharded.state),
  )
  kernel = sharded.state.params["Dense_0"]["kernel"]
  # The compiled step is data parallel: XLA reduces gradients and BatchNorm moments across devices.
  fns = step_runners.compiled_functions(
    cfg,
    t.MODEL,
    t.TX,
    tasks.Task(),
    mesh=mesh,
    num_examples=384,
    eval_batch_size=128,
    runner="scan",
  )
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  x, y, _, _ = (jax.device_put(a, replicated) for a in t.tiny_data())
  hlo = fns.scan_call(10).lower(sharded.state, (x, y)).compile().as_text()
  print(
    json.dumps(
      {
        "devices": len(devices),
        "max_param_diff": max(jax.tree.leaves(diffs)),
        "val_error_single": single.records[-1]["val_error"],
        "val_error_mesh": sharded.records[-1]["val_error"],
        "all_reduces": hlo.count("all-reduce-start") + hlo.count("all-reduce("),
        "param_sharding_replicated": bool(kernel.sharding.is_fully_replicated)
        and len(kernel.sharding.device_set) == len(devices),
      }
    )
  )


if __name__ == "__main__":
  sys.exit(main())
