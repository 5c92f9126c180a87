"""The GAN study's command line: a config file and a workdir.

  python -m experiments.gan --config=experiments/gan/configs/quick.py --workdir=runs/gan_quick
  python -m experiments.gan --config=experiments/gan/configs/pbcseq.py --workdir=runs/gan_pbcseq
  python -m experiments.gan --config=experiments/gan/configs/benchmark.py \
      --workdir=runs/gan_bench --config.microbatch_size=8

Without --config it runs configs/quick.py. The configs and what they produced: README.md here.
"""

from experiments.common import cli
from experiments.gan import experiment


def main():
  cli.run("gan", experiment.train_and_evaluate,
          default_config=cli.config_path("gan", "quick"), summarize=experiment.summarize)


if __name__ == "__main__":
  main()
