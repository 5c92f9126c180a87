"""VGG-16 without BatchNorm, batch 16 (10 steps a round), two XLA devices. BUILD_NOTES.md
section 6, fifth row.

  python -m experiments.benchmark --config=experiments/benchmark/configs/vgg16.py --workdir=runs/bench_vgg16

Arguments as in cnn.py (e.g. `vgg16.py:ghost,jax`).
"""

from experiments.benchmark import benchmark


def get_config(arg: str | None = None):
  config = benchmark.default_config()
  config.workload = "vgg16"
  config.batch_size = 16
  config.steps = 10
  config.rounds = 2
  config.compare = "opacus"
  config.cpu_devices = "2"
  config.data_parallel = True
  return benchmark.apply_arg(config, arg)
