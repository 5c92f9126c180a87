"""catsdogs_vgg16: cats vs dogs (tfds, from a prepared data_dir; nothing is downloaded), VGG-16
at 64x64, Adam 1e-4, batch 32, 10 epochs, delta 1e-4: original vs DP-SGD at epsilon 0.5, 1, 5
and 10, each with the Gaussian and the Laplace mechanism. Not run here (no prepared data).

  python -m experiments.classify --config=experiments/classify/configs/catsdogs_vgg16.py \
      --workdir=runs/catsdogs --config.data_dir=/path/with/tensorflow_datasets

`:tiny`: 2 steps of batch 8 on at most 10 images per class.
"""

from __future__ import annotations

import ml_collections

from experiments.classify import sweep


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = sweep.default_config()
  config.datasets = ("tfds:cats_vs_dogs",)
  config.target_epsilons = (0.5, 1.0, 5.0, 10.0)
  config.mechanisms = ("gaussian", "laplace")
  config.model = "vgg16"
  config.epochs = 10.0
  config.batch_size = 32
  config.learning_rate = 1e-4
  config.optimizer = "adam"
  config.clip_norm = 1.0
  config.delta = 1e-4
  config.resize = 64
  return sweep.shrink(config, arg, steps=2, batch_size=8, max_per_class=10)
