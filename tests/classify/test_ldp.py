"""Local DP on images: noise statistics, epsilon arithmetic, the reproduction option."""

import logging

import jax
import numpy as np
import pytest

from dpjax.data import images as images_lib
from experiments.classify import ldp


def _uniform(seed, shape):
  return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_laplace_noise_has_laplace_statistics(scale):
  clean = np.full((50, 40, 40, 1), 0.5, np.float32)  # 80,000 pixels
  noise = np.asarray(jax.jit(ldp.laplace_perturb, static_argnames="scale")(
      jax.random.key(0), clean, scale=scale) - clean).ravel()
  n = noise.size
  sigma = np.sqrt(2.0) * scale  # Laplace(0, b) has variance 2 b^2
  assert abs(noise.mean()) < 5 * sigma / np.sqrt(n)
  # The sample variance of Laplace noise has relative standard error sqrt(5 / n).
  assert abs(noise.std() / sigma - 1.0) < 5 * np.sqrt(5.0 / n)
  assert abs(np.mean(np.abs(noise)) / scale - 1.0) < 0.02  # E|X| = b
  assert abs(np.mean(np.abs(noise) > scale) - np.exp(-1.0)) < 0.01  # P(|X| > b) = 1/e
  neighbours = np.corrcoef(noise[:-1], noise[1:])[0, 1]
  assert abs(neighbours) < 0.02  # independent per pixel


def test_laplace_perturb_is_seeded_and_clip_is_post_processing():
  clean = _uniform(1, (4, 6, 6, 3))
  first = ldp.laplace_perturb(jax.random.key(2), clean, 1.0)
  np.testing.assert_array_equal(first, ldp.laplace_perturb(jax.random.key(2), clean, 1.0))
  assert not np.array_equal(first, ldp.laplace_perturb(jax.random.key(3), clean, 1.0))
  clipped = ldp.laplace_perturb(jax.random.key(2), clean, 1.0, clip=True)
  np.testing.assert_array_equal(clipped, np.clip(first, 0.0, 1.0))
  assert float(first.min()) < 0.0 < 1.0 < float(first.max())


def test_epsilon_per_pixel_and_per_image():
  epsilon = ldp.ldp_epsilon(scale=2.0, pixel_range=1.0, num_pixels=28 * 28 * 3)
  assert epsilon.per_pixel == 0.5
  assert epsilon.per_image == 1176.0
  assert ldp.ldp_epsilon(scale=4.0, pixel_range=255.0).per_pixel == 63.75
  assert "weak" in epsilon.describe() and "1176" in epsilon.describe()
  for bad in (dict(scale=0.0), dict(scale=1.0, pixel_range=-1.0), dict(scale=1.0, num_pixels=0)):
    with pytest.raises(ValueError):
      ldp.ldp_epsilon(**bad)


def test_shared_scalar_adds_one_value_per_image_and_prints_its_caveat(caplog):
  clean = _uniform(4, (500, 5, 5, 3))
  with caplog.at_level(logging.WARNING):
    noisy = ldp.shared_scalar_laplace(jax.random.key(5), clean, 2.0)
  assert "NO meaningful image-level privacy" in caplog.text
  shift = np.asarray(noisy - clean).reshape(500, -1)
  np.testing.assert_allclose(shift, shift[:, :1] * np.ones_like(shift), atol=1e-5)
  assert abs(shift[:, 0].std() / (np.sqrt(2.0) * 2.0) - 1.0) < 0.2
  assert "no meaningful image-level guarantee" in ldp.shared_scalar_laplace.__doc__


def _tiny_dataset():
  rng = np.random.default_rng(0)
  return images_lib.ImageDataset(
      train_images=rng.uniform(size=(10, 4, 4, 1)).astype(np.float32),
      train_labels=np.arange(10, dtype=np.int32) % 2,
      test_images=rng.uniform(size=(6, 4, 4, 1)).astype(np.float32),
      test_labels=np.arange(6, dtype=np.int32) % 2, num_classes=2, name="tiny")


def test_perturb_dataset_noises_training_images_only_and_is_seeded():
  dataset = _tiny_dataset()
  noisy = ldp.perturb_dataset(jax.random.key(6), dataset, 1.0, chunk=4)
  in_one_call = ldp.perturb_dataset(jax.random.key(6), dataset, 1.0)
  np.testing.assert_array_equal(noisy.train_images, in_one_call.train_images)
  np.testing.assert_array_equal(noisy.test_images, dataset.test_images)
  np.testing.assert_array_equal(noisy.train_labels, dataset.train_labels)  # labels in clear
  difference = noisy.train_images - dataset.train_images
  assert np.all(difference != 0) and noisy.name == "tiny+ldp(beta=1, labels clear)"
  both = ldp.perturb_dataset(jax.random.key(6), dataset, 1.0, perturb_test=True, chunk=4)
  np.testing.assert_array_equal(both.train_images, noisy.train_images)
  assert np.all(both.test_images != dataset.test_images)
  # A raw uint32 key (jax.random.PRNGKey, as the classifier passes) works the same way.
  raw = ldp.perturb_dataset(jax.random.PRNGKey(6), dataset, 1.0, chunk=3)
  np.testing.assert_array_equal(raw.train_images, ldp.perturb_dataset(
      jax.random.PRNGKey(6), dataset, 1.0).train_images)


# ------------------------------------------------------------- independence of the pixel noise


def _train_noise(num_images, shape, *, chunk, seed=0):
  """The Laplace noise perturb_dataset adds to `num_images` constant training images, (N, D)."""
  images = np.full((num_images,) + shape, 0.5, np.float32)
  dataset = images_lib.ImageDataset(
      train_images=images, train_labels=np.zeros(num_images, np.int32),
      test_images=images[:2], test_labels=np.zeros(2, np.int32), num_classes=2, name="const")
  noisy = ldp.perturb_dataset(jax.random.key(seed), dataset, 1.0, chunk=chunk)
  return (noisy.train_images - images).reshape(num_images, -1).astype(np.float64)


def _off_diagonal(correlation):
  return correlation[~np.eye(len(correlation), dtype=bool)]


def test_noise_of_different_images_is_uncorrelated():
  # 24 images of 3,072 pixels in chunks of 7: pairs within a chunk and across chunks (a scheme
  # that reused a stream per chunk position would correlate images 0 and 7 fully).
  noise = _train_noise(24, (32, 32, 3), chunk=7)
  between_images = _off_diagonal(np.corrcoef(noise))
  standard_error = 1.0 / np.sqrt(noise.shape[1])  # of one correlation under independence
  assert np.max(np.abs(between_images)) < 6 * standard_error  # ~0.11
  assert abs(np.mean(between_images)) < 6 * standard_error / np.sqrt(between_images.size)
  # Every image has its own pattern: no two rows equal, no row a copy of another.
  assert len({row.tobytes() for row in noise.astype(np.float32)}) == len(noise)


def test_noise_of_pixels_within_an_image_is_uncorrelated():
  # Correlation between pixel positions, estimated over 3,000 images of 16 pixels.
  noise = _train_noise(3000, (4, 4, 1), chunk=1024)
  between_pixels = _off_diagonal(np.corrcoef(noise.T))
  standard_error = 1.0 / np.sqrt(noise.shape[0])
  assert np.max(np.abs(between_pixels)) < 6 * standard_error  # ~0.11
  # And each pixel position has the Laplace(0, 1) variance of 2 across images.
  assert np.all(np.abs(noise.var(axis=0) / 2.0 - 1.0) < 0.25)


def test_identical_noise_for_every_image_is_caught():
  """The check above fails for the mutation that gives every image the same noise pattern."""
  one_pattern = np.random.default_rng(0).laplace(size=(1, 3072))
  same_for_all = np.repeat(one_pattern, 24, axis=0)
  assert np.min(_off_diagonal(np.corrcoef(same_for_all))) > 0.99
  # And the real mechanism does not do that: distinct seeds give distinct noise too.
  assert not np.array_equal(_train_noise(3, (4, 4, 1), chunk=2, seed=1),
                            _train_noise(3, (4, 4, 1), chunk=2, seed=2))


# ------------------------------------------------------------------- labels: randomised response


@pytest.mark.parametrize("epsilon,num_classes", [(0.5, 2), (1.0, 5), (3.0, 10), (0.0, 4)])
def test_randomized_response_keep_rate_and_uniform_flips(epsilon, num_classes):
  n = 200_000
  labels = np.arange(n, dtype=np.int32) % num_classes
  noisy = ldp.randomized_response(jax.random.key(11), labels, num_classes, epsilon)
  assert noisy.dtype == np.int32 and noisy.shape == labels.shape
  assert noisy.min() >= 0 and noisy.max() < num_classes
  keep = np.exp(epsilon) / (np.exp(epsilon) + num_classes - 1)
  assert ldp.rr_keep_probability(epsilon, num_classes) == pytest.approx(keep)
  kept = noisy == labels
  assert abs(kept.mean() - keep) < 5 * np.sqrt(keep * (1 - keep) / n)
  # A flipped label is uniform over the k - 1 OTHER labels: (label, noisy) pair counts.
  flipped_pairs = np.zeros((num_classes, num_classes))
  np.add.at(flipped_pairs, (labels[~kept], noisy[~kept]), 1)
  assert np.all(np.diag(flipped_pairs) == 0)
  for true_label in range(num_classes):
    row = np.delete(flipped_pairs[true_label], true_label)
    expected = row.sum() / (num_classes - 1)
    # Each count is Binomial(row.sum(), 1/(k-1)) given the row total.
    assert np.all(np.abs(row - expected) < 5 * np.sqrt(expected) + 1)


def test_randomized_response_is_independent_across_labels_and_seeded():
  labels = np.zeros(100_000, np.int32)
  flipped = (ldp.randomized_response(jax.random.key(3), labels, 2, 1.0) != labels)
  flipped = flipped.astype(np.float64)
  assert abs(np.corrcoef(flipped[:-1], flipped[1:])[0, 1]) < 0.02
  again = ldp.randomized_response(jax.random.key(3), labels, 2, 1.0)
  np.testing.assert_array_equal(flipped, again != labels)
  assert not np.array_equal(again, ldp.randomized_response(jax.random.key(4), labels, 2, 1.0))
  for bad in (dict(epsilon=-1.0), dict(epsilon=float("inf")), dict(num_classes=1)):
    with pytest.raises(ValueError):
      ldp.randomized_response(jax.random.key(0), labels, **{"num_classes": 2, "epsilon": 1.0,
                                                             **bad})
  with pytest.raises(ValueError, match="lie in"):
    ldp.randomized_response(jax.random.key(0), np.array([0, 2], np.int32), 2, 1.0)


def test_epsilon_of_a_record_adds_image_and_label():
  epsilon = ldp.ldp_epsilon(scale=2.0, num_pixels=64, label_epsilon=1.5, num_classes=10)
  assert epsilon.per_image == 32.0 and epsilon.per_label == 1.5
  assert epsilon.per_record == 33.5 == ldp.record_epsilon(32.0, 1.5)
  assert epsilon.labels_covered and epsilon.not_covered == ()
  assert "33.5 per record" in epsilon.describe()
  clear = ldp.ldp_epsilon(scale=2.0, num_pixels=64)
  assert clear.per_label is None and not clear.labels_covered
  assert clear.per_record == float("inf") == ldp.record_epsilon(32.0, None)
  assert clear.not_covered == (ldp.LABELS_IN_CLEAR,)
  assert "NOT covered" in ldp.LABELS_IN_CLEAR and "NOT covered" in clear.describe()
  with pytest.raises(ValueError):
    ldp.ldp_epsilon(scale=1.0, label_epsilon=1.0)  # randomised response needs num_classes


def test_perturb_dataset_randomises_training_labels_only(caplog):
  rng = np.random.default_rng(0)
  n, num_classes = 4000, 4
  dataset = images_lib.ImageDataset(
      train_images=rng.uniform(size=(n, 2, 2, 1)).astype(np.float32),
      train_labels=rng.integers(0, num_classes, n).astype(np.int32),
      test_images=rng.uniform(size=(50, 2, 2, 1)).astype(np.float32),
      test_labels=rng.integers(0, num_classes, 50).astype(np.int32),
      num_classes=num_classes, name="four")
  noisy = ldp.perturb_dataset(jax.random.key(1), dataset, 1.0, label_epsilon=1.0, chunk=999)
  keep = ldp.rr_keep_probability(1.0, num_classes)
  kept = np.mean(noisy.train_labels == dataset.train_labels)
  assert abs(kept - keep) < 5 * np.sqrt(keep * (1 - keep) / n)
  np.testing.assert_array_equal(noisy.test_labels, dataset.test_labels)
  assert noisy.name == "four+ldp(beta=1, label_eps=1)"
  # The label stream does not depend on chunking, and images do not depend on labels' noise.
  other_chunks = ldp.perturb_dataset(jax.random.key(1), dataset, 1.0, label_epsilon=1.0)
  np.testing.assert_array_equal(noisy.train_labels, other_chunks.train_labels)
  clear = ldp.perturb_dataset(jax.random.key(1), dataset, 1.0)
  np.testing.assert_array_equal(noisy.train_images, clear.train_images)
  with caplog.at_level(logging.WARNING):
    ldp.perturb_dataset(jax.random.key(1), dataset, 1.0)
  assert "labels released in clear" in caplog.text
  with pytest.raises(ValueError, match="label epsilon"):
    ldp.perturb_dataset(jax.random.key(1), dataset, 1.0, label_epsilon=-1.0)


