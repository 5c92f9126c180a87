"""VGG-16 without BatchNorm, batch 16 (10 steps a round), two XLA devices.
experiments/benchmark/README.md, fifth row.

  python -m experiments.benchmark --config=experiments/benchmark/configs/vgg16.py --workdir=runs/bench_vgg16

Arguments as in cnn.py (e.g. `vgg16.py:ghost,jax`).
"""

from experiments.benchmark.configs import cnn


def get_config(arg: str | None = None):
  return cnn.base(arg, batch_size=16, steps=10, workload="vgg16")
