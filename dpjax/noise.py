"""Noise for the clipped sum: Gaussian (with l2 clipping) or Laplace (with l1 clipping).

The noise is added ONCE to the sum of clipped per-example gradients, with a standard deviation
(Gaussian) or scale (Laplace) of `noise_multiplier * sensitivity`, and the noisy sum is then
divided by the *expected* batch size. Dividing by the realised batch size would leak it.

Everything here is float32 whatever the parameters' dtype: noise drawn in bfloat16 would be
quantised and the sum it is added to would no longer be the clipped sum.

The key is secret (drawn from the OS CSPRNG by `dpjax.randomness` unless the user opted into
reproducible private randomness); the step folds in its step number, JAX's threefry then
expands it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

MECHANISMS = ("gaussian", "laplace")


def mechanism_for_norm(norm: str) -> str:
  return {"l2": "gaussian", "l1": "laplace"}[norm]


def tree_noise(key: jax.Array, tree: PyTree, mechanism: str) -> PyTree:
  """Unit-scale float32 noise shaped like `tree`: N(0, 1) or Laplace(0, 1) per coordinate."""
  if mechanism not in MECHANISMS:
    raise ValueError(f"mechanism={mechanism!r}: expected one of {MECHANISMS}.")
  leaves, treedef = jax.tree.flatten(tree)
  sample = jax.random.normal if mechanism == "gaussian" else jax.random.laplace
  # One draw for the whole tree, then cut: each generator call has a fixed cost that dominated
  # the DP step of small models (a linear model's two leaves cost twice one draw).
  sizes = [leaf.size for leaf in leaves]
  flat = sample(key, (sum(sizes),), jnp.float32)
  pieces = jnp.split(flat, np.cumsum(sizes)[:-1]) if leaves else []
  noise = [piece.reshape(leaf.shape) for piece, leaf in zip(pieces, leaves)]
  return jax.tree.unflatten(treedef, noise)


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
