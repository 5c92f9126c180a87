"""sweep: held-out R2 of DP-SGD and AdaSSP against epsilon, with a plot (sweep.png).

  python -m experiments.eqtl --config=experiments/eqtl/configs/sweep.py --workdir=runs/eqtl_sweep

Simulated N = 10000 (8000 train / 2000 test), P = 100, h2 0.9, 10 causal SNPs, full batch,
700 steps, the noise calibrated to each target epsilon in {0.5, 1, 2, 4, 8, inf}, delta 1e-5,
3 repeats (mean and sd). `:quick` runs one repeat.
"""

import math

from experiments.eqtl import experiment

EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0, math.inf)


def get_config(arg: str | None = None):
  config = experiment.default_config()
  config.name = "sweep"
  config.rows = ((10000, 100),)
  config.h2 = 0.9
  config.epsilons = EPSILONS
  config.delta = 1e-5
  config.repeats = 3
  return experiment.variant(config, arg, "sweep.py", "quick", repeats=1)
