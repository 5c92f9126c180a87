"""VGG-16 for CIFAR-sized images without BatchNorm, and a convolution that is fast on tiny inputs.

XLA's CPU convolution is pathologically slow for a 3x3 conv on a 2x2 input (512->512: ~380 ms
forward+backward at batch 16, against ~17 ms as patches + matmul). VGG-16's last block runs at
exactly that size, so `VGG` computes convs on inputs of at most `patches_max_size` pixels a
side with `PatchesConv`, which has nn.Conv's parameters and gives the same outputs.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dpjax import ghost
from dpjax.models import conv as conv_lib

VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                512, 512, 512, "M")


class PatchesConv(nn.Module):
  """nn.Conv computed as `conv_general_dilated_patches` then one matmul.

  Same parameters as nn.Conv (kernel (kh, kw, C_in, C_out), bias (C_out,)) and the same
  initialisers, so the two are interchangeable in one parameter tree. Inputs are NHWC with a
  batch axis. Faster than XLA's CPU conv only on tiny spatial sizes (1x1, 2x2); slower above.
  """
  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  padding: str = "SAME"
  use_bias: bool = True
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    kernel_size = tuple(self.kernel_size)
    kernel = self.param("kernel", self.kernel_init, kernel_size + (x.shape[-1], self.features))
    patches = jax.lax.conv_general_dilated_patches(
        x, kernel_size, tuple(self.strides), self.padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    # Patch features are ordered channel-major (C_in, kh, kw); lay the kernel out to match.
    matrix = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(-1, self.features)
    y = jnp.dot(patches, matrix)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,))
    return y


# A conv with nn.Conv's parameters: ghost clipping may treat it as one.
ghost.register_conv_type(PatchesConv)


class VGG(nn.Module):
  """VGG for small images: 3x3 convs with ReLU, 2x2 max pools, one dense layer on the flat map.

  Pools pad like `ceil_mode=True` ("SAME"), so 32x32 and 28x28 inputs both end at 1x1x512
  (28 -> 14 -> 7 -> 4 -> 2 -> 1); on 32x32 this equals the usual floor pooling.
  """
  num_classes: int = 10
  config: Sequence[int | str] = VGG16_CONFIG
  patches_max_size: int = 2
  conv_lowering: str = "auto"  # the other convs: dpjax.models.conv, per backend and shape

  @nn.compact
  def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
    x = images
    conv_index = 0
    for item in self.config:
      if item == "M":
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        continue
      tiny_input = max(x.shape[-3], x.shape[-2]) <= self.patches_max_size
      if tiny_input:
        layer = PatchesConv(item, (3, 3), padding="SAME", name=f"conv{conv_index}")
      else:
        layer = conv_lib.Conv(item, (3, 3), padding="SAME", lowering=self.conv_lowering,
                              name=f"conv{conv_index}")
      x = nn.relu(layer(x))
      conv_index += 1
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.num_classes, name="head")(x)


def VGG16(num_classes: int = 10, **kwargs) -> VGG:  # pylint: disable=invalid-name
  return VGG(num_classes=num_classes, config=VGG16_CONFIG, **kwargs)
