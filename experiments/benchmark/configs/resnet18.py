"""ResNet-18 with GroupNorm, batch 32 (10 steps a round), two XLA devices.
experiments/benchmark/README.md, fourth row.

  python -m experiments.benchmark --config=experiments/benchmark/configs/resnet18.py --workdir=runs/bench_resnet18

Arguments as in cnn.py (e.g. `resnet18.py:ghost,jax`). Compilation takes about a minute per
variant on 2 cores.
"""

from experiments.benchmark.configs import cnn


def get_config(arg: str | None = None):
  return cnn.base(arg, batch_size=32, steps=10, workload="resnet18")
