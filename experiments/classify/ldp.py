"""Local differential privacy on labelled images: Laplace noise on the pixels, randomised
response on the label, both applied before the records are shared.

Pixels. With pixels in [0, pixel_range] and Laplace noise of scale beta on each pixel
independently, each pixel is released with epsilon = pixel_range / beta. A whole image of d
pixels is then (d * pixel_range / beta)-DP by basic composition (equivalently, its L1
sensitivity is d * pixel_range). For 28x28x3 images and beta = 1 that is epsilon = 2,352 per
image: a guarantee in name only. Report both numbers; never present the per-pixel epsilon as the
image's.

Labels. A record is (image, label). k-ary randomised response keeps the true label with
probability e^eps / (e^eps + k - 1) and otherwise reports one of the k - 1 OTHER labels
uniformly at random, which is eps-DP for the label. The record's epsilon is then
image epsilon + label epsilon (basic composition; `record_epsilon`). Labels may instead be left
in clear (`label_epsilon=None`): the record is then NOT protected (its label is released
exactly, per-record epsilon infinite) and `LABELS_IN_CLEAR` says so for the privacy report.

Randomness. Every function takes the JAX key as an argument. For a real release that key must
be secret and unpredictable: draw it with `dpjax.randomness` (`SECURE.key(stream)`: the OS), never from a seed
stored in a config. Example i of a split gets its noise from `fold_in(split_key, i)`: one
independent stream per example, so noise is independent across images and across pixels and
does not depend on how the data are chunked.

Pictures of the perturbation are drawn by `experiments.classify.plots.save_perturbation_grid`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np

from dpjax.data import images as images_lib


LABELS_IN_CLEAR = (
    "local DP: labels released in clear (no randomised response), so the label of every "
    "training record is NOT covered by the local-DP guarantee; only the image pixels are "
    "perturbed (per-record epsilon is infinite)")


def record_epsilon(image_epsilon: float, label_epsilon: float | None) -> float:
  """Epsilon of one (image, label) record: image + label epsilon (basic composition).

  `label_epsilon=None` means the label is released in clear: the record is not protected and
  its epsilon is infinite (see LABELS_IN_CLEAR).
  """
  if label_epsilon is None:
    return math.inf
  if not label_epsilon >= 0 or not image_epsilon >= 0:
    raise ValueError(f"epsilons must be >= 0, got image {image_epsilon}, label {label_epsilon}")
  return float(image_epsilon) + float(label_epsilon)


@dataclasses.dataclass(frozen=True)
class LdpEpsilon:
  """Epsilon of local DP on a record: per pixel, per image (basic composition), per label
  (randomised response, None when labels are in clear) and per record (image + label)."""
  per_pixel: float
  per_image: float
  num_pixels: int
  per_label: float | None = None  # None: labels released in clear, NOT covered
  num_classes: int | None = None

  @property
  def labels_covered(self) -> bool:
    return self.per_label is not None

  @property
  def per_record(self) -> float:
    """Image + label epsilon; infinite when labels are in clear."""
    return record_epsilon(self.per_image, self.per_label)

  @property
  def not_covered(self) -> tuple[str, ...]:
    """What of the record the local-DP guarantee does not cover, for the privacy report."""
    return () if self.labels_covered else (LABELS_IN_CLEAR,)

  def describe(self) -> str:
    image = (f"epsilon {self.per_pixel:g} per pixel; {self.per_image:g} per image of "
             f"{self.num_pixels} pixels (basic composition: a weak image-level guarantee)")
    if not self.labels_covered:
      return f"{image}; labels in clear (NOT covered: per-record epsilon inf)"
    return (f"{image}; {self.per_label:g} per label (randomised response over "
            f"{self.num_classes} classes); {self.per_record:g} per record (image + label)")


def ldp_epsilon(scale: float, pixel_range: float = 1.0, num_pixels: int = 1, *,
                label_epsilon: float | None = None,
                num_classes: int | None = None) -> LdpEpsilon:
  """Epsilon of adding Laplace(0, `scale`) to each of `num_pixels` values in [0, `pixel_range`],
  and of randomised response with `label_epsilon` on the label (None: labels in clear).

  `num_pixels` counts every value of one image (H * W * C).
  """
  if not scale > 0:
    raise ValueError(f"Laplace scale must be > 0, got {scale}")
  if not pixel_range > 0:
    raise ValueError(f"pixel_range must be > 0, got {pixel_range}")
  if num_pixels < 1:
    raise ValueError(f"num_pixels must be >= 1, got {num_pixels}")
  if label_epsilon is not None:
    rr_keep_probability(label_epsilon, num_classes)  # validates both
  per_pixel = pixel_range / scale
  return LdpEpsilon(per_pixel=per_pixel, per_image=num_pixels * per_pixel,
                    num_pixels=int(num_pixels),
                    per_label=None if label_epsilon is None else float(label_epsilon),
                    num_classes=None if num_classes is None else int(num_classes))


# --------------------------------------------------------------------- labels: randomised response


def rr_keep_probability(epsilon: float, num_classes: int) -> float:
  """P(k-ary randomised response reports the true label) = e^eps / (e^eps + k - 1)."""
  if num_classes is None or int(num_classes) != num_classes or num_classes < 2:
    raise ValueError(f"randomised response needs num_classes >= 2, got {num_classes}")
  if not 0 <= epsilon < math.inf:
    raise ValueError(f"label epsilon must be finite and >= 0, got {epsilon} (labels in clear: "
                     "pass label_epsilon=None, which is reported as not covered)")
  return 1.0 / (1.0 + (num_classes - 1) * math.exp(-epsilon))  # stable form of the above


@functools.partial(jax.jit, static_argnums=(3,))
def _rr_examples(key, first_index, labels, num_classes, keep_probability):
  """Example `first_index + i` draws from `fold_in(key, first_index + i)`."""
  def one(index, label):
    keep_key, other_key = jax.random.split(jax.random.fold_in(key, index))
    keep = jax.random.uniform(keep_key) < keep_probability
    # label + U{1..k-1} mod k: uniform over the k - 1 labels other than the true one.
    other = (label + jax.random.randint(other_key, (), 1, num_classes)) % num_classes
    return jnp.where(keep, label, other)
  indices = first_index + jnp.arange(labels.shape[0])
  return jax.vmap(one)(indices, labels)


def randomized_response(key: jax.Array, labels: np.ndarray, num_classes: int, epsilon: float, *,
                        first_index: int = 0) -> np.ndarray:
  """k-ary randomised response on integer labels in [0, num_classes): epsilon-DP per label.

  Each label is kept with probability e^eps / (e^eps + k - 1), else replaced by one of the
  k - 1 other labels uniformly at random. Label i draws from `fold_in(key, first_index + i)`,
  so draws are independent across labels. Returns int32 labels.
  """
  keep_probability = rr_keep_probability(epsilon, num_classes)
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, "
                     f"{labels.max()}]")
  if labels.size == 0:
    return labels.astype(np.int32)
  noisy = _rr_examples(key, first_index, jnp.asarray(labels, jnp.int32), int(num_classes),
                       jnp.float32(keep_probability))
  return np.asarray(noisy, np.int32)


# --------------------------------------------------------------------------------- pixels


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
                    label_epsilon: float | None = None,
                    clip: bool = False, perturb_test: bool = False,
                    shared_scalar: bool = False,
                    chunk: int = 4096) -> images_lib.ImageDataset:
  """The dataset with its training records perturbed, as each data owner would before sharing.

  Training images get Laplace(0, `scale`) noise on every pixel. Training labels get k-ary
  randomised response with `label_epsilon` (k = dataset.num_classes); with
  `label_epsilon=None` they are left in clear, which `ldp_epsilon(..., label_epsilon=None)`
  reports as NOT covered (LABELS_IN_CLEAR). Report the guarantee with
  `ldp_epsilon(scale, num_pixels=..., label_epsilon=label_epsilon, num_classes=...)`.

  `key` must be secret for a real release (`randomness.SECURE.key(...)`). Test images stay clean unless
  `perturb_test` (the studies evaluate on clean data); validation and test labels are never
  perturbed, so accuracy is measured against the true labels. Example i of a split gets its
  noise from `fold_in(split_key, i)`, so the result depends on `key` only, not on `chunk` (the
  number of images perturbed per device call, which bounds memory).
  `shared_scalar=True` selects the reproduction-only mechanism (see SHARED_SCALAR_CAVEAT).
  """
  if label_epsilon is not None:
    rr_keep_probability(label_epsilon, dataset.num_classes)  # validate before any work
  else:
    logging.warning(LABELS_IN_CLEAR)

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

  # Independent streams: pixels of each split, and the training labels.
  image_key, label_key = jax.random.split(key)
  train_key, val_key, test_key = jax.random.split(image_key, 3)
  labels_tag = "labels clear" if label_epsilon is None else f"label_eps={label_epsilon:g}"
  changes = {"train_images": perturb_split(train_key, dataset.train_images),
             "name": f"{dataset.name}+ldp(beta={scale:g}, {labels_tag}"
                     f"{', shared' if shared_scalar else ''})"}
  if label_epsilon is not None:
    changes["train_labels"] = randomized_response(label_key, dataset.train_labels,
                                                  dataset.num_classes, label_epsilon)
  if perturb_test:
    changes["test_images"] = perturb_split(test_key, dataset.test_images)
    if dataset.val_images is not None:
      changes["val_images"] = perturb_split(val_key, dataset.val_images)
  return dataclasses.replace(dataset, **changes)
