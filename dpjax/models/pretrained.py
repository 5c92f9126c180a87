"""A pretrained ResNet-18 from a local file: frozen-body features for a linear probe, and the
model to fine-tune (nothing is downloaded; dpjax.models.torchvision_import converts the file).

Linear probe: the body (everything but the head) of `ResNet18(stem="imagenet",
norm="frozen_batchnorm")` with the converted weights is a fixed map applied to each image
alone, so its 512 pooled features are computed once, before training (as the ScatterNet
features are), and DP-SGD trains only `ProbeLinear` on them. The body's weights are public
(pretrained on public data), so the features release nothing about the other images.

Fine-tuning: every parameter trained with DP-SGD from the converted weights, the head
re-initialised for the new number of classes (`init_weights=FILE`, `keep_init=("head",)`).
"""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from dpjax.models import resnet
from dpjax.models import torchvision_import

FEATURES = torchvision_import.WIDTHS[-1]  # 512

PretrainedResNet18 = functools.partial(resnet.ResNet18, stem="imagenet", norm="frozen_batchnorm")


class ProbeLinear(nn.Module):
  """LayerNorm (per example: one image's own 512 features) then one dense layer.

  The normalisation uses no statistic of the other examples (DP-safe) and makes the head's
  learning rate independent of the body's feature scale, which differs between weight files.
  """
  num_classes: int

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    x = nn.LayerNorm(epsilon=1e-5)(x)
    return nn.Dense(self.num_classes, name="head")(x)


def load_converted(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The flat converted arrays of a local `.npz` written by torchvision_import; a torch-named
  file is refused with the command that converts it."""
  path = os.path.expanduser(str(path))
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config.pretrained={path}: no such file (nothing is downloaded; "
                            "convert a local torchvision state dict with python -m "
                            "dpjax.models.torchvision_import --state_dict=resnet18.pth "
                            "--out=resnet18.npz)")
  if not path.endswith(".npz"):
    raise ValueError(f"--config.pretrained={path}: expected the converted .npz; convert it with "
                     f"python -m dpjax.models.torchvision_import --state_dict={path} "
                     "--out=resnet18.npz")
  with np.load(path, allow_pickle=False) as arrays:
    flat = {key: arrays[key] for key in arrays.files}
  if torchvision_import.is_torch_layout(flat):
    raise ValueError(f"--config.pretrained={path} holds torch key names (conv1.weight, ...): "
                     f"convert it first with python -m dpjax.models.torchvision_import "
                     f"--state_dict={path} --out=resnet18_flax.npz")
  return flat


def body_params(flat: dict[str, np.ndarray]):
  """The parameter tree of `PretrainedResNet18` from flat converted arrays."""
  return flax.traverse_util.unflatten_dict(
      {key: jnp.asarray(value) for key, value in flat.items()}, sep="/")


def architecture(flat: dict[str, np.ndarray]) -> dict:
  """`num_filters` and `stage_sizes` of the network a converted file holds (torchvision's
  resnet18: 64 and (2, 2, 2, 2)); narrower or shallower files (the tests' small ones, or a
  network pretrained on public data with dpjax) build the matching model."""
  blocks: dict[int, set[str]] = {}
  for key in flat:
    first = key.split("/")[0]
    if first.startswith("stage") and "_block" in first:
      stage = int(first[len("stage"):first.index("_block")])
      blocks.setdefault(stage, set()).add(first)
  return {"num_filters": int(flat["stem_conv/kernel"].shape[-1]),
          "stage_sizes": tuple(len(blocks[stage]) for stage in sorted(blocks))}


@functools.lru_cache(maxsize=4)
def _features_fn(num_classes: int, num_filters: int, stage_sizes: tuple[int, ...]):
  model = PretrainedResNet18(num_classes=num_classes, num_filters=num_filters,
                             stage_sizes=stage_sizes)
  return jax.jit(lambda params, x: model.apply({"params": params}, x, method=model.features))


def resnet18_features(flat: dict[str, np.ndarray], images: np.ndarray, *,
                      batch_size: int = 128) -> np.ndarray:
  """(N, H, W, 3) inputs already pre-processed (torchvision_import.imagenet_inputs) ->
  (N, 1, 1, 512) float32 pooled features of the frozen body, computed per image (512 for
  torchvision's ResNet-18; the file's last stage width in general)."""
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"resnet18_features needs NHWC RGB inputs, got shape {images.shape}")
  params = body_params(flat)
  shape = architecture(flat)
  apply = _features_fn(int(flat["head/bias"].shape[0]), shape["num_filters"],
                       shape["stage_sizes"])
  width = shape["num_filters"] * 2 ** (len(shape["stage_sizes"]) - 1)  # 512 for ResNet-18
  parts = [np.asarray(apply(params, images[start:start + batch_size]))
           for start in range(0, len(images), batch_size)]
  out = np.concatenate(parts) if parts else np.zeros((0, width), np.float32)
  return out.reshape(len(images), 1, 1, width).astype(np.float32)
