"""medical_cnn: the medical table at CPU scale. The small CNN, 10 epochs, on PneumoniaMNIST and
RetinaMNIST: original vs local DP (Laplace beta 1, 2, 4 per pixel) vs DP-SGD at epsilon 1 and 8.
About 8 minutes for the 12 runs on 2 CPU cores split into two devices. quick.py's training
recipe with two datasets, the LDP arms, two epsilons and 10 epochs.

  python -m experiments.classify --config=experiments/classify/configs/medical_cnn.py \
      --workdir=runs/medical_cnn_s0 --config.seed=0 --config.cpu_devices=2 \
      --config.data_parallel=True

`:tiny`: 1 epoch on at most 50 images per class.
"""

from __future__ import annotations

import ml_collections

from experiments.classify import sweep
from experiments.classify.configs import quick


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = quick.get_config()
  config.datasets = ("pneumoniamnist", "retinamnist")
  config.fallback_dataset = None  # no digits in place of a missing file
  config.ldp_scales = (1.0, 2.0, 4.0)
  config.target_epsilons = (1.0, 8.0)
  config.grid_scales = (1.0, 2.0, 4.0)  # sweep's default (the picture uses the LDP arms' scales)
  config.epochs = 10.0
  return sweep.shrink(config, arg, epochs=1.0, max_per_class=50)
