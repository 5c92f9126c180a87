"""CIFAR CNN at batch 256 (10 steps a round), two XLA devices. experiments/benchmark/README.md, third row.

  python -m experiments.benchmark --config=experiments/benchmark/configs/cnn256.py --workdir=runs/bench_cnn256

Arguments as in cnn.py (e.g. `cnn256.py:ghost,jax`).
"""

from experiments.benchmark.configs import cnn


def get_config(arg: str | None = None):
  return cnn.base(arg, batch_size=256, steps=10)
