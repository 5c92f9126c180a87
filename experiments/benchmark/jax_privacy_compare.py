"""jax_privacy 2.0.0 as a peer in the benchmark: its DP-SGD step on dpjax's workloads.

The step is what a jax_privacy user writes: `jax_privacy.clipped_grad` (vmap of per-example
gradients, clipped and summed, float32) on the same per-example loss, Gaussian noise from
`jax_privacy.noise_addition.gaussian_privatizer` with standard deviation noise_multiplier x the
clipped sum's sensitivity, division by the expected batch size and the same optax optimizer, in
one `jax.jit`. It has dpjax's step signature, `step(state, batch, mask) -> (state, metrics)`, so
the benchmark compiles and times it interleaved with dpjax's variants on the same batch.

jax_privacy's clipping takes no padding mask: the mask is passed as a batch argument and a
masked example's loss is zero, so its gradient (and contribution) is zero. With `mesh`, each
device clips its own examples inside `jax.shard_map` (as dpjax does: plain GSPMD partitioning of
per-example convolution gradients is wrong on XLA CPU, see docs/sharp_edges.md), the sums are
added, and the noise is drawn once.

Install: `pip install jax-privacy==2.0.0` (the `compare` extra). It does not change the jax, flax
or optax versions.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec

from dpjax import clipping
from dpjax import parallel

PyTree = Any

VERSION = "2.0.0"


def check_installed() -> None:
  """Raises ImportError naming the install command when jax_privacy is missing."""
  try:
    import jax_privacy  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError as error:
    raise ImportError(f"jax_privacy is not installed ({error}); `pip install "
                      f"jax-privacy=={VERSION}` (or `pip install -e .[compare]`)") from None


@flax.struct.dataclass
class PeerState:
  """The jax_privacy step's state: parameters, optimizer state and the privatizer's key state."""
  params: PyTree
  opt_state: PyTree
  noise_state: PyTree


def make_step(loss_fn: Callable, optimizer: optax.GradientTransformation, *, clip_norm: float,
              noise_multiplier: float, expected_batch_size: float, noise_key: jax.Array,
              compute_dtype: str | None = None, microbatch_size: int | None = None,
              mesh: Mesh | None = None):
  """`(init, step)`: `init(params) -> PeerState`; `step` jitted, the state donated."""
  import jax_privacy  # pylint: disable=import-outside-toplevel
  from jax_privacy import noise_addition  # pylint: disable=import-outside-toplevel

  example_loss = clipping.in_compute_dtype(loss_fn, compute_dtype)

  def masked_loss(params, example, keep):
    return jnp.where(keep, example_loss(params, example), 0.0)

  grad_fn = jax_privacy.clipped_grad(
      masked_loss, l2_clip_norm=clip_norm, batch_argnums=(1, 2), keep_batch_dim=False,
      return_values=True, microbatch_size=microbatch_size, dtype=jnp.float32)
  privatizer = noise_addition.gaussian_privatizer(
      stddev=noise_multiplier * grad_fn.sensitivity(), prng_key=noise_key)

  def clipped_sum(params, batch, mask):
    summed, aux = grad_fn(params, batch, mask)
    return summed, jnp.sum(aux.values), jnp.sum(mask).astype(jnp.float32)

  if mesh is not None:
    spec = PartitionSpec(parallel.BATCH_AXIS)
    one_device = clipped_sum
    local = lambda p, b, m: jax.lax.psum(one_device(parallel.device_local(p), b, m),
                                         parallel.BATCH_AXIS)
    clipped_sum = jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec(), spec, spec),
                                out_specs=PartitionSpec())

  def init(params) -> PeerState:
    return PeerState(params=params, opt_state=optimizer.init(params),
                     noise_state=privatizer.init(params))

  def step(state: PeerState, batch, mask):
    summed, loss_sum, count = clipped_sum(state.params, batch, mask)
    noisy, noise_state = privatizer.update(summed, state.noise_state)
    grad = jax.tree.map(lambda g: g / expected_batch_size, noisy)
    updates, opt_state = optimizer.update(grad, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss_sum / jnp.maximum(count, 1.0), "batch_size": count}
    return PeerState(params=params, opt_state=opt_state, noise_state=noise_state), metrics

  if mesh is None:
    return init, jax.jit(step, donate_argnames="state")
  rep, shard = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  return init, jax.jit(step, in_shardings=(rep, shard, shard), out_shardings=(rep, rep),
                       donate_argnames="state")
