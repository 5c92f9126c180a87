"""A small, fast DP-SGD run for reliability checks: kill and resume, privacy changes, budgets.

  python -m experiments.train_small --config=experiments/train_small/configs/default.py \
      --workdir=runs/small [--config.num_steps=60 --config.checkpoint_every=10]

A rerun on the same workdir resumes from its checkpoint. See experiments/train_small/README.md.
"""

from experiments.common import cli
from experiments.train_small import experiment


def main():
  cli.run("train_small", experiment.train_and_evaluate,
          default_config=cli.config_path("train_small", "default"))


if __name__ == "__main__":
  main()
