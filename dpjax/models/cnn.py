"""Small image classifiers common in DP papers: the 4-conv CIFAR-10 CNN, and an MLP."""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from dpjax.models import conv


class SmallCNN(nn.Module):
  """The 4-conv network of Opacus's CIFAR-10 example (131,466 parameters on 32x32x3, 10 classes).

  3x3 convs of 32, 64, 64, 128 channels with ReLU, 2x2 average pooling after the first three,
  global average pooling, one dense layer. No normalisation layer, so examples never mix.
  """
  num_classes: int = 10
  channels: Sequence[int] = (32, 64, 64, 128)
  conv_lowering: str = "auto"  # dpjax.models.conv: per backend and shape; "native" is nn.Conv's

  @nn.compact
  def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
    x = images
    for index, features in enumerate(self.channels):
      x = nn.relu(conv.Conv(features, (3, 3), padding="SAME", lowering=self.conv_lowering,
                            name=f"conv{index}")(x))
      if index < len(self.channels) - 1:
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = jnp.mean(x, axis=(-3, -2))
    return nn.Dense(self.num_classes, name="head")(x)


class MLP(nn.Module):
  """Flattens each image and applies dense ReLU layers; `hidden=()` is multinomial logistic regression."""
  num_classes: int = 10
  hidden: Sequence[int] = (256,)

  @nn.compact
  def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
    x = images.reshape((images.shape[0], -1))
    for index, features in enumerate(self.hidden):
      x = nn.relu(nn.Dense(features, name=f"dense{index}")(x))
    return nn.Dense(self.num_classes, name="head")(x)
