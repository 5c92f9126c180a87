"""quick: four small rows with the study's privacy settings (about half a minute on 2 cores).

  python -m experiments.eqtl --config=experiments/eqtl/configs/quick.py --workdir=runs/eqtl_quick

(N, P) = (200, 10), (1000, 50), (2000, 100), (100, 200); simulated genotypes, h2 0.9, full
batch, 700 steps, lr 0.025, noise multiplier 0.5, delta 1e-6. The last row has P > N: the
non-private OLS is under-determined and says so in its note. `:tiny` is two tiny rows with 60
steps (what the tests run).
"""

from experiments.eqtl import experiment

ROWS = ((200, 10), (1000, 50), (2000, 100), (100, 200))


def get_config(arg: str | None = None):
  config = experiment.default_config()
  config.name = "quick"
  config.rows = ROWS
  config.h2 = 0.9
  return experiment.variant(config, arg, "quick.py", "tiny", rows=((120, 5), (90, 40)), steps=60,
                            learning_rate=0.1)
