"""cifar10_vgg16: the CIFAR-10 VGG-16 study. DP-SGD only, noise 1.1, clip 1, SGD lr 0.5 decaying
by 0.9 every 5000 steps, Poisson batch 250, 20 epochs (4,000 steps: a GPU job; ~45 s a step on
2 CPU cores). The study's epsilon 0.35: `--config.target_epsilon=0.35` calibrates the noise for
the epochs run; `--config.max_epsilon=0.35` keeps noise 1.1 and stops at the budget.

  python -m experiments.classify --config=experiments/classify/configs/cifar10_vgg16.py \
      --workdir=runs/cifar_vgg --config.target_epsilon=0.35

`:tiny`: 2 steps of batch 16 on at most 10 images per class.
"""

from __future__ import annotations

import ml_collections

from experiments.classify import sweep


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = sweep.default_config()
  config.datasets = ("cifar10_folder",)
  config.include_original = False
  config.noise_multipliers = (1.1,)
  config.grid_scales = (0.1, 0.5, 1.0)
  config.model = "vgg16"
  config.epochs = 20.0
  config.batch_size = 250
  config.learning_rate = 0.5
  config.decay_steps = 5000
  config.decay_rate = 0.9
  config.optimizer = "sgd"
  config.clip_norm = 1.0
  config.delta = 1e-5
  return sweep.shrink(config, arg, steps=2, batch_size=16, max_per_class=10)
