"""Empirical privacy audit: canary lower bounds and membership inference vs the accountant.

  python -m experiments.audit --config=experiments/audit/configs/quick.py --workdir=runs/audit \
      [--config.target_epsilons="(1.0, 8.0)"] [--config.seed=3]

See experiments/audit/README.md for the configs and their results.
"""

from experiments.audit import experiment
from experiments.common import cli


def main():
  cli.run("audit", experiment.train_and_evaluate, default_config=cli.config_path("audit", "quick"),
          summarize=experiment.summarize)


if __name__ == "__main__":
  main()
