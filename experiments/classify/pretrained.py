"""The transfer study's pretrained ResNet-18 models (issue 16a): linear probe and fine-tuning
from a local converted torchvision file (`--config.pretrained=FILE`; nothing is downloaded).

  python -m dpjax.models.torchvision_import --state_dict=resnet18.pth --out=resnet18.npz
  python -m experiments.classify.transfer --config=experiments/classify/configs/transfer.py \
      --workdir=runs/pneu_probe --config.model=resnet18_probe --config.pretrained=resnet18.npz

Pre-processing is public: grey -> 3 channels, bilinear resize to `pretrained_size`, ImageNet's
mean and std (dpjax.models.torchvision_import.imagenet_inputs). `resnet18_probe` replaces every
split's images by the frozen body's 512 features, computed once per image (as the ScatterNet
features are); `resnet18_finetune` keeps the pre-processed images and starts every run from the
converted weights, the head re-initialised for the dataset's classes.
"""

from __future__ import annotations

import dataclasses
import time

from absl import logging

from dpjax.data import images as images_lib
from dpjax.models import pretrained as pretrained_lib
from dpjax.models import torchvision_import

PROBE, FINETUNE = "resnet18_probe", "resnet18_finetune"
MODELS = (PROBE, FINETUNE)


def check(model: str, path: str | None, size: int) -> None:
  """Refuses a pretrained model without its file, and a file given to another model."""
  if model in MODELS and not path:
    raise ValueError(f"--config.model={model} needs --config.pretrained=FILE: a local .npz "
                     "converted from torchvision's resnet18 state dict by python -m "
                     "dpjax.models.torchvision_import (nothing is downloaded).")
  if path and model not in MODELS:
    raise ValueError(f"--config.pretrained={path} is used only by --config.model in "
                     f"{', '.join(MODELS)}; got --config.model={model}.")
  if model in MODELS and not size >= 32:
    raise ValueError(f"--config.pretrained_size={size!r} must be >= 32: the ImageNet stem "
                     "and stages shrink the side 32-fold.")


def prepare(dataset: images_lib.ImageDataset, model: str, path: str | None,
            size: int) -> images_lib.ImageDataset:
  """The dataset as the pretrained model sees it (unchanged for other models)."""
  if model not in MODELS:
    return dataset
  flat = pretrained_lib.load_converted(path)
  start = time.perf_counter()

  def convert(images):
    if images is None:
      return None
    inputs = torchvision_import.imagenet_inputs(images, size)
    return pretrained_lib.resnet18_features(flat, inputs) if model == PROBE else inputs

  out = dataclasses.replace(
      dataset, name=f"{dataset.name}+{model}{size}", train_images=convert(dataset.train_images),
      test_images=convert(dataset.test_images), val_images=convert(dataset.val_images))
  logging.info("%s inputs %s in %.1f s", model, out.image_shape, time.perf_counter() - start)
  return out


def classifier_overrides(model: str, path: str | None) -> dict:
  """ClassifierConfig fields for one run: fine-tuning starts from the converted weights, in a
  network of the file's width and depth (torchvision's resnet18: the registry's defaults)."""
  if model == FINETUNE:
    shape = pretrained_lib.architecture(pretrained_lib.load_converted(path))
    return {"init_weights": path, "keep_init": ("head",), "model_kwargs": shape}
  return {}


def not_covered(model: str, path: str | None) -> tuple[str, ...]:
  """The privacy report's line for a pretrained model: its weights are assumed public."""
  if model not in MODELS:
    return ()
  return (f"the pretrained weights ({path}) and their BatchNorm statistics are assumed public: "
          "trained on public data, never on these records (if they were not, the guarantee "
          "does not cover what they hold)",)
