"""A small AlexNet-style network for 32x32 and 28x28 images."""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp


class AlexNet(nn.Module):
  """Five convs (5x5 64, 5x5 192, 3x3 384, 256, 256), three 3x3/2 max pools, two dense layers.

  The CIFAR-sized AlexNet used in DP papers. Dropout is left out: it would need a PRNG key per
  example inside DP-SGD, and the DP noise already regularises.
  """
  num_classes: int = 10
  conv_features: Sequence[int] = (64, 192, 384, 256, 256)
  hidden: int = 256

  @nn.compact
  def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
    pool = lambda y: nn.max_pool(y, (3, 3), strides=(2, 2), padding="SAME")
    x = images
    for index, features in enumerate(self.conv_features):
      kernel = (5, 5) if index < 2 else (3, 3)
      x = nn.relu(nn.Conv(features, kernel, padding="SAME", name=f"conv{index}")(x))
      if index in (0, 1, len(self.conv_features) - 1):
        x = pool(x)  # 32 -> 16 -> 8 -> 4, and 28 -> 14 -> 7 -> 4
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden, name="dense0")(x))
    x = nn.relu(nn.Dense(self.hidden, name="dense1")(x))
    return nn.Dense(self.num_classes, name="head")(x)
