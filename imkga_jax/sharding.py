"""Device mesh and partition rules from the config (DESIGN.md §6).

Parameters carry logical axis names (`nn.with_logical_partitioning` in `imkga_jax/models`); the config's
`mesh.rules` map each logical name to a mesh axis, giving a `PartitionSpec` per parameter. The batch is
sharded over `data`.

Example:
  >>> mesh = make_mesh(config.mesh)                                        # doctest: +SKIP
  >>> shardings = logical_shardings(abstract_params, mesh, config.mesh.rules)  # doctest: +SKIP
"""
from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

Rules = Sequence[tuple[str, Any]]


def maybe_initialize_distributed(mesh_config: ml_collections.ConfigDict) -> None:
  """Calls `jax.distributed.initialize` when the config or the environment asks for several processes.

  Must run before anything touches a JAX device. Explicit settings come from the config
  (`mesh.num_processes`, `mesh.coordinator_address`, `mesh.process_id`); otherwise JAX's own environment
  variables and cluster auto-detection (SLURM, TPU pods, ...) apply.
  """
  env_coordinator = os.environ.get('JAX_COORDINATOR_ADDRESS', '')
  if mesh_config.num_processes <= 1 and not env_coordinator:
    return
  if jax.distributed.is_initialized():
    return
  kwargs = {}
  if mesh_config.coordinator_address:
    kwargs['coordinator_address'] = mesh_config.coordinator_address
  if mesh_config.num_processes > 1:
    kwargs['num_processes'] = mesh_config.num_processes
  if mesh_config.process_id >= 0:
    kwargs['process_id'] = mesh_config.process_id
  logging.info('jax.distributed.initialize(%s)', kwargs)
  jax.distributed.initialize(**kwargs)


def mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Resolves one -1 entry of `shape` so that the product equals `num_devices`."""
  shape = list(shape)
  if shape.count(-1) > 1:
    raise ValueError(f'mesh.shape {tuple(shape)} has more than one -1')
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f'mesh.shape {tuple(shape)}: {num_devices} devices are not divisible by {known}')
    shape[shape.index(-1)] = num_devices // known
  if int(np.prod(shape)) != num_devices:
    raise ValueError(f'mesh.shape {tuple(shape)} needs {int(np.prod(shape))} devices, '
                     f'but {num_devices} are available')
  return tuple(shape)


def make_mesh(mesh_config: ml_collections.ConfigDict,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A `Mesh` over `devices` (default: all) with the config's shape and axis names.

  Axis types are `Auto` (sharding propagated by the compiler from jit's in/out shardings), chosen
  deliberately: `jax.make_mesh` defaults to `Explicit` axes in this JAX version.
  """
  devices = list(jax.devices() if devices is None else devices)
  axes = tuple(mesh_config.axes)
  shape = mesh_shape(mesh_config.shape, len(devices))
  if len(shape) != len(axes):
    raise ValueError(f'mesh.shape {shape} and mesh.axes {axes} differ in length')
  return jax.make_mesh(shape, axes, axis_types=(jax.sharding.AxisType.Auto,) * len(axes),
                       devices=devices)


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules: Rules) -> Any:
  """NamedShardings for a tree whose leaves may be `nn.LogicallyPartitioned` (others: replicated)."""
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, [tuple(r) for r in rules])


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
  """Sharding of arrays whose leading axis is the batch (the mesh axis of the logical 'batch')."""
  axis = dict((k, v) for k, v in rules).get('batch', 'data')
  return NamedSharding(mesh, P(axis))


def batch_shards(sharding: NamedSharding) -> int:
  """How many pieces the leading (batch) axis of `sharding` is cut into."""
  spec = sharding.spec[0] if len(sharding.spec) else None
  axes = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
  return int(np.prod([sharding.mesh.shape[a] for a in axes]))


def global_batch(local_batch: dict[str, np.ndarray], sharding: NamedSharding, batch_axis: int = 0
                 ) -> dict[str, jax.Array]:
  """Builds global arrays from each process's slice of the batch (its rows, in process order) along
  `batch_axis` (1 for batches of several steps stacked on a leading axis)."""
  def make(x):
    global_shape = list(x.shape)
    global_shape[batch_axis] *= jax.process_count()
    return jax.make_array_from_process_local_data(sharding, x, tuple(global_shape))
  return {k: make(v) for k, v in local_batch.items()}
