"""A drop-in nn.Conv whose lowering is chosen per backend and shape.

XLA's CPU convolution is slow on some shapes where the same product written as matrix
multiplications of a patch matrix is fast: the weight gradient of a 3x3 conv on a 32x32x64 map
(ResNet-18's first stage; 2.3x at batch 32), and every part of a conv on a 2x2 map (VGG-16's
last block; ~100x). `Conv` is `nn.Conv` with the same parameters (names, shapes, initialisers:
checkpoints and ghost clipping see no difference) that computes each of the three products of
a convolution, the forward pass, the input gradient and the weight gradient, either with
`lax.conv_general_dilated` ("native") or as a product with the patch matrix ("patches": the
prod(kernel) shifted, strided slices of the padded input side by side, features ordered
(*kernel, C_in) like the kernel). `lowering="auto"` keeps GPU/TPU on the native convolution and
on CPU picks per part by the rules in `cpu_lowering`, measured per layer
(experiments/benchmark/conv_layers.py; the numbers are in experiments/benchmark/README.md).

Options the patch form does not cover (feature groups, dilation, masks, unshared weights,
circular/reflect/causal padding, a custom `conv_general_dilated`) run nn.Conv unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen.linear import canonicalize_padding

from dpjax import ghost

NATIVE, PATCHES = "native", "patches"
LOWERINGS = ("auto", NATIVE, PATCHES)


@dataclasses.dataclass(frozen=True)
class Lowering:
  """How each product of one convolution is computed: NATIVE or PATCHES."""
  forward: str = NATIVE
  input_grad: str = NATIVE
  weight_grad: str = NATIVE

  @property
  def all_native(self) -> bool:
    return (self.forward, self.input_grad, self.weight_grad) == (NATIVE,) * 3


def cpu_lowering(spatial: Sequence[int], out_spatial: Sequence[int], in_channels: int) -> Lowering:
  """The faster form of each product on XLA CPU (jax 0.10), from per-layer timings.

  * Maps of at most 2x2 (VGG-16's last block): XLA's conv is ~100x slower than the patch
    product in the forward pass and the input gradient, and slower in the weight gradient.
  * Weight gradient of an input conv (<= 4 input channels) on >= 1024 output positions: the
    CIFAR CNN's first layer, 2.3-2.8x faster in patch form per layer, and the whole
    non-private CNN step 0.90-0.94x native; forward and input gradient are faster native.
  Elsewhere the native convolution is kept, even where the weight gradient alone is faster in
  patch form (ResNet-18's 32x32x64 first stage, ~2.3x per layer; its 16x16x128 and 8x8x256
  layers, 1.2-1.5x): the whole ResNet-18 non-private step (batch 32, two devices) was 1.18x
  slower with the first stage in patch form (twice, beside a native control at 1.02) and 1.26x
  with the other layers too; not explained (session 5, experiments/benchmark/README.md).
  The 4x4 / >= 256-channel clause (forward and input gradient in patch form, ~1.3-1.8x faster per
  layer) is withdrawn for the same reason: on the idle machine the whole non-private step with it
  was 1.25x native on ResNet-18 (batch 32) and 1.64x on VGG-16 (batch 16), where VGG-16 with only
  the 2x2 clause was 1.03x (`experiments/benchmark/conv_rules.py`, benchmark README).
  """
  largest = max(spatial)
  if largest <= 2:
    return Lowering(PATCHES, PATCHES, PATCHES)
  if int(np.prod(out_spatial)) >= 1024 and in_channels <= 4:
    return Lowering(NATIVE, NATIVE, PATCHES)
  return Lowering()


def choose_lowering(lowering: str, backend: str, spatial: Sequence[int],
                    out_spatial: Sequence[int], in_channels: int) -> Lowering:
  if lowering not in LOWERINGS:
    raise ValueError(f"Conv lowering={lowering!r}: expected one of {LOWERINGS}.")
  if lowering == NATIVE or (lowering == "auto" and backend != "cpu"):
    return Lowering()
  if lowering == PATCHES:
    return Lowering(PATCHES, PATCHES, PATCHES)
  return cpu_lowering(spatial, out_spatial, in_channels)


def _dimension_numbers(n: int):
  spatial = "DHW"[-n:] if n <= 3 else None
  if spatial is None:
    raise ValueError(f"Conv with {n} spatial dimensions: at most 3 are supported here.")
  return ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")


def _native(x, kernel, strides, pads, precision):
  return jax.lax.conv_general_dilated(
      x, kernel, strides, pads, dimension_numbers=_dimension_numbers(len(strides)),
      precision=precision)


def patch_parts(x, kernel_size, strides, pads) -> list[jax.Array]:
  """The prod(kernel) strided slices of the padded input, one per kernel offset (row-major
  order, like nn.Conv's kernel), each (N, *out_spatial, C_in); `x` is (N, *spatial, C_in)."""
  x = jnp.pad(x, [(0, 0)] + [tuple(p) for p in pads] + [(0, 0)])
  out = [(s - k) // st + 1 for s, k, st in zip(x.shape[1:-1], kernel_size, strides)]
  parts = []
  for offset in np.ndindex(*kernel_size):
    start = (0, *offset, 0)
    limit = (x.shape[0], *[o + (m - 1) * st + 1 for o, m, st in zip(offset, out, strides)],
             x.shape[-1])
    parts.append(jax.lax.slice(x, start, limit, (1, *strides, 1)))
  return parts


def patch_matrix(x, kernel_size, strides, pads):
  """(N, *out_spatial, prod(kernel) * C_in): `patch_parts` side by side, features ordered
  (*kernel, C_in) like nn.Conv's kernel."""
  parts = patch_parts(x, kernel_size, strides, pads)
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)


def patch_weight_grad(x, g, kernel_shape, strides, pads, precision=None):
  """The kernel gradient as one product per kernel offset, slice^T g, stacked.

  Equal to patch_matrix(x)^T g, but without the copy into one (N * T, prod(kernel) * C_in)
  matrix: on XLA CPU the prod(kernel) products of the slices took 0.34-1.07x the time of
  the one product with the stacked matrix on the CNN and ResNet-18 layers timed (session 5).
  """
  g_matrix = g.reshape(-1, g.shape[-1])
  blocks = [jnp.dot(part.reshape(-1, part.shape[-1]).T, g_matrix, precision=precision)
            for part in patch_parts(x, kernel_shape[:-2], strides, pads)]
  return jnp.stack(blocks).reshape(kernel_shape)


def _patches(x, kernel, strides, pads, precision):
  matrix = kernel.reshape(-1, kernel.shape[-1])
  return jnp.dot(patch_matrix(x, kernel.shape[:-2], strides, pads), matrix, precision=precision)


_FORMS = {NATIVE: _native, PATCHES: _patches}


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv(x, kernel, strides: tuple[int, ...], pads: tuple[tuple[int, int], ...],
         lowering: Lowering, precision=None):
  """An N-d convolution, channels last, each product computed in the form `lowering` names."""
  return _FORMS[lowering.forward](x, kernel, strides, pads, precision)


def _conv_fwd(x, kernel, strides, pads, lowering, precision):
  return conv(x, kernel, strides, pads, lowering, precision), (x, kernel)


def _conv_bwd(strides, pads, lowering, precision, residuals, g):
  x, kernel = residuals
  input_form = _FORMS[lowering.input_grad]
  _, x_vjp = jax.vjp(lambda x: input_form(x, kernel, strides, pads, precision), x)
  if lowering.weight_grad == PATCHES:
    kernel_grad = patch_weight_grad(x, g, kernel.shape, strides, pads, precision)
    kernel_grad = kernel_grad.astype(kernel.dtype)
  else:
    _, k_vjp = jax.vjp(lambda k: _native(x, k, strides, pads, precision), kernel)
    (kernel_grad,) = k_vjp(g)
  return x_vjp(g)[0], kernel_grad


conv.defvjp(_conv_fwd, _conv_bwd)


def _tuple(value, n: int) -> tuple[int, ...]:
  if value is None:
    value = 1
  return (value,) * n if isinstance(value, int) else tuple(value)


class Conv(nn.Conv):
  """nn.Conv (same fields, parameters and outputs) with its lowering chosen per backend/shape.

  `lowering`: "auto" (native on GPU/TPU; on CPU per product by `cpu_lowering`), "native" or
  "patches". The choice is made at trace time from static shapes, so it costs nothing per step.
  """
  lowering: str = "auto"

  def _patch_form_applies(self) -> bool:
    n = 1 if isinstance(self.kernel_size, int) else len(self.kernel_size)
    padding = canonicalize_padding(self.padding, n)
    return (self.shared_weights and self.feature_group_count == 1 and self.mask is None
            and set(_tuple(self.input_dilation, n)) == {1}
            and set(_tuple(self.kernel_dilation, n)) == {1}
            and self.conv_general_dilated is None and self.conv_general_dilated_cls is None
            and not (isinstance(padding, str) and padding not in ("SAME", "VALID")))

  @nn.compact
  def __call__(self, inputs):
    if not self._patch_form_applies():
      return super().__call__(inputs)
    kernel_size = (self.kernel_size,) if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
    n = len(kernel_size)
    strides = _tuple(self.strides, n)
    batch_shape = inputs.shape[:inputs.ndim - n - 1]
    x = inputs.reshape((-1,) + inputs.shape[inputs.ndim - n - 1:])
    spatial = x.shape[1:-1]
    padding = canonicalize_padding(self.padding, n)
    pads = (jax.lax.padtype_to_pads(spatial, kernel_size, strides, padding)
            if isinstance(padding, str) else padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    out_spatial = [(s + lo + hi - k) // st + 1
                   for s, (lo, hi), k, st in zip(spatial, pads, kernel_size, strides)]
    kernel = self.param("kernel", self.kernel_init, kernel_size + (x.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = self.promote_dtype(x, kernel, bias, dtype=self.dtype)
    lowering = choose_lowering(self.lowering, jax.default_backend(), spatial, out_spatial,
                               x.shape[-1])
    if lowering.all_native:
      y = _native(x, kernel, strides, pads, self.precision)
    else:
      y = conv(x, kernel, strides, pads, lowering, self.precision)
    if bias is not None:
      y = y + bias
    return y.reshape(batch_shape + y.shape[1:])


# The same parameters and outputs as nn.Conv: ghost clipping treats it as one.
ghost.register_conv_type(Conv)
