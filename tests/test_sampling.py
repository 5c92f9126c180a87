"""Batch selection: fixed shapes, the right distribution, loud overflow, resumable by step."""

import math

import numpy as np
import pytest
from scipy import stats

from dpjax import sampling


def test_poisson_batches_have_fixed_shape_and_binomial_sizes():
  sampler = sampling.BatchSampler(dataset_size=1000, batch_size=50)
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
  sampler = sampling.BatchSampler(dataset_size=20, batch_size=5)
  counts = np.zeros(20)
  for step in range(2000):
    b = sampler.batch(step)
    counts[b.indices[b.mask]] += 1
  np.testing.assert_allclose(counts / 2000, 0.25, atol=0.04)


@pytest.mark.parametrize("n,b", [(5201, 1), (2428, 64), (60000, 256), (20, 5), (1000, 999)])
def test_padding_overflows_below_1e9_per_step_at_any_batch_size(n, b):
  """Exact binomial tail: P(batch > padded) <= 1e-9, and one example less would exceed it.

  The old "expected + 6 sd" padding overflowed with probability 1e-5 per step at N=5201, B=1.
  """
  size = sampling.padded_batch_size(n, b, "poisson")
  assert stats.binom.sf(size, n, b / n) <= 1e-9
  if size < n:
    assert stats.binom.sf(size - 1, n, b / n) > 1e-9


def test_padded_size_rounds_up_to_a_multiple():
  size = sampling.padded_batch_size(60000, 256, "poisson", multiple_of=32)
  assert size % 32 == 0 and size - 32 < sampling.padded_batch_size(60000, 256, "poisson")
  assert sampling.padded_batch_size(100, 10, "fixed") == 10
  assert sampling.padded_batch_size(100, 10, "full") == 100


def test_secret_seed_batches_depend_only_on_seed_and_step():
  a = sampling.BatchSampler(100, 10, secret_seed=3)
  b = sampling.BatchSampler(100, 10, secret_seed=3)
  np.testing.assert_array_equal(a.batch(17).indices, b.batch(17).indices)
  assert not np.array_equal(a.batch(17).indices, a.batch(18).indices)


def test_default_batches_are_fresh_os_randomness():
  sampler = sampling.BatchSampler(100, 10)
  assert sampler.secure
  assert not np.array_equal(sampler.batch(17).indices, sampler.batch(17).indices)


@pytest.mark.parametrize("secret_seed", [None, 0])
def test_fixed_size_batches_are_distinct_uniform_subsets(secret_seed):
  sampler = sampling.BatchSampler(30, 7, sampling="fixed", secret_seed=secret_seed)
  counts = np.zeros(30)
  for step in range(600):
    b = sampler.batch(step)
    assert b.size == 7 and b.mask.all() and len(set(b.indices)) == 7
    counts[b.indices] += 1
  np.testing.assert_allclose(counts / 600, 7 / 30, atol=0.09)  # 5 sd of Binomial(600, 7/30)/600


def test_os_poisson_mask_never_exceeds_q():
  # q = 1/3 has no exact binary form: the threshold rounds down, so the rate is <= q.
  masks = np.stack([sampling._os_poisson_mask(3000, 1000) for _ in range(20)])
  assert masks.mean() == pytest.approx(1 / 3, abs=0.01)
  assert sampling._os_poisson_mask(10, 10).all()


def test_overflow_is_loud():
  no_padding = sampling.BatchSampler(1000, 50, overflow_probability=0.5)
  assert no_padding.padded_size == 50
  with pytest.raises(sampling.BatchOverflowError, match="nothing was dropped"):
    for step in range(100):  # about half of Binomial(1000, 0.05) draws exceed 50
      no_padding.batch(step)


def test_epochs_to_steps_is_one_rule():
  """N=1000, B=180, 5 epochs: ceil(5 * 1000 / 180) = 28 (the CLI and every study agree)."""
  assert sampling.steps_for_epochs(5, 1000, 180) == 28
  assert sampling.BatchSampler(1000, 180).steps_for_epochs(5) == 28
  assert sampling.steps_for_epochs(1, 100, 10) == 10


@pytest.mark.parametrize("kwargs,match", [
    (dict(dataset_size=0, batch_size=1), "empty"),
    (dict(dataset_size=5, batch_size=10), "batch_size"),
    (dict(dataset_size=5, batch_size=2, sampling="bogus"), "sampling"),
])
def test_bad_sampler_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    sampling.BatchSampler(**kwargs)


def test_seeded_poisson_includes_each_example_with_probability_q():
  """The opt-in secret-seed path samples at the accounted rate q = B/N too (deterministic)."""
  sampler = sampling.BatchSampler(dataset_size=20, batch_size=5, secret_seed=123)
  counts = np.zeros(20)
  for step in range(2000):
    b = sampler.batch(step)
    counts[b.indices[b.mask]] += 1
  np.testing.assert_allclose(counts / 2000, 0.25, atol=0.04)


def test_default_fixed_size_batches_are_fresh_os_randomness():
  sampler = sampling.BatchSampler(100, 10, sampling="fixed")
  assert sampler.secure
  draws = {tuple(sampler.batch(17).indices) for _ in range(5)}
  assert len(draws) > 1  # the same step drawn again is another subset
