"""The clipped sum of per-example gradients: the one function most callers need.

`clipped_grad_sum`, in the spirit of `jax.grad`, takes a pure per-example loss and returns the
*sum* of clipped per-example gradients over a padded batch (float32), with the step's clip
metrics. It chooses the method (`vmap(grad)` in `dpjax.per_example`, or ghost norms in
`dpjax.ghost`, which falls back to vmap where it cannot see every parameter) and runs
microbatches one after the other. This module sits above both methods; they never import it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from dpjax import ghost
from dpjax import per_example
# The configuration and the primitives, re-exported: `clipping.ClippingConfig` is the public name.
from dpjax.per_example import (METHODS, NORMS, ClipMetrics, ClippingConfig, LossFn, as_float32,
                               clip_factor, equal_layer_clip_norms, in_compute_dtype,
                               parameter_groups, per_example_grads, per_example_norms)

PyTree = Any

__all__ = ["METHODS", "NORMS", "ClipMetrics", "ClippingConfig", "LossFn", "as_float32",
           "clip_factor", "clipped_grad_sum", "equal_layer_clip_norms", "in_compute_dtype",
           "pad_to_multiple", "parameter_groups", "per_example_grads", "per_example_norms"]

def pad_to_multiple(batch: PyTree, mask: jax.Array, multiple: int) -> tuple[PyTree, jax.Array]:
  """Pads a batch with masked copies of its first example up to a multiple of `multiple`.

  Copies of a real example (not zeros) keep the loss finite on the padding; the mask makes them
  contribute exactly zero.
  """
  extra = -mask.shape[0] % multiple
  if not extra:
    return batch, mask
  pad = lambda x: jnp.concatenate([x, jnp.repeat(x[:1], extra, axis=0)], axis=0)
  return jax.tree.map(pad, batch), jnp.concatenate([mask, jnp.zeros((extra,), bool)])


def clipped_grad_sum(loss_fn: LossFn, params: PyTree, batch: PyTree, mask: jax.Array,
                     config: ClippingConfig, *args) -> tuple[PyTree, ClipMetrics]:
  """Sum over real examples of clipped per-example gradients, and the step's clip metrics.

  With `config.microbatch_size` the batch is split into chunks processed one after the other
  (padded with masked examples to a multiple of the chunk when it is not one already). The sum
  is float32 whatever the parameter or compute dtype.
  """
  batch_size = mask.shape[0]
  chunk = config.microbatch_size
  clip_chunk = per_example.clip_and_sum_chunk
  if config.method != "vmap":
    clip_chunk = ghost.select_chunk_fn(loss_fn, params, batch, config, args) or clip_chunk
  if chunk is None or chunk >= batch_size:
    return clip_chunk(loss_fn, params, batch, mask, config, args)
  if batch_size % chunk:
    batch, mask = pad_to_multiple(batch, mask, chunk)
    batch_size = mask.shape[0]
  num_chunks = batch_size // chunk
  reshape = lambda x: x.reshape((num_chunks, chunk) + x.shape[1:])
  chunks = (jax.tree.map(reshape, batch), reshape(mask))

  def accumulate(carry, chunk_data):
    chunk_batch, chunk_mask = chunk_data
    summed, metrics = clip_chunk(loss_fn, params, chunk_batch, chunk_mask, config, args)
    return jax.tree.map(jnp.add, carry, (summed, metrics)), None

  init_sum = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  zero = jnp.zeros((), jnp.float32)
  init_metrics = ClipMetrics(num_examples=zero, num_clipped=zero, num_nonfinite=zero,
                             norm_sum=zero, loss_sum=zero)
  (summed, metrics), _ = jax.lax.scan(accumulate, (init_sum, init_metrics), chunks)
  return summed, metrics
