r"""DP image classifiers: DP-SGD, local DP and non-private training compared on one table.

  python -m experiments.classify --config=experiments/classify/configs/quick.py --workdir=runs/quick
  python -m experiments.classify --config=experiments/classify/configs/medical_cnn.py:tiny \
      --workdir=runs/medical_tiny --config.seed=1

Every run of the sweep resumes from its folder; see experiments/classify/README.md.
"""

from experiments.classify import experiment
from experiments.common import cli


def main():
  cli.run("classify", experiment.train_and_evaluate,
          default_config=cli.config_path("classify", "quick"), summarize=experiment.summarize)


if __name__ == "__main__":
  main()
