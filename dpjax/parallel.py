"""Data-parallel DP-SGD over all devices with `jax.sharding`.

The batch axis is sharded over a one-axis mesh ("batch"); parameters, optimizer state and the
noise key are replicated. Each device computes the clipped-gradient sum of its own examples
with the one-device code (`clipping.clipped_grad_sum`, any `ClippingConfig.method`) inside
`jax.shard_map`; the sums and clip metrics are added across devices (`psum`); the noise is then
drawn from the replicated key and added once to the global sum, exactly as on one device. The
result equals the one-device step for the same key up to float summation order.

Why `shard_map` and not plain `jit` with shardings (GSPMD): on XLA CPU (jax 0.10.2) the
automatically partitioned `vmap` of a convolution's gradient returns wrong per-example kernel
gradients when the batch is sharded (off by ~0.3 on a toy net; see BUILD_NOTES.md, performance section),
which would break the clipping bound. Here no per-example computation is partitioned by XLA.

Multi-host: start one process per host with `jax.distributed.initialize(...)` before any other
JAX call (see BUILD_NOTES.md, performance section); `data_mesh()` then spans every device of every host and
`shard_batch` takes each host's own slice of the batch (`jax.make_array_from_process_local_data`).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dpjax import clipping
from dpjax import noise
from dpjax import train

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


def _check_divisible(batch_size: int, mesh: Mesh) -> None:
  devices = mesh.devices.size
  if batch_size % devices:
    raise ValueError(f"padded batch size {batch_size} is not a multiple of the {devices} devices "
                     f"of the mesh; use sampling.BatchSampler(..., multiple_of={devices}).")


def shard_batch(batch: PyTree, mask, mesh: Mesh) -> tuple[PyTree, jax.Array]:
  """Places a batch (this process's examples) and its mask sharded along the batch axis."""
  sharding = batch_sharding(mesh)
  def place(x):
    x = np.asarray(x)
    _check_divisible(x.shape[0] * jax.process_count(), mesh)
    return jax.make_array_from_process_local_data(sharding, x)
  return jax.tree.map(place, batch), place(mask)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """Copies a pytree (e.g. a `TrainState`) to every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def _apply(optimizer, state: train.TrainState, grad) -> train.TrainState:
  updates, opt_state = optimizer.update(grad, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state)


def _jit(step, mesh: Mesh):
  rep, shard = replicated(mesh), batch_sharding(mesh)

  def checked(state, batch, mask):
    _check_divisible(mask.shape[0], mesh)
    return step(state, batch, mask)

  return jax.jit(checked, in_shardings=(rep, shard, shard), out_shardings=(rep, rep),
                 donate_argnames="state")


def _device_local(tree: PyTree) -> PyTree:
  """Marks replicated values as device-varying inside `shard_map`.

  Gradients with respect to a replicated (invariant) input are summed over devices by
  shard_map's transpose; per-example gradients must stay per device, so params are cast to
  varying first and the sum over devices is taken explicitly once.
  """
  if hasattr(jax.lax, "pcast"):
    return jax.lax.pcast(tree, BATCH_AXIS, to="varying")
  return jax.lax.pvary(tree, BATCH_AXIS)


def clipped_grad_sum(loss_fn, params, batch, mask, config: clipping.ClippingConfig, mesh: Mesh):
  """`clipping.clipped_grad_sum` with examples split over the mesh: per-device sums, added."""
  def local(params, batch, mask):
    summed = clipping.clipped_grad_sum(loss_fn, _device_local(params), batch, mask, config)
    return jax.lax.psum(summed, BATCH_AXIS)
  spec = PartitionSpec(BATCH_AXIS)
  return jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec(), spec, spec),
                       out_specs=PartitionSpec())(params, batch, mask)


def dp_gradient(loss_fn, params, batch, mask, key, config: train.DPConfig, mesh: Mesh):
  """`train.dp_gradient` data parallel: global clipped sum, then noise once (replicated key)."""
  summed, metrics = clipped_grad_sum(loss_fn, params, batch, mask, config.clipping, mesh)
  grad = noise.privatize_sum(
      key, summed, noise_multiplier=config.noise_multiplier,
      sensitivity=config.clipping.sensitivity if config.noise_multiplier else 0.0,
      expected_batch_size=config.expected_batch_size, mechanism=config.mechanism)
  return grad, metrics


def make_parallel_dp_step(loss_fn, optimizer: optax.GradientTransformation,
                          config: train.DPConfig, mesh: Mesh | None = None):
  """`step(state, batch, mask) -> (state, metrics)` like `train.make_dp_step`, data parallel.

  `state` is replicated (`replicate`), `batch`/`mask` sharded (`shard_batch`; arrays placed
  otherwise are resharded by jit). The padded batch size must be a multiple of the devices.
  """
  mesh = data_mesh() if mesh is None else mesh

  def step(state, batch, mask):
    key = jax.random.fold_in(state.noise_key, state.step)
    grad, metrics = dp_gradient(loss_fn, state.params, batch, mask, key, config, mesh)
    return _apply(optimizer, state, grad), train.metrics_dict(metrics)
  return _jit(step, mesh)


def make_parallel_nonprivate_step(loss_fn, optimizer: optax.GradientTransformation,
                                  mesh: Mesh | None = None):
  """`train.make_nonprivate_step` data parallel: gradient of the masked mean loss."""
  mesh = data_mesh() if mesh is None else mesh
  spec = PartitionSpec(BATCH_AXIS)

  def local(params, batch, mask):
    def masked_sum(p):
      losses = jax.vmap(loss_fn, in_axes=(None, 0))(p, batch)
      return jnp.sum(jnp.where(mask, losses, 0.0))
    loss_sum, grad_sum = jax.value_and_grad(masked_sum)(_device_local(params))
    return jax.lax.psum((loss_sum, grad_sum, jnp.sum(mask).astype(jnp.float32)), BATCH_AXIS)

  def step(state, batch, mask):
    loss_sum, grad_sum, count = jax.shard_map(
        local, mesh=mesh, in_specs=(PartitionSpec(), spec, spec),
        out_specs=PartitionSpec())(state.params, batch, mask)
    n = jnp.maximum(count, 1.0)
    grad = jax.tree.map(lambda g: g / n, grad_sum)
    return _apply(optimizer, state, grad), {"loss": loss_sum / n, "batch_size": count}
  return _jit(step, mesh)
