"""The DP-SGD step: one `jax.jit` from a padded batch to updated parameters.

`dp_gradient` is the whole privacy mechanism of one step: clipped per-example sum (float32), noise
added once, division by the expected batch size. `make_dp_step` wraps it with any optax optimizer
in a single `jax.jit`. Data parallelism is a parameter (`mesh`), not another step: each device
clips and sums its own examples and adds its share of the step's one noise vector, and the sums
are added across devices: the same sum and noise as on one device. The host loop that feeds it is
`dpjax.engine`.

Why `shard_map` and not plain `jit` with shardings (GSPMD): on XLA CPU (jax 0.10) the
automatically partitioned `vmap` of a convolution's gradient returned wrong per-example kernel
gradients when the batch was sharded, which would break the clipping bound; here no
per-example computation is partitioned by XLA.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax
import jax
from absl import logging
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec

from dpjax import augment
from dpjax import clipping
from dpjax import noise
from dpjax import parallel

PyTree = Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: PyTree
  opt_state: PyTree
  noise_key: jax.Array  # base key; the noise of step t uses fold_in(noise_key, t)


def init_state(params: PyTree, optimizer: optax.GradientTransformation, noise_key: jax.Array) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params), noise_key=noise_key)


@dataclasses.dataclass(frozen=True)
class DPConfig:
  """The privacy mechanism of a step. `noise_multiplier=0` and `clip_norm=inf` is non-private."""
  clipping: clipping.ClippingConfig
  noise_multiplier: float
  expected_batch_size: float

  def __post_init__(self):
    if self.noise_multiplier < 0:
      raise ValueError(f"noise_multiplier={self.noise_multiplier} must be >= 0.")
    if not self.expected_batch_size > 0:
      raise ValueError(f"expected_batch_size={self.expected_batch_size} must be > 0.")
    if self.noise_multiplier > 0 and not math.isfinite(self.clipping.sensitivity):
      raise ValueError("noise needs a finite clip norm: with clip_norm=inf the sum is unbounded.")

  @property
  def mechanism(self) -> str:
    return noise.mechanism_for_norm(self.clipping.norm)


def dp_gradient(loss_fn, params, batch, mask, key, config: DPConfig, mesh: Mesh | None = None):
  """The privatised mean gradient of one step (float32), and its `ClipMetrics`.

  With `mesh`, each device clips and sums its examples and adds its share of the step's one
  noise vector (`noise.add_noise_share`: the devices' shares partition the coordinates), then
  the sums are added: the same sum and the same noise as on one device, each device drawing
  1/devices of the noise instead of all of it.
  """
  sensitivity = config.clipping.sensitivity if config.noise_multiplier else 0.0
  if mesh is None:
    summed, metrics = clipping.clipped_grad_sum(loss_fn, params, batch, mask, config.clipping)
    grad = noise.privatize_sum(
        key, summed, noise_multiplier=config.noise_multiplier, sensitivity=sensitivity,
        expected_batch_size=config.expected_batch_size, mechanism=config.mechanism)
    return grad, metrics

  def local(params, batch, mask, key):
    summed, metrics = clipping.clipped_grad_sum(loss_fn, parallel.device_local(params), batch,
                                                mask, config.clipping)
    summed = jax.tree.map(lambda s: s.astype(jnp.float32), summed)
    if config.noise_multiplier:
      summed = noise.add_noise_share(
          key, summed, scale=config.noise_multiplier * sensitivity, mechanism=config.mechanism,
          share=jax.lax.axis_index(parallel.BATCH_AXIS), shares=mesh.shape[parallel.BATCH_AXIS])
    return jax.lax.psum((summed, metrics), parallel.BATCH_AXIS)
  spec = PartitionSpec(parallel.BATCH_AXIS)
  noisy, metrics = jax.shard_map(local, mesh=mesh,
                                 in_specs=(PartitionSpec(), spec, spec, PartitionSpec()),
                                 out_specs=PartitionSpec())(params, batch, mask, key)
  return jax.tree.map(lambda s: s / config.expected_batch_size, noisy), metrics


def private_metrics(m: clipping.ClipMetrics) -> dict:
  """Statistics of the training batch: private diagnostics, never released as they are."""
  n = jnp.maximum(m.num_examples, 1.0)
  return {"loss": m.loss_sum / n, "clipped_fraction": m.num_clipped / n,
          "mean_grad_norm": m.norm_sum / n, "num_nonfinite": m.num_nonfinite,
          "batch_size": m.num_examples}


def apply_gradient(optimizer: optax.GradientTransformation, state: TrainState, grad) -> TrainState:
  updates, opt_state = optimizer.update(grad, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state)


def step_key(state: TrainState) -> jax.Array:
  """The noise key of the state's step: fold_in(secret base key, step), never reused."""
  return jax.random.fold_in(state.noise_key, state.step)


def _compile(step, mesh: Mesh | None, jit: bool):
  if not jit:
    return step
  if mesh is None:
    return jax.jit(step, donate_argnames="state")
  rep, shard = parallel.replicated(mesh), parallel.batch_sharding(mesh)

  def checked(state, batch, mask):
    parallel.check_divisible(mask.shape[0], mesh)
    return step(state, batch, mask)
  return jax.jit(checked, in_shardings=(rep, shard, shard), out_shardings=(rep, rep),
                 donate_argnames="state")


# The augmentation draws of step t come from fold_in(noise key of step t, this tag). They need not
# be secret (the clip bounds an example's contribution whatever its augmentations), but they must
# not come from anything released, such as the public seed written with the results: a public
# seed that also drove part of the step would tie released files to the private stream. Derived
# from the secret key they are fresh each step (the step is in the key), never written anywhere,
# reproducible only with the secret seed, and independent of the noise, which is drawn from the
# step key itself (threefry's fold_in is a PRF: neither output reveals the other).
_AUGMENT_TAG = 0x61756731  # "aug1"


def augment_key(state: TrainState) -> jax.Array:
  """The augmentation key of the state's step (see `_AUGMENT_TAG`)."""
  return jax.random.fold_in(step_key(state), _AUGMENT_TAG)


def _augmented(loss_fn, augmult: augment.Multiplicity | None):
  """(loss, inputs(state, batch, mask)): the loss the clipping sees and how a batch reaches it;
  with `augmult`, the mean over K augmented copies and one augmentation key per example."""
  if augmult is None:
    return loss_fn, lambda state, batch, mask: batch
  return augmult.loss(loss_fn), lambda state, batch, mask: augmult.keyed_batch(
      batch, augment_key(state), mask.shape[0])


def _vmap_for_augmult(config: DPConfig, augmult: augment.Multiplicity | None) -> DPConfig:
  """Ghost norms cannot take the norm of a gradient summed over K copies from per-layer inputs
  of one forward pass: with augmentation multiplicity, per-example gradients come from vmap."""
  if augmult is None or config.clipping.method == "vmap":
    return config
  logging.info("augmentation multiplicity (K=%d): per-example clipping by vmap instead of %r "
               "(ghost norms see one forward pass per example, not the mean over K copies).",
               augmult.copies, config.clipping.method)
  return dataclasses.replace(config, clipping=dataclasses.replace(config.clipping, method="vmap"))


def make_dp_step(loss_fn, optimizer: optax.GradientTransformation, config: DPConfig,
                 mesh: Mesh | None = None, jit: bool = True,
                 augmult: augment.Multiplicity | None = None):
  """`step(state, batch, mask) -> (state, private_metrics)`, one DP-SGD step in one `jax.jit`.

  With `mesh` the state is replicated (`parallel.replicate`) and the batch sharded over its
  "batch" axis (`parallel.shard_batch`); the padded batch must be a multiple of the devices.
  With `augmult`, each example's gradient is the mean over K augmented copies, clipped once
  (`dpjax.augment`); the noise key is unchanged.
  """
  config = _vmap_for_augmult(config, augmult)
  loss, inputs = _augmented(loss_fn, augmult)

  def step(state: TrainState, batch, mask):
    grad, m = dp_gradient(loss, state.params, inputs(state, batch, mask), mask, step_key(state),
                          config, mesh)
    return apply_gradient(optimizer, state, grad), private_metrics(m)
  return _compile(step, mesh, jit)


def masked_mean_loss_and_grad(loss_fn, params, batch, mask, mesh: Mesh | None = None):
  """(mean loss, gradient of the mean loss) over the real examples: the non-private gradient."""
  def masked_sums(p, batch, mask):
    def total(p):
      losses = jax.vmap(loss_fn, in_axes=(None, 0))(p, batch)
      return jnp.sum(jnp.where(mask, losses, 0.0))
    loss_sum, grad_sum = jax.value_and_grad(total)(p)
    return loss_sum, grad_sum, jnp.sum(mask).astype(jnp.float32)

  if mesh is None:
    loss_sum, grad_sum, count = masked_sums(params, batch, mask)
  else:
    def local(params, batch, mask):
      return jax.lax.psum(masked_sums(parallel.device_local(params), batch, mask),
                          parallel.BATCH_AXIS)
    spec = PartitionSpec(parallel.BATCH_AXIS)
    loss_sum, grad_sum, count = jax.shard_map(
        local, mesh=mesh, in_specs=(PartitionSpec(), spec, spec),
        out_specs=PartitionSpec())(params, batch, mask)
  n = jnp.maximum(count, 1.0)
  return loss_sum / n, jax.tree.map(lambda g: g / n, grad_sum), count


def make_nonprivate_step(loss_fn, optimizer: optax.GradientTransformation,
                         mesh: Mesh | None = None, jit: bool = True,
                         augmult: augment.Multiplicity | None = None):
  """The same interface without clipping or noise: the gradient of the masked mean loss (with
  `augmult`, of each example's mean over K augmented copies)."""
  example_loss, inputs = _augmented(loss_fn, augmult)

  def step(state: TrainState, batch, mask):
    loss, grad, count = masked_mean_loss_and_grad(example_loss, state.params,
                                                  inputs(state, batch, mask), mask, mesh)
    return apply_gradient(optimizer, state, grad), {"loss": loss, "batch_size": count}
  return _compile(step, mesh, jit)
