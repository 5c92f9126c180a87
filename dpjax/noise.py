"""Noise for the clipped sum: Gaussian (with l2 clipping) or Laplace (with l1 clipping).

The noise is added ONCE to the sum of clipped per-example gradients, with a standard deviation
(Gaussian) or scale (Laplace) of `noise_multiplier * sensitivity`, and the noisy sum is then
divided by the *expected* batch size. Dividing by the realised batch size would leak it.

Everything here is float32 whatever the parameters' dtype: noise drawn in bfloat16 would be
quantised and the sum it is added to would no longer be the clipped sum.

The key is secret (drawn from the OS CSPRNG by `dpjax.randomness` unless the user opted into
reproducible private randomness); the step folds in its step number, threefry then expands it:
for trees of at least `UNROLLED_MIN_SIZE` coordinates `dpjax.threefry` (JAX's generator written
out, ~3x faster on XLA CPU than JAX's own lowering), below it and for keys of another JAX PRNG
implementation `jax.random`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dpjax import threefry

PyTree = Any

MECHANISMS = ("gaussian", "laplace")


def mechanism_for_norm(norm: str) -> str:
  return {"l2": "gaussian", "l1": "laplace"}[norm]


# Below this many coordinates the noise comes from `jax.random` (JAX's threefry, rolled into a
# loop on CPU): inside a small model's step its small kernels cost less than the unrolled
# generator's one fused kernel, which XLA CPU splits over threads (linear row, 2,000 coordinates:
# +0.06 against +0.14 ms over the step without noise, interleaved in one process; session 6).
# Above it the unrolled generator wins by far (15M normals: 62 against 198 ms, noise_draw.py).
UNROLLED_MIN_SIZE = 2 ** 16


def _samplers(mechanism: str):
  """(the `jax.random` sampler, the unrolled `dpjax.threefry` sampler) of the mechanism."""
  if mechanism not in MECHANISMS:
    raise ValueError(f"mechanism={mechanism!r}: expected one of {MECHANISMS}.")
  if mechanism == "gaussian":
    return jax.random.normal, threefry.normal
  return jax.random.laplace, threefry.laplace


def _unrolled_key(key: jax.Array, leaves) -> jax.Array | None:
  """The raw threefry key when the unrolled generator draws this tree's noise, else None."""
  if sum(leaf.size for leaf in leaves) < UNROLLED_MIN_SIZE:
    return None
  return threefry.raw_key(key)


def _leaf_offsets(leaves) -> list[int]:
  """Where each leaf's coordinates start in the step's one noise vector (tree-flatten order)."""
  return [int(x) for x in np.cumsum([0] + [leaf.size for leaf in leaves])[:-1]]


def tree_noise(key: jax.Array, tree: PyTree, mechanism: str) -> PyTree:
  """Unit-scale float32 noise shaped like `tree`: N(0, 1) or Laplace(0, 1) per coordinate.

  The step's noise is one vector over all coordinates in tree-flatten order; each leaf draws its
  own stretch of it in its own shape (one fused kernel per leaf, no cutting of a flat draw).
  """
  jax_sample, sample = _samplers(mechanism)
  leaves, treedef = jax.tree.flatten(tree)
  raw = _unrolled_key(key, leaves)
  if raw is None:  # a small tree or another JAX PRNG: one draw from jax.random, cut into leaves
    sizes = [leaf.size for leaf in leaves]
    flat = jax_sample(key, (sum(sizes),), jnp.float32)
    pieces = jnp.split(flat, np.cumsum(sizes)[:-1]) if leaves else []
    return jax.tree.unflatten(treedef, [p.reshape(l.shape) for p, l in zip(pieces, leaves)])
  noise = [sample(raw, leaf.size, offset).reshape(leaf.shape)
           for leaf, offset in zip(leaves, _leaf_offsets(leaves))]
  return jax.tree.unflatten(treedef, noise)


def add_noise_share(key: jax.Array, clipped_sum: PyTree, *, scale: float, mechanism: str,
                    share, shares: int) -> PyTree:
  """`clipped_sum` (float32) plus `scale` times the step's noise on the coordinates of `share`.

  For data parallelism: device `share` of `shares` adds its stretch of each leaf's noise to its
  partial sum; once the partial sums are added across devices every coordinate carries exactly
  the noise `tree_noise` draws on one device, added once. Each device draws 1/shares of it.
  """
  _, sample = _samplers(mechanism)
  leaves, treedef = jax.tree.flatten(clipped_sum)
  leaves = [leaf.astype(jnp.float32) for leaf in leaves]
  raw = _unrolled_key(key, leaves)
  if raw is None:  # small, or another JAX PRNG: every device draws all of it, the first adds it
    full = jax.tree.leaves(tree_noise(key, clipped_sum, mechanism))
    first = jnp.asarray(share) == 0
    return jax.tree.unflatten(treedef, [s + jnp.where(first, scale * z, 0.0)
                                        for s, z in zip(leaves, full)])
  out = []
  for leaf, offset in zip(leaves, _leaf_offsets(leaves)):
    size = leaf.size
    stretch = -(-size // shares)
    flat = leaf.reshape(-1)
    if stretch * shares != size:  # the last stretch is padded, its padding dropped below
      flat = jnp.pad(flat, (0, stretch * shares - size))
    start = jnp.asarray(share).astype(jnp.uint32) * np.uint32(stretch)
    window = jax.lax.dynamic_slice(flat, (start,), (stretch,))
    window = window + scale * sample(raw, stretch, start + np.uint32(offset))
    flat = jax.lax.dynamic_update_slice(flat, window, (start,))
    out.append(flat[:size].reshape(leaf.shape))
  return jax.tree.unflatten(treedef, out)


def privatize_sum(key: jax.Array, clipped_sum: PyTree, *, noise_multiplier: float,
                  sensitivity: float, expected_batch_size: float, mechanism: str) -> PyTree:
  """(clipped_sum + noise_multiplier * sensitivity * unit_noise) / expected_batch_size, float32."""
  clipped_sum = jax.tree.map(lambda s: s.astype(jnp.float32), clipped_sum)
  scale = noise_multiplier * sensitivity
  if noise_multiplier == 0:
    noisy = clipped_sum
  else:
    noise = tree_noise(key, clipped_sum, mechanism)
    noisy = jax.tree.map(lambda s, z: s + scale * z, clipped_sum, noise)
  return jax.tree.map(lambda s: s / expected_batch_size, noisy)
