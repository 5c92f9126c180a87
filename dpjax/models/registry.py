"""Models by name, and their parameters: what the experiments' `--model` flags resolve to."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dpjax.models import alexnet, cnn, pretrained, resnet, scattering, vgg
from dpjax.models.weights import load_params, save_params  # pylint: disable=unused-import

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "linear": lambda num_classes, **kw: cnn.MLP(num_classes=num_classes, hidden=(), **kw),
    "mlp": cnn.MLP,
    "cnn": cnn.SmallCNN,
    "vgg16": vgg.VGG16,
    "resnet18": resnet.ResNet18,
    "alexnet": alexnet.AlexNet,
    # heads on precomputed scattering features (dpjax.models.scattering.scattering_features)
    "scatter_linear": scattering.ScatterLinear,
    "scatter_cnn": scattering.ScatterCNN,
    # torchvision's ResNet-18 from a local converted file (dpjax.models.torchvision_import):
    # a head on precomputed frozen-body features, and the whole network to fine-tune
    "resnet18_probe": pretrained.ProbeLinear,
    "resnet18_finetune": pretrained.PretrainedResNet18,
}


def model_names() -> list[str]:
  return sorted(_BUILDERS)


def build_model(name: str, num_classes: int, **kwargs) -> nn.Module:
  """The named model with `num_classes` outputs; `kwargs` go to its constructor.

  e.g. build_model("resnet18", 5, norm="group"); BatchNorm is refused (see dpjax.models.resnet).
  """
  if name not in _BUILDERS:
    raise ValueError(f"unknown model {name!r}; valid: {', '.join(model_names())}")
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}")
  try:
    return _BUILDERS[name](num_classes=num_classes, **kwargs)
  except TypeError as error:
    raise ValueError(f"model {name!r} does not accept options {sorted(kwargs)}: {error}") from None


def _batched(input_shape: Sequence[int]) -> tuple[int, ...]:
  """(H, W, C) of one example gets a batch axis of 1; a 4-D shape is used as given."""
  shape = tuple(int(size) for size in input_shape)
  if len(shape) == 3:
    return (1,) + shape
  if len(shape) == 4:
    return shape
  raise ValueError(f"input_shape must be (H, W, C) or (N, H, W, C), got {input_shape}")


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_compiled_once(model: nn.Module, key: jax.Array, shape: tuple[int, ...]):
  return model.init(key, jnp.zeros(shape, jnp.float32))["params"]


def init_params(model: nn.Module, key: jax.Array, input_shape: Sequence[int]):
  """Freshly initialised parameters for images of `input_shape` ((H, W, C) or NHWC).

  Compiled once per (model, shape): models are hashable dataclasses, so later calls with other
  keys reuse the compilation.
  """
  shape = _batched(input_shape)
  try:
    hash(model)
  except TypeError:  # e.g. a list-valued field; fine, just compiled afresh
    return jax.jit(model.init)(key, jnp.zeros(shape, jnp.float32))["params"]
  return _init_compiled_once(model, key, shape)


def param_shapes(model: nn.Module, input_shape: Sequence[int]):
  """The parameter tree as shapes only (jax.eval_shape): no memory, no compute."""
  dummy = jax.ShapeDtypeStruct(_batched(input_shape), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), dummy)["params"]


def count_params(params) -> int:
  """Number of scalars in a parameter tree (real arrays or shapes)."""
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))
