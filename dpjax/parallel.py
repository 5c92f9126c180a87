"""Meshes and data placement for data-parallel training with `jax.sharding`.

The batch axis is sharded over a one-axis mesh ("batch"); parameters, optimizer state and the
noise key are replicated. The DP step itself takes the mesh as a parameter (`dpjax.train`): this
module only builds meshes and places data, so it imports nothing else from dpjax.

Multi-host: start one process per host with `jax.distributed.initialize(...)` before any other
JAX call; `data_mesh()` then spans every device of every host and each process passes only its
own share of the global padded batch to `shard_batch` (`jax.make_array_from_process_local_data`).
A process that passed the whole global batch would count every example once per host, and the
sensitivity would be the clip norm times the number of hosts: `shard_batch` refuses it.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any
BATCH_AXIS = "batch"


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A one-axis mesh named "batch" over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (BATCH_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(BATCH_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def check_divisible(batch_size: int, mesh: Mesh) -> None:
  devices = mesh.devices.size
  if batch_size % devices:
    raise ValueError(f"padded batch size {batch_size} is not a multiple of the {devices} devices "
                     f"of the mesh; use sampling.BatchSampler(..., multiple_of={devices}).")


def process_share(global_batch_size: int, process_index: int | None = None,
                  process_count: int | None = None) -> slice:
  """The slice of the global padded batch that one process feeds."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if global_batch_size % process_count:
    raise ValueError(f"global padded batch {global_batch_size} does not split over "
                     f"{process_count} processes; use multiple_of=jax.device_count().")
  share = global_batch_size // process_count
  return slice(process_index * share, (process_index + 1) * share)


def shard_batch(batch: PyTree, mask, mesh: Mesh, global_batch_size: int | None = None
                ) -> tuple[PyTree, jax.Array]:
  """Places this process's share of a batch and its mask, sharded along the batch axis.

  `global_batch_size` (the padded size of the whole step) is checked against what this process
  passes: exactly 1/process_count of it. Without it, one process is assumed to hold the batch.
  """
  sharding = batch_sharding(mesh)
  local_size = np.shape(mask)[0]
  expected = (global_batch_size or local_size * jax.process_count()) // jax.process_count()
  if global_batch_size is not None and local_size != expected:
    raise ValueError(
        f"this process passed {local_size} examples of a global batch of {global_batch_size} "
        f"over {jax.process_count()} processes; each process must pass only its share "
        f"({expected}, `parallel.process_share`), else examples are counted once per host.")
  check_divisible(local_size * jax.process_count(), mesh)

  def place(x):
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))
  return jax.tree.map(place, batch), place(mask)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """Copies a pytree (e.g. a `TrainState`) to every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def device_local(tree: PyTree) -> PyTree:
  """Marks replicated values as device-varying inside `shard_map`.

  Gradients with respect to a replicated (invariant) input are summed over devices by
  shard_map's transpose; per-example gradients must stay per device, so params are cast to
  varying first and the sum over devices is taken explicitly once.
  """
  if hasattr(jax.lax, "pcast"):
    return jax.lax.pcast(tree, BATCH_AXIS, to="varying")
  return jax.lax.pvary(tree, BATCH_AXIS)
