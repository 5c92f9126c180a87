"""medical_resnet18: the medical study (Singh et al.) as published: ResNet-18, 50 epochs, SGD lr
0.01, batch 128; original vs local DP (beta 1, 2, 4) vs DP-SGD at noise 0.5, 1 and 2, on
RetinaMNIST and PneumoniaMNIST. Days on a CPU; the README's ResNet-18 rows ran parts of it
(one dataset, 5-10 epochs, the small CNN's DP recipe) with the overrides it lists.

  python -m experiments.classify --config=experiments/classify/configs/medical_resnet18.py \
      --workdir=runs/medical_resnet18

`:tiny`: 2 steps per run on at most 8 images per class.
"""

from __future__ import annotations

import ml_collections

from experiments.classify import sweep


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = sweep.default_config()
  config.datasets = ("retinamnist", "pneumoniamnist")
  config.ldp_scales = (1.0, 2.0, 4.0)
  config.noise_multipliers = (0.5, 1.0, 2.0)
  config.model = "resnet18"
  config.epochs = 50.0
  config.batch_size = 128
  config.learning_rate = 0.01
  config.optimizer = "sgd"
  config.clip_norm = 1.0
  config.delta = 1e-5
  return sweep.shrink(config, arg, steps=2, batch_size=16, max_per_class=8)
