"""Local DP on images: noise statistics, epsilon arithmetic, the reproduction option, the grid."""

import logging

import jax
import numpy as np
import PIL.Image
import pytest

from dpjax import ldp
from dpjax.data import images as images_lib


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
  np.testing.assert_array_equal(noisy.train_labels, dataset.train_labels)
  difference = noisy.train_images - dataset.train_images
  assert np.all(difference != 0) and noisy.name == "tiny+ldp(beta=1)"
  both = ldp.perturb_dataset(jax.random.key(6), dataset, 1.0, perturb_test=True, chunk=4)
  np.testing.assert_array_equal(both.train_images, noisy.train_images)
  assert np.all(both.test_images != dataset.test_images)


def test_perturbation_grid_is_a_valid_png(tmp_path):
  batch = _uniform(7, (3, 8, 8, 1))
  path = ldp.save_perturbation_grid(tmp_path / "grid.png", batch, [1.0, 2.0, 4.0],
                                    jax.random.key(8))
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  with PIL.Image.open(path) as image:
    image.verify()
  with PIL.Image.open(path) as image:
    width, height = image.size
    pixels = np.asarray(image.convert("L"))
  assert width > height > 100 and pixels.std() > 10  # 4 columns, 3 rows, not blank
