"""quick: the small CNN on PneumoniaMNIST (scikit-learn digits when its file is absent),
non-private vs DP-SGD at epsilon 8, 5 epochs; minutes on 2 CPU cores.

  python -m experiments.classify --config=experiments/classify/configs/quick.py \
      --workdir=runs/classify_quick

`:tiny` (quick.py:tiny): 1 epoch on at most 100 images per class.
"""

from __future__ import annotations

import ml_collections

from experiments.classify import sweep


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = sweep.default_config()
  config.datasets = ("pneumoniamnist",)
  config.fallback_dataset = "digits"
  config.target_epsilons = (8.0,)
  config.grid_scales = (0.1, 0.5, 1.0)
  # original run: Adam 1e-3, batch 128; the DP-SGD arm: momentum SGD 0.1, batch 64
  config.model = "cnn"
  config.epochs = 5.0
  config.batch_size = 128
  config.learning_rate = 1e-3
  config.optimizer = "adam"
  config.clip_norm = 1.0
  config.delta = 1e-5
  sweep.dp_recipe(config)
  return sweep.shrink(config, arg, epochs=1.0, max_per_class=100)
