"""The benchmark's command line: a config file (a workload and its settings) and a workdir.

  python -m experiments.benchmark --config=experiments/benchmark/configs/cnn.py --workdir=runs/bench_cnn
  python -m experiments.benchmark --config=experiments/benchmark/configs/linear.py:ghost,jax \
      --workdir=runs/bench_linear --config.json=true

Without --config it runs configs/cnn.py. `--config.cpu_devices` is applied before JAX starts
(first thing in `benchmark.train_and_evaluate`). The configs and their table: README.md here.
"""

from experiments.benchmark import benchmark
from experiments.common import cli


def main():
  cli.run("benchmark", benchmark.train_and_evaluate,
          default_config=cli.config_path("benchmark", "cnn"), summarize=benchmark.summarize)


if __name__ == "__main__":
  main()
