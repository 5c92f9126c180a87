"""ScatterNet features and heads (Tramer & Boneh 2021, "Differentially private learning needs
better features (or much more data)").

The 2-D scattering transform (Mallat; Morlet wavelets, J=2 scales, L=8 angles, order 2) is a
fixed, data-independent map: 1 + J L + L^2 J (J-1) / 2 = 81 channels per input channel at 1/2^J
of the resolution (28x28x1 -> 7x7x81). Applied to each image alone, it releases nothing about
the other images, so the features are computed once, before training, and DP-SGD trains only the
head on them.

The transform is kymatio's (0.3.0, NumPy frontend: the same numbers as its JAX frontend to 2e-7
on 28x28 inputs, and 2x faster on CPU for this precomputation). kymatio's top-level import pulls
its 3-D module, which needs `scipy.special.sph_harm` (removed in SciPy 1.15), so the 2-D frontend
is imported directly.

Normalisation: Tramer & Boneh normalise the features with GroupNorm (per example) or with
dataset statistics estimated under DP. Raw dataset statistics would be a release of the training
data, so the heads here use GroupNorm only: statistics of one example's own features.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

J = 2
L = 8
CHANNELS_PER_INPUT = 1 + J * L + L * L * J * (J - 1) // 2  # 81


@functools.lru_cache(maxsize=8)
def _transform(height: int, width: int, j: int, angles: int):
  try:
    from kymatio.scattering2d.frontend.numpy_frontend import ScatteringNumPy2D  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise ImportError("ScatterNet features need kymatio: pip install kymatio==0.3.0") from error
  return ScatteringNumPy2D(J=j, shape=(height, width), L=angles, max_order=2)


def scattering_features(images: np.ndarray, *, j: int = J, angles: int = L,
                        batch_size: int = 256) -> np.ndarray:
  """(N, H, W, C) images -> (N, H / 2^j, W / 2^j, C * channels) float32 scattering features.

  H and W must be multiples of 2^j. Channel order: for each input channel, kymatio's order
  (order 0, then the J L first-order paths, then the second-order ones).
  """
  images = np.asarray(images, np.float32)
  if images.ndim != 4:
    raise ValueError(f"scattering_features needs NHWC images, got shape {images.shape}")
  n, height, width, channels = images.shape
  if height % 2 ** j or width % 2 ** j:
    raise ValueError(f"scattering with J={j} needs sides divisible by {2 ** j}; got "
                     f"{height}x{width}: set --config.resize to a multiple (e.g. 28 or 32).")
  transform = _transform(height, width, j, angles)
  planes = np.moveaxis(images, -1, 1)  # N, C, H, W
  parts = [np.asarray(transform(planes[start:start + batch_size]), np.float32)
           for start in range(0, n, batch_size)]
  out = np.concatenate(parts) if parts else np.zeros((0, channels, 1, height >> j, width >> j),
                                                     np.float32)
  # N, C, P, h, w -> N, h, w, C * P
  out = out.reshape(n, -1, height >> j, width >> j)
  return np.ascontiguousarray(np.moveaxis(out, 1, -1))


def _group_norm(channels: int, group_size: int) -> nn.GroupNorm:
  """GroupNorm over groups of `group_size` channels (Tramer & Boneh: 27 groups of 9 on
  CIFAR-10's 243 channels), falling back to one group when the channels do not divide."""
  size = group_size if channels % group_size == 0 else channels
  return nn.GroupNorm(num_groups=None, group_size=size)


class ScatterLinear(nn.Module):
  """GroupNorm (per example) then one dense layer on precomputed scattering features."""
  num_classes: int
  group_size: int = 9

  @nn.compact
  def __call__(self, x):
    x = _group_norm(x.shape[-1], self.group_size)(x)
    return nn.Dense(self.num_classes, name="head")(x.reshape(x.shape[0], -1))


class ScatterCNN(nn.Module):
  """GroupNorm then a small CNN on the features (Tramer & Boneh's ScatterNet+CNN, shrunk)."""
  num_classes: int
  group_size: int = 9
  width: int = 32

  @nn.compact
  def __call__(self, x):
    x = _group_norm(x.shape[-1], self.group_size)(x)
    x = nn.Conv(self.width, (3, 3))(x)
    x = nn.GroupNorm(num_groups=min(8, self.width))(x)
    x = nn.tanh(x)
    x = nn.Conv(self.width, (3, 3))(x)
    x = nn.tanh(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(x)
