"""Per-example clipping without per-example gradients of the whole model ("ghost clipping").

For a layer y = x W (+ b) the gradient of example i is a_i^T g_i, where a_i is the layer's input
and g_i the gradient of the loss with respect to its output y. So one forward pass and one
backward pass *to the layer outputs* give, for every layer,
  * the per-example gradient norms: ||a_i^T g_i||^2, computed without forming a_i^T g_i when the
    layer has no spatial/sequence axis (= ||a_i||^2 ||g_i||^2) or when T^2 is small (the Gram
    form sum_ts (a_t.a_s)(g_t.g_s)); otherwise a_i^T g_i of one layer is formed (T = positions),
  * the clipped sum itself as one matrix product sum_i w_i a_i^T g_i, with w_i = mask_i *
    min(1, C / ||grad_i||) ("book-keeping": no second backward pass).
Convolutions use the same algebra on patches (`lax.conv_general_dilated_patches`).
GroupNorm/LayerNorm scale and bias gradients per example are small and formed exactly.

The layers are found in any Flax model, unchanged, with `nn.intercept_methods`: calls of
nn.Dense, nn.Conv, nn.GroupNorm and nn.LayerNorm get a zero perturbation added to their output
(its gradient is g) and their input recorded (a). Parameters are matched to the leaves of the
`params` argument by identity. `make_plan` traces the loss's gradient once with each layer's own
parameters behind `stop_gradient`: a leaf whose gradient still depends on the loss reaches it
some other way (as a layer *input*, outside any layer, through a weight-decay term), and ghost
would miss that part of its gradient. Then, and when a layer is called inside a JAX transform of
the loss (lax.scan, vmap, checkpoint and the Flax lifts nn.scan/nn.remat: its inputs live in
another trace), a layer is called twice, parameters are transformed inside `loss_fn`, or for l1
clipping, the caller falls back to `vmap` (`select_chunk_fn` logs why: a warning for
method="ghost", an info line for "auto"). Never a silently zero or partial gradient.

Norms, clip factors and the clipped sums are float32 whatever the parameter or compute dtype
(the products at `HIGHEST` precision); the returned sum leaves are float32.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax.core import tracers as flax_tracers
from flax.linen.linear import canonicalize_padding
from jax.extend import core as jax_core

from dpjax import per_example

PyTree = Any

DENSE, CONV, NORM = "dense", "conv", "norm"

# Per-example kernel gradients of one layer are kept (instead of recomputed as one matmul for
# the clipped sum) while all kept ones stay below this many bytes.
KEEP_PER_EXAMPLE_BYTES = 256 * 2 ** 20

# Products that give norms and sums run at full float32 precision (not TF32/bfloat16 passes,
# the default for float32 matmuls on recent GPUs and TPUs): an example's share of the sum must
# have the norm its clip factor was computed from.
HIGHEST = jax.lax.Precision.HIGHEST

# Conv inputs with fewer channels are multiplied as one stacked patch matrix (XLA on CPU is slow
# on products with tiny dimensions), others as one product per kernel offset.
MIN_CHANNELS_PER_PART = 32

_extra_conv_types: list[type] = []


def register_conv_type(cls: type) -> None:
  """Declares a custom Flax module as an nn.Conv equivalent (same params and attributes)."""
  if cls not in _extra_conv_types:
    _extra_conv_types.append(cls)


def _conv_types() -> tuple[type, ...]:
  return (nn.Conv, *_extra_conv_types)


_extra_norm_types: list[type] = []


def register_norm_type(cls: type) -> None:
  """Declares a custom Flax module as a per-example affine norm: params `scale` and `bias` of
  shape (C,), fields `use_scale` and `use_bias`, and y = xhat * scale + bias where xhat is the
  module's output with use_scale=use_bias=False (e.g. dpjax.models.resnet.FrozenBatchNorm)."""
  if cls not in _extra_norm_types:
    _extra_norm_types.append(cls)


def _tuple(value, n: int) -> tuple[int, ...]:
  if value is None:
    value = 1
  if isinstance(value, int):
    return (value,) * n
  return tuple(value)


def _layer_kind(module: nn.Module, args, kwargs) -> str | None:
  if len(args) != 1 or kwargs:
    return None
  if type(module) is nn.Dense:
    if getattr(module, "dot_general", None) is None and getattr(module, "dot_general_cls", None) is None:
      return DENSE
    return None
  if type(module) in _conv_types():
    if (getattr(module, "feature_group_count", 1) != 1 or getattr(module, "mask", None) is not None
        or _tuple(getattr(module, "input_dilation", 1), 1)[0] != 1
        or len(set(_tuple(getattr(module, "input_dilation", 1), 1))) != 1
        or getattr(module, "conv_general_dilated", None) is not None
        or getattr(module, "conv_general_dilated_cls", None) is not None):
      return None
    ks = module.kernel_size
    n = 1 if isinstance(ks, int) else len(ks)
    padding = canonicalize_padding(module.padding, n)
    if isinstance(padding, str) and padding not in ("SAME", "VALID"):
      return None
    return CONV
  if type(module) is nn.GroupNorm or type(module) in _extra_norm_types:
    return NORM
  if type(module) is nn.LayerNorm and module.feature_axes in (-1, (-1,)):
    return NORM
  return None


@dataclasses.dataclass(frozen=True)
class Layer:
  """One intercepted layer call: what it is, its parameter leaves and its output shape."""
  kind: str
  path: str
  leaf_index: tuple[tuple[str, int], ...] | None  # (param name, flat leaf index); None: unmatched
  out_shape: tuple[int, ...]
  out_dtype: Any
  kernel_size: tuple[int, ...] = ()
  strides: tuple[int, ...] = ()
  padding: Any = None
  input_dilation: tuple[int, ...] = ()
  kernel_dilation: tuple[int, ...] = ()


def _describe(module: nn.Module, kind: str, y, leaf_index) -> Layer:
  path = "/".join(str(p) for p in module.path)
  fields = dict(kind=kind, path=path, leaf_index=leaf_index, out_shape=tuple(y.shape),
                out_dtype=y.dtype)
  if kind == CONV:
    ks = module.kernel_size
    ks = (ks,) if isinstance(ks, int) else tuple(ks)
    n = len(ks)
    fields.update(kernel_size=ks, strides=_tuple(module.strides, n),
                  padding=canonicalize_padding(module.padding, n),
                  input_dilation=_tuple(getattr(module, "input_dilation", 1), n),
                  kernel_dilation=_tuple(getattr(module, "kernel_dilation", 1), n))
  return Layer(**fields)


# The parameter names whose per-example gradients each kind of layer accounts for.
_OWN_PARAMS = {DENSE: ("kernel", "bias"), CONV: ("kernel", "bias"), NORM: ("scale", "bias")}


class _Interceptor:
  """Flax method interceptor in one of two modes.

  discover: record each layer (kind, parameters, output shape) and compute it with its own
    parameters behind `stop_gradient`, so that the gradient of the traced loss shows which
    parameters reach the loss other than as the kernel/bias/scale of a recorded layer.
  capture: add a perturbation to each layer output and record the layer's input (for norms, the
    normalised input).
  A layer called inside a JAX transform of the loss (`lax.scan`, `vmap`, `checkpoint`, and the
  Flax lifts built on them) runs under another trace than the loss: its inputs cannot be
  recorded, so discover notes it in `nested` (and the caller falls back to vmap).
  """

  def __init__(self, leaves: Sequence[Any], mode: str, layers: Sequence[Layer] = (),
               perturbations: Sequence[jax.Array] = ()):
    self.index = {id(x): i for i, x in enumerate(leaves)}
    self.mode = mode
    self.layers = list(layers)
    self.perturbations = perturbations
    self.captured: list[jax.Array] = []
    self.nested: list[str] = []
    self.count = 0
    self.busy = False
    self.trace = flax_tracers.current_trace()

  def _unbound(self, module: nn.Module, x, variables, **overrides):
    """`module` applied to `x` as a fresh, unbound copy with the given variables."""
    self.busy = True  # the copy is an intercepted layer type too
    try:
      return module.clone(parent=None, **overrides).apply(variables, x)
    finally:
      self.busy = False

  def __call__(self, next_fun, args, kwargs, context):
    kind = None
    if context.method_name == "__call__" and not self.busy:
      kind = _layer_kind(context.module, args, kwargs)
    if kind is None:
      return next_fun(*args, **kwargs)
    module = context.module
    if flax_tracers.current_trace() != self.trace:
      if self.mode == "discover":
        self.nested.append("/".join(str(p) for p in module.path))
        return next_fun(*args, **kwargs)
      raise RuntimeError("a layer is called inside a JAX transform of loss_fn; ghost clipping "
                         "cannot capture its inputs (make_plan should have refused this model).")
    if self.mode == "discover":
      own = dict(module.variables.get("params", {}))
      matched = [(name, self.index.get(id(value))) for name, value in own.items()]
      if all(i is not None for _, i in matched):
        stopped = {name: jax.lax.stop_gradient(value) for name, value in own.items()}
        y = self._unbound(module, args[0], {"params": stopped}) if own else next_fun(*args)
        leaf_index = tuple(matched)
      else:
        y = next_fun(*args, **kwargs)
        leaf_index = None
      self.layers.append(_describe(module, kind, y, leaf_index))
      return y
    perturbation = self.perturbations[self.count]
    self.count += 1
    (x,) = args
    y = next_fun(x) + perturbation
    if kind == NORM:
      x = self._unbound(module, x, {}, use_scale=False, use_bias=False)
    self.captured.append(x)
    return y


def _cast_floats(tree: PyTree, dtype) -> PyTree:
  if dtype is None:
    return tree
  def cast(x):
    x = jnp.asarray(x)
    return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
  return jax.tree.map(cast, tree)


def _spec(tree: PyTree, compute_dtype=None) -> PyTree:
  def spec(x):
    dtype = jnp.result_type(x)
    if compute_dtype is not None and jnp.issubdtype(dtype, jnp.floating):
      dtype = jnp.dtype(compute_dtype)
    return jax.ShapeDtypeStruct(jnp.shape(x), dtype)
  return jax.tree.map(spec, tree)


@dataclasses.dataclass(frozen=True)
class Plan:
  layers: tuple[Layer, ...]


_CALL_PRIMITIVES = ("pjit", "jit", "closed_call", "core_call", "remat", "checkpoint",
                    "custom_jvp_call", "custom_vjp_call")


def _call_body(eqn) -> jax_core.Jaxpr | None:
  """The body of a call-like equation whose inputs and outputs are the body's, else None."""
  if eqn.primitive.name not in _CALL_PRIMITIVES:
    return None
  for key in ("jaxpr", "call_jaxpr"):
    body = eqn.params.get(key)
    body = getattr(body, "jaxpr", body)  # ClosedJaxpr -> Jaxpr
    if (isinstance(body, jax_core.Jaxpr) and len(body.invars) == len(eqn.invars)
        and len(body.outvars) == len(eqn.outvars)):
      return body
  return None


def _depends_on(jaxpr: jax_core.Jaxpr, sources: Sequence[bool]) -> list[bool]:
  """For each output of `jaxpr`, whether it may depend on the inputs flagged in `sources`.

  Conservative: an equation's outputs all depend on any of its inputs (call bodies are entered,
  loops are not), and an equation with a dependent input taints the references it is given.
  """
  dependent = {v for v, s in zip(jaxpr.invars, sources) if s}
  for eqn in jaxpr.eqns:
    ins = [isinstance(v, jax_core.Var) and v in dependent for v in eqn.invars]
    if not any(ins):
      continue
    body = _call_body(eqn)
    outs = _depends_on(body, ins) if body is not None else [True] * len(eqn.outvars)
    dependent.update(v for v, d in zip(eqn.outvars, outs) if d)
    dependent.update(v for v in eqn.invars if isinstance(v, jax_core.Var)
                     and "Ref" in type(getattr(v, "aval", None)).__name__)
  return [isinstance(v, jax_core.Var) and v in dependent for v in jaxpr.outvars]


def make_plan(loss_fn: Callable, params: PyTree, example: PyTree, args: tuple = (),
              compute_dtype=None) -> tuple[Plan | None, str]:
  """Finds the layers of `loss_fn` and checks that they account for every parameter gradient.

  `example` is one example (no batch axis), arrays or `ShapeDtypeStruct`s. Returns
  `(plan, "")` when the ghost path applies, else `(None, reason)`. Runs at trace time only:
  it traces the gradient of `loss_fn` once, with every intercepted layer's own parameters
  behind `stop_gradient`. A parameter leaf whose gradient then still depends on the loss's
  cotangent reaches the loss some other way (a layer input, a parameter outside any layer,
  weight decay in the loss, ...) and ghost clipping would miss that part of its gradient.
  """
  leaves, treedef = jax.tree.flatten(params)
  # Traced on specs already in the compute dtype, so that a cast is not mistaken for a use.
  leaf_specs, example_spec = _spec(leaves, compute_dtype), _spec(example, compute_dtype)
  found: list[Layer] = []
  nested: list[str] = []

  def loss_of(lv, ex):
    interceptor = _Interceptor(lv, "discover")
    with nn.intercept_methods(interceptor):
      loss = loss_fn(jax.tree.unflatten(treedef, lv), ex, *args)
    found.extend(interceptor.layers)
    nested.extend(interceptor.nested)
    return loss

  def cotangent_to_grads(lv, ex, cotangent):
    loss, vjp = jax.vjp(lambda l: loss_of(l, ex), lv)
    return vjp(jnp.broadcast_to(cotangent, jnp.shape(loss)).astype(jnp.result_type(loss)))[0]

  try:
    closed = jax.make_jaxpr(cotangent_to_grads)(leaf_specs, example_spec,
                                                jax.ShapeDtypeStruct((), jnp.float32))
  except Exception as e:  # pylint: disable=broad-except  (vmap then shows any real error)
    if nested:
      return None, _nested_reason(nested)
    return None, f"tracing the gradient of loss_fn with intercepted layers failed ({e!r:.300})"
  if nested:
    return None, _nested_reason(nested)
  if not found:
    return None, "no nn.Dense/nn.Conv/nn.GroupNorm/nn.LayerNorm call found in loss_fn"
  unmatched = [l.path for l in found if l.leaf_index is None]
  if unmatched:
    return None, (f"parameters of layers {unmatched} are not leaves of the params argument "
                  "(are they transformed inside loss_fn?)")
  odd = [(l.path, name) for l in found for name, _ in l.leaf_index
         if name not in _OWN_PARAMS[l.kind]]
  if odd:
    return None, f"layers have parameters ghost clipping does not handle: {odd}"
  owners: dict[int, list[str]] = {}
  for layer in found:
    for _, i in layer.leaf_index:
      owners.setdefault(i, []).append(layer.path)
  shared = {tuple(v) for v in owners.values() if len(v) > 1}
  if shared:
    return None, f"layers {sorted(shared)} are called more than once with the same parameters"

  sources = [False] * (len(closed.jaxpr.invars) - 1) + [True]  # the loss cotangent
  reaches = _depends_on(closed.jaxpr, sources)
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  outside = [paths[i] for i, r in enumerate(reaches) if r]
  if outside:
    return None, (f"parameters {outside} are used outside Dense/Conv/GroupNorm/LayerNorm layers "
                  "(e.g. as a layer input, not as its kernel/bias/scale): their gradient is not "
                  "that of a layer's own parameters")
  return Plan(layers=tuple(found)), ""


def _nested_reason(paths: Sequence[str]) -> str:
  return (f"layers {sorted(set(paths))} are called inside a JAX transform in loss_fn "
          "(lax.scan, vmap, checkpoint/remat, nn.scan, ...)")


def _patch_parts(layer: Layer, x: jax.Array, batch_size: int) -> list[jax.Array]:
  """The patches of a conv input as prod(kernel) arrays (B, T, C_in), one per kernel offset.

  Concatenated along the last axis they are the (B, T, prod(kernel) * C_in) patch matrix, whose
  features are ordered (*kernel, C_in) like nn.Conv's kernel. Kept apart because XLA on CPU
  is faster on prod(kernel) products of these slices than on one product with the stacked
  matrix, and `lax.conv_general_dilated_patches` is itself a convolution costlier than the layer.
  """
  n = len(layer.kernel_size)
  x = x.reshape((-1,) + x.shape[x.ndim - n - 1:])
  spatial = x.shape[1:-1]
  dilated = [(k - 1) * d + 1 for k, d in zip(layer.kernel_size, layer.kernel_dilation)]
  pads = layer.padding
  if isinstance(pads, str):
    pads = jax.lax.padtype_to_pads(spatial, dilated, layer.strides, pads)
  x = jnp.pad(x, [(0, 0)] + [tuple(p) for p in pads] + [(0, 0)])
  out_size = [(s + lo + hi - k) // st + 1
              for s, (lo, hi), k, st in zip(spatial, pads, dilated, layer.strides)]
  parts = []
  for offset in np.ndindex(*layer.kernel_size):
    start = [0] + [o * d for o, d in zip(offset, layer.kernel_dilation)] + [0]
    limit = ([x.shape[0]] + [s + (m - 1) * st + 1 for s, m, st in zip(start[1:], out_size, layer.strides)]
             + [x.shape[-1]])
    part = jax.lax.slice(x, start, limit, [1] + list(layer.strides) + [1])
    parts.append(part.reshape(batch_size, -1, x.shape[-1]))
  return parts


GRAM, MATERIALIZE = "gram", "materialize"


def norm_strategy(positions: int, patch_features: int, out_features: int) -> str:
  """How a layer with T positions finds ||a_i^T g_i||: GRAM or MATERIALIZE, by estimated cost.

  Gram: sum_ts (a_t.a_s)(g_t.g_s), ~ B T^2 (p + o) multiply-adds and no p x o array per
  example; materialise: a_i^T g_i, ~ B T p o, which is then reused for the clipped sum. The
  one with fewer multiply-adds wins ("mixed ghost clipping", Bu et al. 2022). Per-layer timings
  on XLA CPU (session 5, experiments/benchmark/README.md) agreed with this estimate on the
  CIFAR CNN's four layers at batch 128.
  """
  t, p, o = positions, patch_features, out_features
  return GRAM if t * (p + o) < p * o else MATERIALIZE


def _zero_rows(x: jax.Array, keep: jax.Array) -> jax.Array:
  return jnp.where(keep.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0.0)


class _LayerGrads:
  """Per-example squared norms of one layer's parameter gradients and their weighted sum."""

  def __init__(self, layer: Layer, feature: jax.Array, out_grad: jax.Array, params_leaves,
               budget: list[int]):
    self.layer = layer
    self.names = dict(layer.leaf_index)
    self.shapes = {name: params_leaves[i].shape for name, i in layer.leaf_index}
    batch = out_grad.shape[0]
    f32 = jnp.float32
    if layer.kind == NORM:
      xhat = feature.astype(f32).reshape(batch, -1, feature.shape[-1])
      g = out_grad.astype(f32).reshape(batch, -1, out_grad.shape[-1])
      self.exact = {"scale": jnp.sum(xhat * g, axis=1), "bias": jnp.sum(g, axis=1)}
      self.exact = {k: v for k, v in self.exact.items() if k in self.names}
      return
    if layer.kind == CONV:
      parts = [p.astype(f32) for p in _patch_parts(layer, feature, batch)]
      if parts[0].shape[-1] < MIN_CHANNELS_PER_PART:
        parts = [jnp.concatenate(parts, axis=-1)]
    else:
      parts = [feature.astype(f32).reshape(batch, -1, feature.shape[-1])]
    g = out_grad.astype(f32).reshape(batch, -1, out_grad.shape[-1])
    self.parts, self.g = parts, g
    t, p, o = g.shape[1], sum(a.shape[2] for a in parts), g.shape[2]
    self.exact = {}
    if "bias" in self.names:
      self.exact["bias"] = jnp.sum(g, axis=1)
    self.per_example_kernel = None
    self.rows_finite = None
    if t == 1:
      a = jnp.concatenate(parts, axis=-1)
      a_sq = jnp.sum(a[:, 0] ** 2, axis=1)
      self.kernel_sq = a_sq * jnp.sum(g[:, 0] ** 2, axis=1)
      self.parts = [a]
      self.rows_finite = jnp.all(jnp.isfinite(a_sq))
    elif norm_strategy(t, p, o) == GRAM:
      gram_a = sum(jnp.einsum("btc,bsc->bts", a, a, precision=HIGHEST) for a in parts)
      gram_g = jnp.einsum("bto,bso->bts", g, g, precision=HIGHEST)
      self.kernel_sq = jnp.sum(gram_a * gram_g, axis=(1, 2))
    else:
      per_example = jnp.concatenate([jnp.einsum("btc,bto->bco", a, g, precision=HIGHEST)
                                     for a in parts], axis=1)
      self.kernel_sq = jnp.sum(per_example ** 2, axis=(1, 2))
      nbytes = per_example.size * 4
      if nbytes <= budget[0]:
        budget[0] -= nbytes
        self.per_example_kernel = per_example

  def squared_norms(self) -> dict[str, jax.Array]:
    out = {name: jnp.sum(v ** 2, axis=1) for name, v in self.exact.items()}
    if self.layer.kind != NORM:
      out["kernel"] = self.kernel_sq
    return out

  def weighted_sum(self, name: str, weights: jax.Array, keep: jax.Array) -> jax.Array:
    shape = self.shapes[name]
    if name in self.exact:
      return jnp.tensordot(weights, _zero_rows(self.exact[name], keep), axes=1,
                           precision=HIGHEST).reshape(shape)
    if self.per_example_kernel is not None:
      matrix = jnp.tensordot(weights, _zero_rows(self.per_example_kernel, keep), axes=1,
                             precision=HIGHEST)
    elif self.rows_finite is not None:
      # One position (Dense): sum_i w_i a_i^T g_i = A^T (w * G). Zeroing A's dropped rows first
      # (0 * inf = nan) costs a copy of the whole input, most of a small model's DP overhead;
      # it is needed only when some row of A is not finite, which the norms already tell.
      a = self.parts[0][:, 0]
      gw = jnp.where(keep[:, None], self.g[:, 0] * weights[:, None], 0.0)
      product = lambda a: jnp.einsum("bc,bo->co", a, gw, precision=HIGHEST)
      matrix = jax.lax.cond(self.rows_finite, product, lambda a: product(_zero_rows(a, keep)), a)
    else:
      g = _zero_rows(self.g, keep) * weights[:, None, None]
      matrix = jnp.concatenate([jnp.einsum("btc,bto->co", _zero_rows(a, keep), g,
                                           precision=HIGHEST)
                                for a in self.parts], axis=0)
    # Dense: (C_in, C_out); conv patch features are (*kernel, C_in), as nn.Conv's kernel.
    return matrix.reshape(shape)


def _varying_like(x: jax.Array, like: jax.Array) -> jax.Array:
  """Inside `shard_map`, gives `x` the device-varying axes of `like` (the batch).

  Otherwise the gradient with respect to the (invariant) zero perturbations would be summed
  over devices, mixing examples of different devices.
  """
  aval = jax.typeof(like)
  axes = getattr(aval, "vma", None)  # the attribute's name differs across jax versions
  if axes is None:
    axes = getattr(getattr(aval, "manual_axis_type", None), "varying", ())
  axes = tuple(sorted(axes or ()))
  if not axes:
    return x
  return jax.lax.pcast(x, axes, to="varying")


def capture(loss_fn: Callable, plan: Plan, params: PyTree, batch: PyTree, args: tuple = (),
            compute_dtype=None):
  """Per-example losses (B,), and per layer its inputs and the gradients at its output."""
  first = jax.tree.leaves(batch)[0]
  batch_size = first.shape[0]
  perturbations = [_varying_like(jnp.zeros((batch_size,) + l.out_shape, l.out_dtype), first)
                   for l in plan.layers]

  def per_example(perturbation, example):
    p = _cast_floats(params, compute_dtype)
    interceptor = _Interceptor(jax.tree.leaves(p), "capture", plan.layers, perturbation)
    with nn.intercept_methods(interceptor):
      loss = loss_fn(p, _cast_floats(example, compute_dtype), *args)
    if interceptor.count != len(plan.layers):
      raise RuntimeError(f"loss_fn called {interceptor.count} layers, {len(plan.layers)} expected.")
    return loss.astype(jnp.float32), interceptor.captured

  def total(perturbation):
    losses, captured = jax.vmap(per_example)(perturbation, batch)
    return jnp.sum(losses), (losses, captured)

  out_grads, (losses, features) = jax.grad(total, has_aux=True)(perturbations)
  return losses, features, out_grads


def clip_and_sum_chunk(loss_fn, params, batch, mask, config: per_example.ClippingConfig, args,
                       plan: Plan):
  """Same contract as `per_example.clip_and_sum_chunk`, by ghost norms and book-keeping."""
  losses, features, out_grads = capture(loss_fn, plan, params, batch, args, config.compute_dtype)
  leaves, treedef = jax.tree.flatten(params)
  budget = [KEEP_PER_EXAMPLE_BYTES]
  layer_grads = [_LayerGrads(layer, f, g, leaves, budget)
                 for layer, f, g in zip(plan.layers, features, out_grads)]
  leaf_sq: dict[int, jax.Array] = {}
  owner: dict[int, tuple[_LayerGrads, str]] = {}
  for lg in layer_grads:
    for name, sq in lg.squared_norms().items():
      leaf_sq[lg.names[name]] = sq
      owner[lg.names[name]] = (lg, name)

  f32 = jnp.float32
  losses = losses.astype(f32)
  leaf_sq = {i: sq.astype(f32) for i, sq in leaf_sq.items()}
  zero = jnp.zeros_like(losses)
  if config.layer_clip_norms is None:
    norms = jnp.sqrt(sum(leaf_sq.values(), zero))
    finite = jnp.isfinite(losses) & jnp.isfinite(norms)
    keep = mask & finite
    weights = jnp.where(keep, per_example.clip_factor(norms, config.clip_norm).astype(f32), f32(0))
    leaf_weights = {i: weights for i in range(len(leaves))}
    clipped = norms > config.clip_norm
  else:
    names = per_example.group_names(params)
    missing = sorted(set(names) - set(config.layer_clip_norms))
    if missing:
      raise ValueError(f"layer_clip_norms has no bound for parameter groups {missing}; "
                       f"groups are {sorted(set(names))}.")
    group_sq: dict[str, jax.Array] = {}
    for i, name in enumerate(names):
      group_sq[name] = group_sq.get(name, zero) + leaf_sq.get(i, zero)
    group_norm = {n: jnp.sqrt(v) for n, v in group_sq.items()}
    norms = jnp.sqrt(sum(group_sq.values(), zero))
    finite = jnp.isfinite(losses) & jnp.isfinite(norms)
    keep = mask & finite
    factors = {n: jnp.where(keep, per_example.clip_factor(v, config.layer_clip_norms[n]).astype(f32),
                            f32(0))
               for n, v in group_norm.items()}
    leaf_weights = {i: factors[name] for i, name in enumerate(names)}
    clipped = jnp.any(jnp.stack([group_norm[n] > config.layer_clip_norms[n] for n in group_norm]),
                      axis=0)

  # The sums stay float32 whatever the parameter or compute dtype: rounded to bfloat16, the
  # sum of the other examples' contributions could move by more than C with one example.
  summed = []
  for i, leaf in enumerate(leaves):
    if i in owner:
      lg, name = owner[i]
      summed.append(lg.weighted_sum(name, leaf_weights[i].astype(f32), keep).astype(f32))
    else:  # make_plan checked that the loss does not depend on it: its gradient is zero
      summed.append(jnp.zeros(jnp.shape(leaf), f32))
  metrics = per_example.clip_metrics(mask, keep, clipped, finite, norms, losses)
  return jax.tree.unflatten(treedef, summed), metrics


def select_chunk_fn(loss_fn, params, batch, config: per_example.ClippingConfig, args):
  """The per-chunk clipping function for `config.method`: ghost when it applies, else vmap."""
  reason = ""
  if config.norm != "l2":
    reason = f"norm={config.norm!r} (ghost norms are l2 only)"
  else:
    example = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), batch)
    plan, reason = make_plan(loss_fn, params, example, args, config.compute_dtype)
    if plan is not None:
      logging.info("per-example clipping: ghost norms over %d layers", len(plan.layers))
      return lambda *a: clip_and_sum_chunk(*a, plan=plan)
  log = logging.warning if config.method == "ghost" else logging.info
  log("per-example clipping: falling back to vmap (%s)", reason)
  return None
