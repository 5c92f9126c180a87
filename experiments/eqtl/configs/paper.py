"""paper: the study's 27 (N, P) rows with its settings (about 23 minutes on 2 loaded cores).

  python -m experiments.eqtl --config=experiments/eqtl/configs/paper.py --workdir=runs/eqtl_paper

N = 100..10000, P = 10..6000 in the study's order (N = 100, P = 10 appears twice); simulated
genotypes, h2 0.99, 10 causal SNPs, full batch, 700 steps, lr 0.025, noise multiplier 0.5,
delta 1e-6, clip norm sqrt(P + 1). epsilon is about 1675 for every row: a check that DP-SGD
does not break the fit, not a privacy result. `:quick` keeps the 16 rows with P <= 100.
"""

from experiments.eqtl import experiment

ROWS = (
    (100, 10), (10000, 10), (100, 10), (1000, 10),
    (9000, 50), (8000, 50), (1000, 50), (6000, 50), (2000, 50), (7000, 50), (3000, 50),
    (5000, 50), (4000, 50),
    (2000, 100), (5000, 100), (1000, 100),
    (1000, 200), (2000, 200), (5000, 200), (10000, 200),
    (10000, 300), (10000, 400), (10000, 1000), (10000, 1500), (10000, 2000),
    (10000, 5500), (10000, 6000),
)


def get_config(arg: str | None = None):
  config = experiment.default_config()
  config.name = "paper"
  config.rows = ROWS
  config.h2 = 0.99
  return experiment.variant(config, arg, "paper.py", "quick",
                            rows=tuple(row for row in ROWS if row[1] <= 100))
