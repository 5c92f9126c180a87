"""torchvision's ResNet-18 state dict -> the Flax ResNet-18's `.npz` (nothing is downloaded).

  python -m dpjax.models.torchvision_import --state_dict=resnet18.pth --out=resnet18.npz

The input is a local file: a `.pth`/`.pt` saved by `torch.save(model.state_dict(), ...)` (read
with `torch.load(weights_only=True)`, which needs torch), or an `.npz` holding the same torch key
names (`conv1.weight`, `bn1.running_mean`, `layer1.0.conv1.weight`, ..., `fc.bias`), which users
without torch can write from any framework. The output is the flat `.npz` that
`ClassifierConfig.init_weights` / `dpjax.models.weights.load_params` reads, for
`ResNet18(stem="imagenet", norm="frozen_batchnorm")` (registry name "resnet18_finetune"; the head
is re-initialised for a new number of classes with `keep_init=("head",)`).

Mapping: conv weights (out, in, kh, kw) -> kernels (kh, kw, in, out); `fc.weight` (out, in) ->
`head/kernel` (in, out); each BatchNorm (weight gamma, bias beta, running_mean, running_var)
is folded into `FrozenBatchNorm`'s scale = gamma / sqrt(var + eps), bias = beta - mean * scale
(eps 1e-5, torch's default), in float64 before the cast to float32. `num_batches_tracked` is
ignored (it only matters to BatchNorm's momentum).

Inputs: the weights expect RGB images normalised with ImageNet's mean and std
(`imagenet_inputs`: grey -> 3 channels, resize, normalise; public constants, no statistic of
the private data).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

import numpy as np

STAGE_SIZES = (2, 2, 2, 2)
WIDTHS = (64, 128, 256, 512)
BATCHNORM_EPS = 1e-5
# torchvision's ImageNet pre-processing (public constants of the pretraining data).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")
_IGNORED_SUFFIX = ".num_batches_tracked"
_FROZEN = "FrozenBatchNorm"


def _layout() -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, tuple[str, int]]]:
  """torch conv/fc key -> (flax key, torch shape); torch BatchNorm prefix -> (flax prefix, C)."""
  convs = {"conv1.weight": ("stem_conv/kernel", (64, 3, 7, 7))}
  norms = {"bn1": (f"{_FROZEN}_0", 64)}
  in_width = 64
  for stage, (blocks, width) in enumerate(zip(STAGE_SIZES, WIDTHS)):
    for block in range(blocks):
      torch_block, flax_block = f"layer{stage + 1}.{block}", f"stage{stage + 1}_block{block + 1}"
      block_in = in_width if block == 0 else width
      convs[f"{torch_block}.conv1.weight"] = (f"{flax_block}/conv1/kernel", (width, block_in, 3, 3))
      convs[f"{torch_block}.conv2.weight"] = (f"{flax_block}/conv2/kernel", (width, width, 3, 3))
      norms[f"{torch_block}.bn1"] = (f"{flax_block}/{_FROZEN}_0", width)
      norms[f"{torch_block}.bn2"] = (f"{flax_block}/{_FROZEN}_1", width)
      if block == 0 and stage > 0:  # the projection of a block that changes the shape
        convs[f"{torch_block}.downsample.0.weight"] = (f"{flax_block}/proj_conv/kernel",
                                                       (width, block_in, 1, 1))
        norms[f"{torch_block}.downsample.1"] = (f"{flax_block}/{_FROZEN}_2", width)
    in_width = width
  return convs, norms


def expected_torch_keys() -> list[str]:
  """Every key of torchvision's resnet18 state dict this converter reads (fc excluded)."""
  convs, norms = _layout()
  return sorted([*convs, *(f"{p}.{f}" for p in norms for f in _BN_FIELDS),
                 "fc.weight", "fc.bias"])


def convert_state_dict(state_dict: Mapping[str, np.ndarray], *, source: str = "state dict",
                       eps: float = BATCHNORM_EPS) -> dict[str, np.ndarray]:
  """torch-named arrays -> the flat Flax dict ("stage1_block1/conv1/kernel", ...), float32.

  Refuses (ValueError naming `source`) a missing key, an unexpected key, or a shape that is not
  ResNet-18's; the number of classes is read from `fc.weight`.
  """
  arrays = {key: np.asarray(value) for key, value in state_dict.items()
            if not key.endswith(_IGNORED_SUFFIX)}
  convs, norms = _layout()
  wanted = set(expected_torch_keys())
  missing, unexpected = sorted(wanted - set(arrays)), sorted(set(arrays) - wanted)
  problems = []
  if missing:
    problems.append(f"missing keys {_few(missing)}")
  if unexpected:
    problems.append(f"unexpected keys {_few(unexpected)}")
  if problems:
    hint = (" (a state dict saved from a wrapper has prefixed keys such as 'module.' or "
            "'model.'; save model.state_dict() of torchvision.models.resnet18 itself)"
            if unexpected and missing else "")
    raise ValueError(f"{source} is not torchvision's resnet18 state dict: "
                     + "; ".join(problems) + hint)
  fc_weight, fc_bias = arrays["fc.weight"], arrays["fc.bias"]
  num_classes = fc_weight.shape[0] if fc_weight.ndim else 0  # any number of classes
  shapes = {key: shape for key, (_, shape) in convs.items()}
  shapes.update({f"{p}.{f}": (c,) for p, (_, c) in norms.items() for f in _BN_FIELDS})
  shapes.update({"fc.weight": (num_classes, WIDTHS[-1]), "fc.bias": (num_classes,)})
  wrong = [f"{key}: {tuple(arrays[key].shape)}, expected {shapes[key]}"
           for key in sorted(shapes) if tuple(arrays[key].shape) != shapes[key]]
  if wrong:
    raise ValueError(f"{source}: shapes are not ResNet-18's: {_few(wrong)}")

  out = {flax_key: np.transpose(arrays[key], (2, 3, 1, 0)).astype(np.float32)
         for key, (flax_key, _) in convs.items()}
  for prefix, (flax_prefix, _) in norms.items():
    gamma, beta, mean, var = (arrays[f"{prefix}.{f}"].astype(np.float64) for f in _BN_FIELDS)
    scale = gamma / np.sqrt(var + eps)
    out[f"{flax_prefix}/scale"] = scale.astype(np.float32)
    out[f"{flax_prefix}/bias"] = (beta - mean * scale).astype(np.float32)
  out["head/kernel"] = fc_weight.T.astype(np.float32)
  out["head/bias"] = fc_bias.astype(np.float32)
  return out


def _few(items: list[str], limit: int = 6) -> str:
  return f"{items[:limit]}{f' and {len(items) - limit} more' if len(items) > limit else ''}"


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The torch-named arrays of a local `.pth`/`.pt` (needs torch) or `.npz` (does not)."""
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f"--state_dict={path}: no such file (nothing is downloaded: pass a "
                            "local torchvision resnet18 state dict, .pth or .npz)")
  if path.suffix == ".npz":
    with np.load(path, allow_pickle=False) as arrays:
      return {key: arrays[key] for key in arrays.files}
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise ImportError(
        f"{path}: reading a torch file needs torch (pip install torch), or convert it where "
        "torch is installed to an .npz with the same key names: np.savez('resnet18_torch.npz', "
        "**{k: v.numpy() for k, v in torch.load(path, weights_only=True).items()})") from error
  try:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as error:  # torch raises several types for a foreign or unsafe file
    raise ValueError(f"{path}: torch.load(weights_only=True) could not read it ({error}); pass "
                     "a state dict saved with torch.save(model.state_dict(), path)") from error
  if not isinstance(loaded, Mapping):
    raise ValueError(f"{path}: holds a {type(loaded).__name__}, not a state dict (save "
                     "model.state_dict(), not the model)")
  return {key: value.detach().cpu().numpy() for key, value in loaded.items()
          if hasattr(value, "detach")}


def is_torch_layout(keys) -> bool:
  """Whether the keys are torch's (a state dict still to convert) rather than converted ones."""
  return "conv1.weight" in set(keys)


def convert_file(state_dict: str | os.PathLike, out: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a local state dict, converts it, checks it against the Flax model, writes `out`."""
  params = convert_state_dict(read_state_dict(state_dict), source=str(state_dict))
  _check_against_model(params, source=str(state_dict))
  out = pathlib.Path(out)
  if out.suffix != ".npz":
    raise ValueError(f"--out={out}: must end in .npz (the format init_weights reads)")
  out.parent.mkdir(parents=True, exist_ok=True)
  np.savez(out, **params)
  return params


def _check_against_model(params: Mapping[str, np.ndarray], source: str) -> None:
  """The converted keys and shapes are exactly the Flax model's (so init_weights loads them)."""
  # pylint: disable=import-outside-toplevel  (keeps the torch-key reading free of JAX)
  import flax.traverse_util
  import jax
  from dpjax.models import resnet, weights
  model = resnet.ResNet18(num_classes=params["head/bias"].shape[0], stem="imagenet",
                          norm="frozen_batchnorm")  # = registry's "resnet18_finetune"
  dummy = jax.ShapeDtypeStruct((1, 64, 64, 3), np.float32)
  shapes = flax.traverse_util.flatten_dict(
      jax.eval_shape(model.init, jax.random.key(0), dummy)["params"], sep="/")
  try:
    weights.check_fits(dict(params), shapes, source=f"{source} (converted)")
  except ValueError as error:  # a bug in the mapping, not in the user's file
    raise AssertionError(str(error)) from error


def imagenet_inputs(images: np.ndarray, size: int | None) -> np.ndarray:
  """NHWC images in [0, 1] -> what the pretrained weights expect: 3 channels (grey repeated),
  resized to `size` (None: kept), normalised with ImageNet's public mean and std."""
  # pylint: disable=import-outside-toplevel
  from dpjax.data import images as images_lib
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"pretrained ResNet-18 inputs must be NHWC with 1 or 3 channels, got "
                     f"shape {images.shape}")
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  if size is not None and len(images):
    images = images_lib.resize_images(images, int(size))
  mean = np.asarray(IMAGENET_MEAN, np.float32)
  std = np.asarray(IMAGENET_STD, np.float32)
  return ((images - mean) / std).astype(np.float32)


def main(argv) -> None:
  del argv
  from absl import flags  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  values = flags.FLAGS
  try:
    params = convert_file(values.state_dict, values.out)
  except (ValueError, FileNotFoundError, ImportError) as error:
    sys.exit(f"torchvision_import: error: {error}")
  print(f"wrote {values.out}: {len(params)} arrays, {params['head/bias'].shape[0]} classes in "
        "the head; use it with --config.init_weights (model resnet18_finetune) or the transfer "
        "study's --config.pretrained")


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=ungrouped-imports
  flags.DEFINE_string("state_dict", None, "local torchvision resnet18 state dict (.pth or .npz)")
  flags.DEFINE_string("out", None, "the converted .npz to write")
  flags.mark_flags_as_required(["state_dict", "out"])
  app.run(main)
