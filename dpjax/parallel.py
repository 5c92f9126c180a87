"""Meshes and data placement for data-parallel training with `jax.sharding`.

The batch axis is sharded over a one-axis mesh ("batch"); parameters, optimizer state and the
noise key are replicated. The DP step itself takes the mesh as a parameter (`dpjax.train`): this
module only builds meshes and places data, so it imports nothing else from dpjax.

Multi-host: start one process per host and call `initialize_distributed()` (or
`jax.distributed.initialize(...)`) before any other JAX call; `data_mesh()` then spans every
device of every host and each process passes only its own share of the global padded batch to
`shard_batch` (`jax.make_array_from_process_local_data`). A process that passed the whole global
batch would count every example once per host, and the sensitivity would be the clip norm times
the number of hosts: `shard_batch` refuses it. The engine does all of this by itself whenever
`jax.process_count() > 1`.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any
BATCH_AXIS = "batch"
# A multi-process run launched by hand: each process gets these two (and
# JAX_COORDINATOR_ADDRESS=host:port, which JAX reads itself).
NUM_PROCESSES_ENV, PROCESS_ID_ENV = "DPJAX_NUM_PROCESSES", "DPJAX_PROCESS_ID"


def initialize_distributed() -> bool:
  """Joins a multi-process run when the environment describes one; returns whether it did.

  Call it before any other JAX call. Recognised: by hand, `DPJAX_NUM_PROCESSES` > 1 with
  `DPJAX_PROCESS_ID` and `JAX_COORDINATOR_ADDRESS=host:port` (process 0's host); under SLURM
  (`srun` with more than one task), what `jax.distributed.initialize()` detects itself. On CPU the
  collectives go through gloo (JAX 0.10 has no other CPU implementation across processes).
  """
  by_hand = int(os.environ.get(NUM_PROCESSES_ENV, "1")) > 1
  slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ
  if not (by_hand or slurm):
    return False
  if by_hand and (PROCESS_ID_ENV not in os.environ or "JAX_COORDINATOR_ADDRESS" not in os.environ):
    raise ValueError(f"{NUM_PROCESSES_ENV} is set: also set {PROCESS_ID_ENV} (0, 1, ...) and "
                     "JAX_COORDINATOR_ADDRESS=host:port (process 0's host) on every process.")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if by_hand:
    jax.distributed.initialize(num_processes=int(os.environ[NUM_PROCESSES_ENV]),
                               process_id=int(os.environ[PROCESS_ID_ENV]))
  else:
    jax.distributed.initialize()
  return True


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
  passes: exactly 1/process_count of it. It is required in a multi-process run; with one
  process it defaults to the batch passed.
  """
  sharding = batch_sharding(mesh)
  local_size = np.shape(mask)[0]
  if global_batch_size is None and jax.process_count() > 1:
    raise ValueError("shard_batch in a multi-process run needs global_batch_size (the padded "
                     "size of the whole step), so that a process passing the whole batch instead "
                     "of its share (`parallel.process_share`) is refused.")
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
