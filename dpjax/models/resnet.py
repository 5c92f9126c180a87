"""ResNet-18, CIFAR variant, with a normalisation layer that keeps examples independent.

BatchNorm normalises each example with statistics of the whole batch, so one example's output
(and gradient) depends on the others: per-example gradients stop being per-example and DP-SGD's
sensitivity bound no longer holds. GroupNorm (the default, 32 groups) normalises within each
example. The normalisation is a constructor argument and BatchNorm is refused with that reason.

For torchvision's ImageNet ResNet-18 (dpjax.models.torchvision_import) the model also has
`stem="imagenet"` (7x7 stride-2 conv and a 3x3 stride-2 max-pool) and
`norm="frozen_batchnorm"` (`FrozenBatchNorm`: BatchNorm at inference, a fixed per-channel
affine, which never looks at the batch).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from dpjax import ghost
from dpjax.models import conv as conv_lib
from dpjax.models.weights import load_params, save_params  # pylint: disable=unused-import

NormFactory = Callable[[], nn.Module]
NORM_NAMES = ("group", "layer", "none", "frozen_batchnorm")
STEMS = ("cifar", "imagenet")

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


class FrozenBatchNorm(nn.Module):
  """BatchNorm frozen at its running statistics: y = x * scale + bias, per channel.

  A pretrained BatchNorm at inference computes (x - mean) / sqrt(var + eps) * gamma + beta with
  its running mean and var. The converter (dpjax.models.torchvision_import) folds that into
  scale = gamma / sqrt(var + eps) and bias = beta - mean * scale, so the statistics are fixed
  constants of the file, never updated, and no statistic of a batch is ever computed: each
  example's output depends on that example alone (per-example gradients stay per-example, as
  DP-SGD needs). `scale` and `bias` are ordinary trainable parameters (fine-tuning moves the
  folded affine; the forward pass of the converted weights is torchvision's exactly).

  The running statistics are public here: they were computed on the public pretraining data
  (ImageNet, for torchvision's weights), never on the private training set; releasing a model
  that contains them releases nothing about the private records. Re-estimating them on the
  private data would be a release of that data (and BatchNorm's batch statistics are refused
  outright, see `norm_factory`).
  """

  use_scale: bool = True  # both False: the identity (ghost clipping's "normalised input")
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    channels = x.shape[-1]
    if self.use_scale:
      x = x * self.param("scale", nn.initializers.ones, (channels,), jnp.float32).astype(x.dtype)
    if self.use_bias:
      x = x + self.param("bias", nn.initializers.zeros, (channels,), jnp.float32).astype(x.dtype)
    return x


# Ghost clipping forms its per-example scale and bias gradients exactly, as for GroupNorm.
ghost.register_norm_type(FrozenBatchNorm)


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
      "frozen_batchnorm": FrozenBatchNorm,
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
  """ResNet: a stem, stages of basic blocks, global average pool, a dense head.

  `stem="cifar"` (the default): a 3x3 stride-1 conv without max-pool. `stem="imagenet"`:
  torchvision's 7x7 stride-2 conv (padding 3) then a 3x3 stride-2 max-pool (padding 1), so the
  features are 1/32 of the input's side (64x64 -> 2x2).
  """
  stage_sizes: Sequence[int]
  num_classes: int = 10
  num_filters: int = 64
  norm: str | NormFactory = "group"
  num_groups: int = 32
  conv_lowering: str = "auto"  # dpjax.models.conv: per backend and shape; "native" is nn.Conv's
  stem: str = "cifar"

  def __post_init__(self):
    norm_factory(self.norm, self.num_groups)  # refuse BatchNorm when built, not when first run
    if self.stem not in STEMS:
      raise ValueError(f"unknown stem {self.stem!r}; valid: {', '.join(STEMS)}")
    super().__post_init__()

  def features(self, images: jnp.ndarray) -> jnp.ndarray:
    """The pooled body output (N, 8 * num_filters) before the head; `apply(..., method=)`."""
    return self(images, head=False)

  @nn.compact
  def __call__(self, images: jnp.ndarray, head: bool = True) -> jnp.ndarray:
    norm = norm_factory(self.norm, self.num_groups)
    if self.stem == "imagenet":
      x = conv_lib.Conv(self.num_filters, (7, 7), strides=2, padding=((3, 3), (3, 3)),
                        use_bias=False, lowering=self.conv_lowering, name="stem_conv")(images)
      x = nn.relu(norm()(x))
      # Padding with -inf (Flax's max_pool) is PyTorch's MaxPool2d(3, 2, padding=1).
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      x = conv_lib.Conv(self.num_filters, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                        lowering=self.conv_lowering, name="stem_conv")(images)
      x = nn.relu(norm()(x))
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(self.num_filters * 2**stage, strides, norm, self.conv_lowering,
                       name=f"stage{stage + 1}_block{block + 1}")(x)
    x = jnp.mean(x, axis=(-3, -2))
    if not head:
      return x
    return nn.Dense(self.num_classes, name="head")(x)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2))
