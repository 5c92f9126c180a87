"""Per-example gradients and their clipping by `vmap(grad)`: the layer below every clipping method.

Holds what each method (this one, and ghost norms in `dpjax.ghost`) shares: the clipping
configuration, the step's clip metrics, parameter groups for per-layer bounds, norms, clip
factors, the float32 policy, and the vmap method's clip-and-sum of one chunk. The choice between
methods and microbatching sit above, in `dpjax.clipping`.

Conventions:
  * `loss_fn(params, example) -> scalar` sees ONE example (a pytree of arrays without a batch
    axis). A model that wants a batch axis adds it (`x[None]`).
  * `batch` is a pytree whose leaves all have the same leading (padded) batch dimension B and
    `mask` is a boolean (B,) vector: False marks padding, which contributes exactly zero.
  * An example whose gradient is not finite contributes zero and is counted in
    `ClipMetrics.num_nonfinite`; it never poisons the sum.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import chex
import jax
import jax.numpy as jnp

PyTree = Any
LossFn = Callable[..., jax.Array]

NORMS = ("l2", "l1")
METHODS = ("vmap", "ghost", "auto")


@chex.dataclass(frozen=True)
class ClipMetrics:
  """Sums over the real (unpadded) examples of one batch; divide by `num_examples` for means."""
  num_examples: jax.Array
  num_clipped: jax.Array
  num_nonfinite: jax.Array
  norm_sum: jax.Array
  loss_sum: jax.Array

  def __add__(self, other: "ClipMetrics") -> "ClipMetrics":
    return jax.tree.map(jnp.add, self, other)


def clip_metrics(mask, keep, clipped, finite, norms, losses) -> ClipMetrics:
  """The step's `ClipMetrics` from per-example flags and values, as ONE reduction.

  Five separate sums were ten small kernels on XLA CPU (each a two-stage reduction), a visible
  share of a sub-millisecond step; stacked they are one.
  """
  f32 = jnp.float32
  zero = jnp.zeros((), f32)
  rows = jnp.stack([mask.astype(f32), (keep & clipped).astype(f32), (mask & ~finite).astype(f32),
                    jnp.where(keep, norms.astype(f32), zero),
                    jnp.where(keep, losses.astype(f32), zero)])
  sums = jnp.sum(rows, axis=1)
  return ClipMetrics(num_examples=sums[0], num_clipped=sums[1], num_nonfinite=sums[2],
                     norm_sum=sums[3], loss_sum=sums[4])


@dataclasses.dataclass(frozen=True)
class ClippingConfig:
  """How per-example gradients are bounded.

  Attributes:
    clip_norm: the bound C on each example's gradient norm (global clipping). `math.inf` turns
      clipping off (then the sum has no finite sensitivity and noise cannot make it private).
    norm: "l2" (pairs with Gaussian noise) or "l1" (pairs with Laplace noise, pure DP).
    layer_clip_norms: per-layer clipping instead of global: a mapping from a parameter group
      name (the '/'-joined path of the module holding the leaf, e.g. "params/Dense_0") to its
      bound. Every group must be named. The sum's sensitivity is then sqrt(sum C_g^2) for l2
      and sum C_g for l1.
    microbatch_size: process the padded batch in chunks of this many examples (sequentially, via
      `lax.scan`) so that per-example gradients of only one chunk live in memory at a time.
    method: how per-example norms are found. "vmap": per-example gradients by `vmap(grad)`.
      "ghost": norms from layer inputs and output gradients and the clipped sum as one matmul
      per layer (`dpjax.ghost`, Flax Dense/Conv/GroupNorm/LayerNorm models), falling back to
      vmap with a warning when the model has other parameterised layers. "auto": the same,
      falling back silently (an info log line).
    compute_dtype: e.g. "bfloat16": the loss and its gradients are computed with parameters and
      float inputs cast to this dtype; norms, clipping, sums (and noise) stay in float32.
  """
  clip_norm: float = 1.0
  norm: str = "l2"
  layer_clip_norms: Mapping[str, float] | None = None
  microbatch_size: int | None = None
  method: str = "vmap"
  compute_dtype: str | None = None

  def __post_init__(self):
    if self.norm not in NORMS:
      raise ValueError(f"norm={self.norm!r}: expected one of {NORMS}.")
    if self.layer_clip_norms is None:
      if not self.clip_norm > 0:
        raise ValueError(f"clip_norm={self.clip_norm} must be > 0 (use math.inf for no clipping).")
    else:
      bad = {k: v for k, v in self.layer_clip_norms.items() if not v > 0}
      if bad:
        raise ValueError(f"layer_clip_norms must all be > 0, got {bad}.")
    if self.microbatch_size is not None and self.microbatch_size < 1:
      raise ValueError(f"microbatch_size={self.microbatch_size} must be >= 1.")
    if self.method not in METHODS:
      raise ValueError(f"method={self.method!r}: expected one of {METHODS}.")
    if self.compute_dtype is not None and not jnp.issubdtype(jnp.dtype(self.compute_dtype), jnp.floating):
      raise ValueError(f"compute_dtype={self.compute_dtype!r} is not a float dtype (e.g. 'bfloat16').")

  @property
  def sensitivity(self) -> float:
    """Bound on how much one example can move the clipped sum (in `norm`), add/remove adjacency."""
    if self.layer_clip_norms is None:
      return float(self.clip_norm)
    bounds = list(self.layer_clip_norms.values())
    if self.norm == "l2":
      return math.sqrt(sum(c * c for c in bounds))
    return float(sum(bounds))


def parameter_groups(params: PyTree) -> list[str]:
  """Names of the parameter groups of `params` usable as keys of `layer_clip_norms`."""
  return sorted(set(group_names(params)))


def equal_layer_clip_norms(params: PyTree, total_clip_norm: float, norm: str = "l2") -> dict:
  """Splits a total bound over the groups so that the overall sensitivity equals it."""
  groups = parameter_groups(params)
  share = total_clip_norm / (math.sqrt(len(groups)) if norm == "l2" else len(groups))
  return {g: share for g in groups}


def group_names(params: PyTree) -> list[str]:
  paths = jax.tree_util.tree_flatten_with_path(params)[0]
  names = []
  for path, _ in paths:
    keys = [_key_str(k) for k in path[:-1]] or ["<root>"]
    names.append("/".join(keys))
  return names


def _key_str(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def per_example_grads(loss_fn: LossFn, params: PyTree, batch: PyTree, *args) -> tuple[jax.Array, PyTree]:
  """Per-example losses (B,) and gradients (leaves with a leading B axis), by `vmap(grad)`."""
  value_and_grad = jax.value_and_grad(loss_fn)
  return jax.vmap(value_and_grad, in_axes=(None, 0) + (None,) * len(args))(params, batch, *args)


def per_example_norms(grads: PyTree, norm: str = "l2") -> jax.Array:
  """The global per-example norm over all leaves of batched gradients: shape (B,)."""
  leaves = jax.tree.leaves(grads)
  flat = [g.reshape(g.shape[0], -1) for g in leaves]
  if norm == "l2":
    return jnp.sqrt(sum(jnp.sum(jnp.square(f), axis=1) for f in flat))
  return sum(jnp.sum(jnp.abs(f), axis=1) for f in flat)


def clip_factor(norms: jax.Array, clip_norm) -> jax.Array:
  """min(1, C / norm), with 1 for a zero norm."""
  return jnp.minimum(1.0, clip_norm / jnp.maximum(norms, 1e-30))


def _weighted_sum(grads: PyTree, weights: jax.Array) -> PyTree:
  def reduce(g):
    safe = jnp.where(_broadcast(weights != 0, g), g, 0.0)  # 0 * nan would be nan
    return jnp.tensordot(weights.astype(g.dtype), safe, axes=1)
  return jax.tree.map(reduce, grads)


def _broadcast(v: jax.Array, like: jax.Array) -> jax.Array:
  return v.reshape(v.shape + (1,) * (like.ndim - 1))


def finite_per_example(grads: PyTree, losses: jax.Array) -> jax.Array:
  ok = jnp.isfinite(losses)
  for g in jax.tree.leaves(grads):
    ok &= jnp.all(jnp.isfinite(g.reshape(g.shape[0], -1)), axis=1)
  return ok


def in_compute_dtype(loss_fn: LossFn, dtype) -> LossFn:
  """`loss_fn` evaluated with float params and example leaves cast to `dtype`; a float32 loss."""
  if dtype is None:
    return loss_fn
  def cast(tree):
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)
  def wrapped(params, example, *args):
    return loss_fn(cast(params), cast(example), *args).astype(jnp.float32)
  return wrapped


def as_float32(tree: PyTree) -> PyTree:
  """Float leaves in float32: norms, clip factors and sums are never taken in a narrower dtype.

  In bfloat16 a norm or a clip factor is off by up to 2^-8 relative and a sum of B terms drifts
  further: one example could move the "clipped" sum by 1.75 C, voiding the sensitivity bound.
  """
  return jax.tree.map(lambda g: g.astype(jnp.float32) if jnp.issubdtype(g.dtype, jnp.floating) else g,
                      tree)


def clip_and_sum_chunk(loss_fn, params, batch, mask, config: ClippingConfig, args):
  loss_fn = in_compute_dtype(loss_fn, config.compute_dtype)
  losses, grads = per_example_grads(loss_fn, params, batch, *args)
  losses, grads = as_float32(losses), as_float32(grads)
  finite = finite_per_example(grads, losses)
  keep = mask & finite
  if config.layer_clip_norms is None:
    norms = per_example_norms(grads, config.norm)
    factors = clip_factor(norms, config.clip_norm)
    clipped = norms > config.clip_norm
    summed = _weighted_sum(grads, jnp.where(keep, factors, 0.0))
  else:
    summed, norms, clipped = _clip_per_layer(grads, keep, config)
  return summed, clip_metrics(mask, keep, clipped, finite, norms, losses)


def _clip_per_layer(grads, keep, config: ClippingConfig):
  names = group_names(grads)
  missing = sorted(set(names) - set(config.layer_clip_norms))
  if missing:
    raise ValueError(f"layer_clip_norms has no bound for parameter groups {missing}; "
                     f"groups are {sorted(set(names))}.")
  leaves, treedef = jax.tree.flatten(grads)
  group_sq = {}
  for name, g in zip(names, leaves):
    contribution = per_example_norms([g], config.norm)
    group_sq[name] = group_sq.get(name, 0.0) + (contribution ** 2 if config.norm == "l2" else contribution)
  group_norm = {n: jnp.sqrt(v) if config.norm == "l2" else v for n, v in group_sq.items()}
  factors = {n: clip_factor(v, config.layer_clip_norms[n]) for n, v in group_norm.items()}
  summed = [_weighted_sum([g], jnp.where(keep, factors[n], 0.0))[0] for n, g in zip(names, leaves)]
  if config.norm == "l2":
    total_norm = jnp.sqrt(sum(v ** 2 for v in group_norm.values()))
  else:
    total_norm = sum(group_norm.values())
  clipped = jnp.any(jnp.stack([group_norm[n] > config.layer_clip_norms[n] for n in group_norm]), axis=0)
  return jax.tree.unflatten(treedef, summed), total_norm, clipped
