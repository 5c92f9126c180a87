"""The eQTL study's command line: a config file and a workdir.

  python -m experiments.eqtl --config=experiments/eqtl/configs/quick.py --workdir=runs/eqtl_quick
  python -m experiments.eqtl --config=experiments/eqtl/configs/sweep.py --workdir=runs/eqtl_sweep \
      --config.repeats=1

Without --config it runs configs/quick.py. The configs and what they produced: README.md here.
"""

from experiments.common import cli
from experiments.eqtl import experiment


def main():
  cli.run("eqtl", experiment.train_and_evaluate,
          default_config=cli.config_path("eqtl", "quick"), summarize=experiment.summarize)


if __name__ == "__main__":
  main()
