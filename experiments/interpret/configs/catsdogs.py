"""CIFAR-10 cats against dogs with VGG-16 (needs cifar10/cifar10-jpeg.tar.gz under data_dir).

  python -m experiments.interpret --config=experiments/interpret/configs/catsdogs.py \
      --workdir=runs/interpret_catsdogs

Not run yet (too slow for the CPU budget so far).
"""

from __future__ import annotations

import ml_collections

from experiments.interpret.configs import quick


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = quick.get_config()
  config.dataset = "catsdogs"
  config.model = "vgg16"
  config.model_kwargs = {}
  config.epochs = 10.0
  config.learning_rate = 0.05
  config.batch_size = 32
  config.num_explain = 256
  config.num_robust = 8
  config.num_samples = 512
  return quick.shrink(config, arg)
