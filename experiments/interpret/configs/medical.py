"""The medical preset: the quick one at 10 epochs, 256 explained images, 16 certified at T = 2048.

  python -m experiments.interpret --config=experiments/interpret/configs/medical.py \
      --workdir=runs/interpret_medical --config.cpu_devices=2 --config.data_parallel=True

Results (from the run at commit 2644172): experiments/interpret/results/medical/.
"""

from __future__ import annotations

import ml_collections

from experiments.interpret.configs import quick


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = quick.get_config()
  config.epochs = 10.0
  config.num_explain = 256
  config.num_robust = 16
  config.num_samples = 2048
  config.num_grid = 3
  return quick.shrink(config, arg)
