"""Runs Parle's replicas vmapped on one device and under shard_map, one per device; prints JSON.

Run by tests/test_parle.py in a fresh process with
XLA_FLAGS=--xla_force_host_platform_device_count=4 (the device count is fixed at JAX start-up).
"""

import functools
import json
import sys

import jax
import numpy as np
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

import entropy_optax as eo
from tests import test_parle as t


def main():
  devices = jax.devices()
  n = len(devices)
  data = t.make_data(n, 5, 4, seed=11)
  tx = eo.parle(0.1, rho=1.0, **t.ENTROPY)
  vmapped_params, vmapped_state = t.run_vmap(tx, data, n)

  mesh = Mesh(np.array(devices), (t.AXIS,))
  # Each device holds one replica: a leading axis of size 1, dropped inside and put back.
  squeeze = lambda tree: jax.tree.map(lambda a: a[0], tree)
  expand = lambda tree: jax.tree.map(lambda a: a[None], tree)
  shard = functools.partial(jax.shard_map, mesh=mesh, in_specs=P(t.AXIS), out_specs=P(t.AXIS))

  @jax.jit
  @shard
  def init(params):
    return expand(tx.init(squeeze(params)))

  @jax.jit
  @functools.partial(
    jax.shard_map, mesh=mesh, in_specs=(P(t.AXIS),) * 4, out_specs=(P(t.AXIS), P(t.AXIS))
  )
  def step(params, state, xs, ys):
    new = t.one_step(tx, *map(squeeze, (params, state, xs, ys)))
    return expand(new[0]), expand(new[1])

  xs, ys = data
  params = t.init_params(n)
  state = init(params)
  for i in range(xs.shape[1]):
    params, state = step(params, state, xs[:, i], ys[:, i])

  max_diff = lambda a, b: max(
    jax.tree.leaves(jax.tree.map(lambda u, v: float(np.max(np.abs(np.asarray(u) - v))), a, b))
  )
  stats = lambda s: optax.tree.get(s, "elastic_stats")
  print(
    json.dumps(
      {
        "devices": n,
        "replicas_apart": t.spread(vmapped_params),
        "max_param_diff": max_diff(params, vmapped_params),
        "max_stats_diff": max_diff(stats(state), stats(vmapped_state)),
        "sharded_over": len(jax.tree.leaves(params)[0].sharding.device_set),
      }
    )
  )


if __name__ == "__main__":
  sys.exit(main())
