"""ResNet-18, CIFAR variant, with a normalisation layer that keeps examples independent.

BatchNorm normalises each example with statistics of the whole batch, so one example's output
(and gradient) depends on the others: per-example gradients stop being per-example and DP-SGD's
sensitivity bound no longer holds. GroupNorm (the default, 32 groups) normalises within each
example. The normalisation is a constructor argument and BatchNorm is refused with that reason.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from dpjax.models import conv as conv_lib
from dpjax.models.weights import load_params, save_params  # pylint: disable=unused-import

NormFactory = Callable[[], nn.Module]
NORM_NAMES = ("group", "layer", "none")

_BATCHNORM_REFUSAL = (
    "BatchNorm mixes the examples of a batch (each output depends on the batch's mean and "
    "variance), so per-example gradients are not per-example and the DP-SGD guarantee breaks. "
    "Use norm='group' (GroupNorm, the default), 'layer' or 'none'.")


def _is_batch_norm(norm) -> bool:
  while isinstance(norm, functools.partial):
    norm = norm.func
  if isinstance(norm, str):
    return norm.lower() in ("batch", "batchnorm", "batch_norm", "bn")
  return isinstance(norm, nn.BatchNorm) or (isinstance(norm, type) and issubclass(norm, nn.BatchNorm))


def norm_factory(norm: str | NormFactory, num_groups: int = 32) -> NormFactory:
  """A zero-argument constructor of the normalisation layer; refuses BatchNorm (see module doc)."""
  if _is_batch_norm(norm):
    raise ValueError(_BATCHNORM_REFUSAL)
  if callable(norm):
    return norm
  # epsilon 1e-5 as in PyTorch, so converted pretrained weights behave the same.
  factories = {
      "group": functools.partial(nn.GroupNorm, num_groups=num_groups, epsilon=1e-5),
      "layer": functools.partial(nn.GroupNorm, num_groups=1, epsilon=1e-5),  # over H, W, C
      "none": lambda: (lambda x: x),
  }
  if norm not in factories:
    raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORM_NAMES)} or a callable "
                     "returning a Flax module")
  return factories[norm]


class BasicBlock(nn.Module):
  """Two 3x3 convs with a residual connection; a 1x1 projection when the shape changes."""
  features: int
  strides: int
  norm: NormFactory
  conv_lowering: str = "auto"

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    # Explicit padding 1 (not "SAME") matches PyTorch for stride 2, for converted weights.
    conv = functools.partial(conv_lib.Conv, self.features, use_bias=False,
                             lowering=self.conv_lowering)
    y = conv((3, 3), strides=self.strides, padding=((1, 1), (1, 1)), name="conv1")(x)
    y = nn.relu(self.norm()(y))
    y = conv((3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
    y = self.norm()(y)
    if x.shape != y.shape:
      x = conv((1, 1), strides=self.strides, padding="VALID", name="proj_conv")(x)
      x = self.norm()(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """CIFAR ResNet: 3x3 stem without max-pool, stages of basic blocks, global average pool."""
  stage_sizes: Sequence[int]
  num_classes: int = 10
  num_filters: int = 64
  norm: str | NormFactory = "group"
  num_groups: int = 32
  conv_lowering: str = "auto"  # dpjax.models.conv: per backend and shape; "native" is nn.Conv's

  def __post_init__(self):
    norm_factory(self.norm, self.num_groups)  # refuse BatchNorm when built, not when first run
    super().__post_init__()

  @nn.compact
  def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
    norm = norm_factory(self.norm, self.num_groups)
    x = conv_lib.Conv(self.num_filters, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                      lowering=self.conv_lowering, name="stem_conv")(images)
    x = nn.relu(norm()(x))
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(self.num_filters * 2**stage, strides, norm, self.conv_lowering,
                       name=f"stage{stage + 1}_block{block + 1}")(x)
    x = jnp.mean(x, axis=(-3, -2))
    return nn.Dense(self.num_classes, name="head")(x)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2))
