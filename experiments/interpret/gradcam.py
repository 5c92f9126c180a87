"""Grad-CAM, Grad-CAM++ and input-gradient saliency for Flax image classifiers.

Grad-CAM (Selvaraju et al. 2017) at a layer with activations A (H', W', K) and the pre-softmax
score y_c of class c:  weights w_k = mean_ij dy_c/dA_ijk,  map = ReLU(sum_k w_k A_k), then
bilinear upsampling to the input size. Grad-CAM++ (Chattopadhay et al. 2018) replaces the plain
mean with the per-position weights alpha_ijk = g^2 / (2 g^2 + sum_ab A_abk g^3) on ReLU(g).

The layer is hooked from outside with `flax.linen.intercept_methods`: the named submodule's
output gets a zero "probe" added, and the gradient with respect to the probe is the gradient
with respect to the activations. The models need no edits. A layer is named by its module path
joined with "/", e.g. "conv3" (SmallCNN) or "stage4_block2" (ResNet-18); `layer_names` lists
the candidates. Caveat: SmallCNN applies its ReLU outside the conv module, so its hooked
activations are pre-ReLU; pass `activation_fn=jax.nn.relu` to weight the post-ReLU maps (the
gradient is then that of the pre-activation, zero where the unit is off).

Examples are independent (no BatchNorm in dpjax models), so the gradient of the sum over the
batch of each example's class score gives every example's own gradient in one backward pass.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

PyTree = object
AttributionFn = Callable[[PyTree, jnp.ndarray, jnp.ndarray], jnp.ndarray]
METHODS = ("gradcam", "gradcam++")


def _path_name(module: nn.Module) -> str:
  return "/".join(str(part) for part in module.path)


def layer_names(model: nn.Module, params: PyTree, input_shape: Sequence[int]) -> list[str]:
  """Paths of the submodules whose output is a 4-D (N, H, W, C) map, in call order."""
  names: list[str] = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    name = _path_name(context.module)
    if (context.method_name == "__call__" and name and isinstance(out, jnp.ndarray)
        and out.ndim == 4 and name not in names):
      names.append(name)
    return out

  dummy = jax.ShapeDtypeStruct((1,) + tuple(input_shape)[-3:], jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda x: model.apply({"params": params}, x), dummy)
  return names


def default_layer(model: nn.Module, params: PyTree, input_shape: Sequence[int]) -> str:
  """The last 4-D map of the network, the usual Grad-CAM choice."""
  names = layer_names(model, params, input_shape)
  if not names:
    raise ValueError(f"{type(model).__name__} has no submodule with a 4-D output to hook")
  return names[-1]


def _logits_and_layer_grad(model: nn.Module, params: PyTree, images: jnp.ndarray, layer: str,
                           classes: jnp.ndarray):
  """(logits, activations A, d sum_n y_{n, c_n} / dA), A the output of submodule `layer`."""

  def forward(probe):
    captured = []

    def hook(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name == "__call__" and _path_name(context.module) == layer:
        captured.append(out)
        if probe is not None:
          out = out + probe
      return out

    with nn.intercept_methods(hook):
      logits = model.apply({"params": params}, images)
    if len(captured) != 1:
      raise ValueError(f"layer {layer!r} was called {len(captured)} times in "
                       f"{type(model).__name__}; Grad-CAM needs a layer called exactly once. "
                       "List the candidates with experiments.interpret.gradcam.layer_names.")
    return logits, captured[0]

  _, shape_out = jax.eval_shape(lambda: forward(None))
  probe = jnp.zeros(shape_out.shape, shape_out.dtype)

  def class_score(probe):
    logits, activations = forward(probe)
    score = jnp.take_along_axis(logits, classes[:, None], axis=1).sum()
    return score, (logits, activations)

  grads, (logits, activations) = jax.grad(class_score, has_aux=True)(probe)
  return logits, activations, grads


def cam_from_activations(activations: jnp.ndarray, grads: jnp.ndarray,
                         method: str = "gradcam") -> jnp.ndarray:
  """The (N, H', W') map from activations and gradients (N, H', W', K), before upsampling."""
  if method == "gradcam":
    weights = grads.mean(axis=(1, 2))  # (N, K)
  elif method == "gradcam++":
    grads2, grads3 = grads**2, grads**3
    activation_sums = activations.sum(axis=(1, 2), keepdims=True)
    denominator = 2.0 * grads2 + activation_sums * grads3
    safe = jnp.where(denominator != 0.0, denominator, 1.0)
    alphas = jnp.where(denominator != 0.0, grads2 / safe, 0.0)
    weights = (alphas * jax.nn.relu(grads)).sum(axis=(1, 2))
  else:
    raise ValueError(f"unknown CAM method {method!r}; valid: {', '.join(METHODS)}")
  return jax.nn.relu(jnp.einsum("nhwk,nk->nhw", activations, weights))


def upsample(maps: jnp.ndarray, size: Sequence[int]) -> jnp.ndarray:
  """Bilinear resize of (N, h, w) maps to (N, H, W)."""
  return jax.image.resize(maps, (maps.shape[0],) + tuple(size), method="bilinear")


def resolve_classes(logits: jnp.ndarray, classes: jnp.ndarray | None) -> jnp.ndarray:
  """The requested class per example; -1 (or None) means the predicted class."""
  predicted = jnp.argmax(logits, axis=-1)
  if classes is None:
    return predicted
  classes = jnp.asarray(classes, jnp.int32)
  return jnp.where(classes < 0, predicted, classes)


def make_grad_cam(model: nn.Module, layer: str, *, method: str = "gradcam",
                  activation_fn: Callable[[jnp.ndarray], jnp.ndarray] | None = None,
                  upsample_to_input: bool = True) -> AttributionFn:
  """A jitted `cam(params, images (N,H,W,C), classes (N,) int, -1 = predicted) -> (N, H, W)`.

  Maps are >= 0 and not normalised (see `normalize_maps`).
  """
  if method not in METHODS:
    raise ValueError(f"unknown CAM method {method!r}; valid: {', '.join(METHODS)}")

  @jax.jit
  def cam(params, images, classes):
    logits = model.apply({"params": params}, images)
    chosen = resolve_classes(logits, classes)
    _, activations, grads = _logits_and_layer_grad(model, params, images, layer, chosen)
    if activation_fn is not None:
      activations = activation_fn(activations)
    maps = cam_from_activations(activations, grads, method)
    return upsample(maps, images.shape[1:3]) if upsample_to_input else maps

  return cam


def grad_cam(model: nn.Module, params: PyTree, images: jnp.ndarray, *, layer: str | None = None,
             classes: jnp.ndarray | None = None, method: str = "gradcam",
             activation_fn: Callable[[jnp.ndarray], jnp.ndarray] | None = None) -> jnp.ndarray:
  """Grad-CAM (or Grad-CAM++) maps (N, H, W) at `layer` (default: the last 4-D map)."""
  images = jnp.asarray(images, jnp.float32)
  layer = layer or default_layer(model, params, images.shape[1:])
  classes = jnp.full((images.shape[0],), -1, jnp.int32) if classes is None else classes
  return _cached_cam(model, layer, method, activation_fn)(params, images, jnp.asarray(classes))


@functools.lru_cache(maxsize=64)
def _cached_cam(model, layer, method, activation_fn):
  return make_grad_cam(model, layer, method=method, activation_fn=activation_fn)


def make_input_gradient(model: nn.Module, *, reduce: str = "abs_sum") -> AttributionFn:
  """A jitted `saliency(params, images, classes) -> (N, H, W)`: d y_c / d x per pixel.

  `reduce`: "abs_sum" (sum over channels of |gradient|, the usual saliency map), "sum"
  (signed) or "none" (keeps (N, H, W, C)).
  """
  if reduce not in ("abs_sum", "sum", "none"):
    raise ValueError(f"unknown reduce {reduce!r}; valid: abs_sum, sum, none")

  @jax.jit
  def saliency(params, images, classes):
    logits = model.apply({"params": params}, images)
    chosen = resolve_classes(logits, classes)

    def score(x):
      out = model.apply({"params": params}, x)
      return jnp.take_along_axis(out, chosen[:, None], axis=1).sum()

    grads = jax.grad(score)(images)
    if reduce == "abs_sum":
      return jnp.abs(grads).sum(axis=-1)
    if reduce == "sum":
      return grads.sum(axis=-1)
    return grads

  return saliency


def normalize_maps(maps: jnp.ndarray) -> jnp.ndarray:
  """Each map min-max scaled to [0, 1]; a constant map becomes all zeros."""
  axes = tuple(range(1, maps.ndim))
  low = maps.min(axis=axes, keepdims=True)
  span = maps.max(axis=axes, keepdims=True) - low
  return jnp.where(span > 0, (maps - low) / jnp.where(span > 0, span, 1.0), 0.0)
