"""The unrolled threefry generator against JAX's own, and the statistics of its draws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import random as jax_random
from scipy import stats

from dpjax import threefry

KEY = jnp.asarray([123456789, 987654321], jnp.uint32)


def test_threefry2x32_is_jax_threefry_bit_for_bit():
  x0 = jnp.arange(1000, dtype=jnp.uint32) * np.uint32(2654435761)
  x1 = jnp.arange(1000, dtype=jnp.uint32) + np.uint32(7)
  expected = np.asarray(jax_random.threefry_2x32(KEY, jnp.concatenate([x0, x1])))
  y0, y1 = jax.jit(threefry.threefry2x32)(KEY, x0, x1)
  np.testing.assert_array_equal(np.concatenate([y0, y1]), expected)


def test_raw_key_of_threefry_keys_only():
  np.testing.assert_array_equal(threefry.raw_key(KEY), KEY)
  typed = jax.random.wrap_key_data(KEY, impl="threefry2x32")
  np.testing.assert_array_equal(threefry.raw_key(typed), KEY)
  assert threefry.raw_key(jax.random.key(0, impl="rbg")) is None


def test_a_stretch_at_an_offset_is_that_stretch_of_the_whole_draw():
  whole = threefry.normal(KEY, 1000)
  np.testing.assert_array_equal(threefry.normal(KEY, 300, 700), whole[700:])
  np.testing.assert_array_equal(jax.jit(threefry.normal, static_argnums=1)(KEY, 100, jnp.int32(5)),
                                whole[5:105])


def test_bulk_words_never_repeat_a_derived_key():
  """Bulk blocks are (i + 1, 0); fold_in and split encrypt (0, i): disjoint inputs, so no drawn
  word pair is ever the key of a folded-in or split stream."""
  y0, y1 = threefry.threefry2x32(KEY, jnp.arange(1, 65, dtype=jnp.uint32), jnp.zeros(64, jnp.uint32))
  drawn = set(zip(np.asarray(y0).tolist(), np.asarray(y1).tolist()))
  derived = {tuple(np.asarray(jax.random.fold_in(KEY, i)).tolist()) for i in range(64)}
  derived |= {tuple(k) for k in np.asarray(jax.random.split(KEY, 64)).tolist()}
  assert not drawn & derived


def test_normal_draws_are_standard_normal_float32():
  z = np.asarray(threefry.normal(KEY, 400_001))
  assert z.dtype == np.float32 and z.shape == (400_001,)
  assert abs(z.mean()) < 5 / np.sqrt(z.size)
  assert z.std() == pytest.approx(1.0, rel=0.01)
  assert stats.kstest(z, "norm").pvalue > 1e-3
  assert np.all(np.isfinite(z)) and np.abs(z).max() < 5.4  # the cut at sqrt(2) erfinv(1 - 2^-23)


def test_the_uniform_grid_is_exact_and_symmetric():
  k = np.arange(2 ** 23, dtype=np.float32)
  u = (2.0 * k + 1.0) * np.float32(2.0 ** -23) - 1.0  # the grid `normal` maps through erfinv
  assert np.unique(u).size == 2 ** 23 and np.all(np.abs(u) < 1)
  np.testing.assert_array_equal(u, -u[::-1])


def test_laplace_draws_are_laplace():
  z = np.asarray(threefry.laplace(KEY, 200_001))
  assert z.dtype == np.float32
  assert np.mean(np.abs(z)) == pytest.approx(1.0, rel=0.02)
  assert stats.kstest(z, "laplace").pvalue > 1e-3
