"""Augmentation multiplicity (De et al. 2022): each example's gradient is the mean of its gradients
over K augmented copies, taken BEFORE clipping.

The per-example loss is wrapped (`Multiplicity.loss`): the mean of the loss over K augmented copies
of one example, whose gradient is the mean of the K copies' gradients. The clipping below sees one
gradient per example, so the sensitivity of the clipped sum is still the clip norm per example,
whatever the augmentations were: the augmentation draws are not part of the guarantee.

Augmentations are pure functions of (key, image) for one example (HWC, no batch axis): a random
crop after reflect or zero padding, and an optional horizontal flip. The flip is off unless asked
for: many medical images are not mirror-invariant (a flipped chest X-ray puts the heart on the
right, a different anatomy), nor are digits or text.

Where the keys come from is the step's business (`dpjax.train`): one key per step, split into one
key per example of the padded batch, carried into the loss beside the example.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

PyTree = Any
PAD_MODES = ("reflect", "zero")


def random_crop(key: jax.Array, image: jax.Array, pad: int, mode: str = "reflect") -> jax.Array:
  """`image` (H, W, ...) padded by `pad` pixels on each side of H and W, then cropped back to
  (H, W) at a uniformly random offset (each of the (2 pad + 1)^2 offsets equally likely)."""
  if mode not in PAD_MODES:
    raise ValueError(f"pad mode {mode!r} is unknown; valid: {', '.join(PAD_MODES)}")
  if pad == 0:
    return image
  widths = [(pad, pad), (pad, pad)] + [(0, 0)] * (image.ndim - 2)
  padded = jnp.pad(image, widths, mode="reflect" if mode == "reflect" else "constant")
  offsets = jax.random.randint(key, (2,), 0, 2 * pad + 1)
  start = (offsets[0], offsets[1]) + (0,) * (image.ndim - 2)
  return jax.lax.dynamic_slice(padded, start, image.shape)


def random_flip(key: jax.Array, image: jax.Array) -> jax.Array:
  """`image` (H, W, ...) mirrored left-right with probability 1/2."""
  return jnp.where(jax.random.bernoulli(key), image[:, ::-1], image)


@dataclasses.dataclass(frozen=True)
class ImageAugmentation:
  """Random crop (after padding by `crop_pad`, 0: none) and optional flip of one image, or of
  `example[field]` when the example is a dict. Hashable by value, so that steps built with equal
  augmentations share their compilation. crop_pad=0, flip=False is the identity."""
  crop_pad: int = 4
  flip: bool = False
  pad_mode: str = "reflect"
  field: str = "image"

  def __post_init__(self):
    if self.crop_pad < 0:
      raise ValueError(f"crop_pad={self.crop_pad} must be >= 0 (0: no crop).")
    if self.pad_mode not in PAD_MODES:
      raise ValueError(f"pad_mode={self.pad_mode!r} is unknown; valid: {', '.join(PAD_MODES)}")

  def image(self, key: jax.Array, image: jax.Array) -> jax.Array:
    crop_key, flip_key = jax.random.split(key)
    image = random_crop(crop_key, image, self.crop_pad, self.pad_mode)
    return random_flip(flip_key, image) if self.flip else image

  def __call__(self, key: jax.Array, example: PyTree) -> PyTree:
    if isinstance(example, dict):
      return {**example, self.field: self.image(key, example[self.field])}
    return self.image(key, example)


@dataclasses.dataclass(frozen=True)
class Multiplicity:
  """K augmented copies per example, their losses (hence gradients) averaged before clipping.

  `augment(key, example) -> example` augments one example (e.g. `ImageAugmentation`).
  """
  copies: int
  augment: Callable[[jax.Array, PyTree], PyTree] = ImageAugmentation()

  def __post_init__(self):
    if self.copies < 1:
      raise ValueError(f"augmentation multiplicity copies={self.copies} must be >= 1.")

  def loss(self, loss_fn: Callable) -> Callable:
    """`loss(params, (example, key))`: the mean of `loss_fn` over K augmented copies of the
    example, drawn from `key`. Its gradient is the mean of the copies' gradients, which the
    clipping bounds as one example's."""
    def averaged(params, keyed_example):
      example, key = keyed_example
      keys = jax.random.split(key, self.copies)
      copies = jax.vmap(self.augment, in_axes=(0, None))(keys, example)
      return jnp.mean(jax.vmap(loss_fn, in_axes=(None, 0))(params, copies))
    return averaged

  @staticmethod
  def keyed_batch(batch: PyTree, key: jax.Array, batch_size: int) -> tuple[PyTree, jax.Array]:
    """(batch, one key per example): the input of `loss` for a padded batch of `batch_size`."""
    return batch, jax.random.split(key, batch_size)
