"""Command line of the interpret study (Grad-CAM of DP models, certified robust attributions).

  python -m experiments.interpret --config=experiments/interpret/configs/quick.py \
      --workdir=runs/interpret_quick [--config.field=value ...]

Configs: quick (default), medical, catsdogs, tiny; `FILE.py:tiny` shrinks any of them. A rerun on
the same workdir reloads the finished models. See experiments/interpret/README.md.
"""

from experiments.common import cli
from experiments.interpret import experiment


def main():
  cli.run("interpret", experiment.train_and_evaluate,
          default_config=cli.config_path("interpret", "quick"), summarize=experiment.summarize)


if __name__ == "__main__":
  main()
