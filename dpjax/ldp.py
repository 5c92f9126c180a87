"""Local differential privacy on images: Laplace noise added to the pixels before they are shared.

With pixels in [0, pixel_range] and Laplace noise of scale beta on each pixel independently,
each pixel is released with epsilon = pixel_range / beta. A whole image of d pixels is then
(d * pixel_range / beta)-DP by basic composition (equivalently, its L1 sensitivity is
d * pixel_range). For 28x28x3 images and beta = 1 that is epsilon = 2,352 per image: a guarantee
in name only. Report both numbers; never present the per-pixel epsilon as the image's.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dpjax.data import images as images_lib


@dataclasses.dataclass(frozen=True)
class LdpEpsilon:
  """Epsilon of the per-pixel Laplace mechanism: per pixel, and per image by basic composition."""
  per_pixel: float
  per_image: float
  num_pixels: int

  def describe(self) -> str:
    return (f"epsilon {self.per_pixel:g} per pixel; {self.per_image:g} per image of "
            f"{self.num_pixels} pixels (basic composition: a weak image-level guarantee)")


def ldp_epsilon(scale: float, pixel_range: float = 1.0, num_pixels: int = 1) -> LdpEpsilon:
  """Epsilon of adding Laplace(0, `scale`) to each of `num_pixels` values in [0, `pixel_range`].

  `num_pixels` counts every value of one image (H * W * C).
  """
  if not scale > 0:
    raise ValueError(f"Laplace scale must be > 0, got {scale}")
  if not pixel_range > 0:
    raise ValueError(f"pixel_range must be > 0, got {pixel_range}")
  if num_pixels < 1:
    raise ValueError(f"num_pixels must be >= 1, got {num_pixels}")
  per_pixel = pixel_range / scale
  return LdpEpsilon(per_pixel=per_pixel, per_image=num_pixels * per_pixel,
                    num_pixels=int(num_pixels))


def laplace_perturb(key: jax.Array, images: jnp.ndarray, scale: float, *,
                    clip: bool = False) -> jnp.ndarray:
  """Adds independent Laplace(0, `scale`) noise to every pixel.

  `clip=True` clips the result back to [0, 1]: post-processing, so the guarantee is unchanged.
  """
  if not scale > 0:
    raise ValueError(f"Laplace scale must be > 0, got {scale}")
  images = jnp.asarray(images, jnp.float32)
  noisy = images + scale * jax.random.laplace(key, images.shape, jnp.float32)
  return jnp.clip(noisy, 0.0, 1.0) if clip else noisy


SHARED_SCALAR_CAVEAT = (
    "shared_scalar_laplace adds one noise value per image, as a published code path did; "
    "differences between pixels stay exact, so this gives NO meaningful image-level privacy.")


def shared_scalar_laplace(key: jax.Array, images: jnp.ndarray, scale: float, *,
                          clip: bool = False) -> jnp.ndarray:
  """REPRODUCTION ONLY: adds ONE Laplace(0, `scale`) scalar to all pixels of each image.

  This reproduces a published code path. It gives no meaningful image-level guarantee: a
  constant shift leaves every difference between pixels exact, so the image content (edges,
  texture, the diagnosis) is released without noise. Do not use it as local DP; use
  `laplace_perturb`.
  """
  if not scale > 0:
    raise ValueError(f"Laplace scale must be > 0, got {scale}")
  logging.warning(SHARED_SCALAR_CAVEAT)  # at trace time: once per compilation under jit
  images = jnp.asarray(images, jnp.float32)
  shift_shape = images.shape[:1] + (1,) * (images.ndim - 1)
  noisy = images + scale * jax.random.laplace(key, shift_shape, jnp.float32)
  return jnp.clip(noisy, 0.0, 1.0) if clip else noisy


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _perturb_examples(key, first_index, images, scale, clip, shared_scalar):
  """Example `first_index + i` gets noise from `fold_in(key, first_index + i)`."""
  mechanism = shared_scalar_laplace if shared_scalar else laplace_perturb
  indices = first_index + jnp.arange(images.shape[0])
  example_keys = jax.vmap(lambda index: jax.random.fold_in(key, index))(indices)
  return jax.vmap(lambda k, x: mechanism(k, x[None], scale, clip=clip)[0])(example_keys, images)


def perturb_dataset(key: jax.Array, dataset: images_lib.ImageDataset, scale: float, *,
                    clip: bool = False, perturb_test: bool = False,
                    shared_scalar: bool = False,
                    chunk: int = 4096) -> images_lib.ImageDataset:
  """The dataset with its training images perturbed, as each data owner would before sharing.

  Test images stay clean unless `perturb_test` (the studies evaluate on clean data). Example i
  of a split gets noise from `fold_in(split_key, i)`, so the result depends on `key` only, not
  on `chunk` (the number of images perturbed per device call, which bounds memory).
  `shared_scalar=True` selects the reproduction-only mechanism (see SHARED_SCALAR_CAVEAT).
  """
  def perturb_split(split_key, split_images):
    size = min(chunk, len(split_images))
    parts = []
    for start in range(0, len(split_images), max(size, 1)):
      block = split_images[start:start + size]
      # Pad the last block to `size`, so every call reuses one compiled program.
      padded = np.pad(block, [(0, size - len(block))] + [(0, 0)] * (block.ndim - 1))
      noisy = _perturb_examples(split_key, start, padded, scale, clip, shared_scalar)
      parts.append(np.asarray(noisy)[:len(block)])
    return np.concatenate(parts) if parts else split_images

  train_key, val_key, test_key = jax.random.split(key, 3)
  changes = {"train_images": perturb_split(train_key, dataset.train_images),
             "name": f"{dataset.name}+ldp(beta={scale:g}{', shared' if shared_scalar else ''})"}
  if perturb_test:
    changes["test_images"] = perturb_split(test_key, dataset.test_images)
    if dataset.val_images is not None:
      changes["val_images"] = perturb_split(val_key, dataset.val_images)
  return dataclasses.replace(dataset, **changes)


def save_perturbation_grid(path: str | os.PathLike, images: np.ndarray, scales: Sequence[float],
                           key: jax.Array, *, clip: bool = True) -> pathlib.Path:
  """Writes a PNG grid: one row per image, the original then one column per Laplace scale.

  Perturbed images are shown clipped to [0, 1] (display only when `clip=False`).
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  images = np.asarray(images, np.float32)
  if images.ndim != 4 or len(images) == 0:
    raise ValueError(f"images must be a non-empty NHWC batch, got shape {images.shape}")
  num_pixels = int(np.prod(images.shape[1:]))
  columns = [("original", images)]
  for index, scale in enumerate(scales):
    noisy = laplace_perturb(jax.random.fold_in(key, index), images, scale, clip=clip)
    epsilon = ldp_epsilon(scale, num_pixels=num_pixels)
    columns.append((f"beta={scale:g}\neps/pixel={epsilon.per_pixel:g}\n"
                    f"eps/image={epsilon.per_image:g}", np.asarray(noisy)))

  figure, axes = plt.subplots(len(images), len(columns), squeeze=False,
                              figsize=(1.8 * len(columns), 1.8 * len(images) + 0.6))
  for column, (title, batch) in enumerate(columns):
    for row in range(len(images)):
      axis = axes[row, column]
      pixels = np.clip(batch[row], 0.0, 1.0)
      if pixels.shape[-1] == 1:
        axis.imshow(pixels[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
      else:
        axis.imshow(pixels)
      axis.set_xticks([])
      axis.set_yticks([])
      if row == 0:
        axis.set_title(title, fontsize=7)
  figure.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(path, format="png", dpi=100)
  plt.close(figure)
  return path
