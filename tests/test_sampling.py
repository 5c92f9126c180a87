"""Batch selection: fixed shapes, the right distribution, loud overflow, resumable by step."""

import math

import numpy as np
import pytest

from dpjax import sampling


def test_poisson_batches_have_fixed_shape_and_binomial_sizes():
  sampler = sampling.BatchSampler(dataset_size=1000, batch_size=50, seed=1)
  sizes = []
  for step in range(400):
    b = sampler.batch(step)
    assert b.indices.shape == (sampler.padded_size,) and b.mask.shape == (sampler.padded_size,)
    assert b.mask.sum() == b.size
    assert np.all(b.indices[~b.mask] == 0)
    assert len(set(b.indices[b.mask])) == b.size
    sizes.append(b.size)
  # Binomial(1000, 0.05): mean 50, std ~6.9.
  assert np.mean(sizes) == pytest.approx(50, abs=1.5)
  assert np.std(sizes) == pytest.approx(math.sqrt(1000 * 0.05 * 0.95), rel=0.15)


def test_each_example_is_included_with_probability_q():
  sampler = sampling.BatchSampler(dataset_size=20, batch_size=5, seed=0)
  counts = np.zeros(20)
  for step in range(2000):
    b = sampler.batch(step)
    counts[b.indices[b.mask]] += 1
  np.testing.assert_allclose(counts / 2000, 0.25, atol=0.04)


def test_padded_size_is_expected_plus_six_std_rounded_to_multiple():
  size = sampling.padded_batch_size(60000, 256, "poisson", multiple_of=32)
  assert size % 32 == 0
  assert size >= 256 + 6 * math.sqrt(60000 * (256 / 60000) * (1 - 256 / 60000))
  assert sampling.padded_batch_size(100, 10, "fixed") == 10
  assert sampling.padded_batch_size(100, 10, "full") == 100


def test_batches_depend_only_on_seed_and_step():
  a = sampling.BatchSampler(100, 10, seed=3)
  b = sampling.BatchSampler(100, 10, seed=3)
  np.testing.assert_array_equal(a.batch(17).indices, b.batch(17).indices)
  assert not np.array_equal(a.batch(17).indices, a.batch(18).indices)


def test_fixed_size_batches_are_distinct_uniform_subsets():
  sampler = sampling.BatchSampler(30, 7, sampling="fixed", seed=0)
  for step in range(20):
    b = sampler.batch(step)
    assert b.size == 7 and b.mask.all() and len(set(b.indices)) == 7


def test_overflow_is_loud():
  no_padding = sampling.BatchSampler(1000, 50, seed=0, num_std=0.0)
  assert no_padding.padded_size == 50
  with pytest.raises(sampling.BatchOverflowError, match="nothing was dropped"):
    for step in range(100):  # about half of Binomial(1000, 0.05) draws exceed 50
      no_padding.batch(step)


@pytest.mark.parametrize("kwargs,match", [
    (dict(dataset_size=0, batch_size=1), "empty"),
    (dict(dataset_size=5, batch_size=10), "batch_size"),
    (dict(dataset_size=5, batch_size=2, sampling="bogus"), "sampling"),
])
def test_bad_sampler_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    sampling.BatchSampler(**kwargs)
