"""hapmap: the sweep on real genotypes, HapMap YRI (60 samples), with simulated expression.

  python -m experiments.eqtl --config=experiments/eqtl/configs/hapmap.py --workdir=runs/eqtl_hapmap

Semi-synthetic: the first 10 SNPs of the 60 samples (48 train / 12 test), expression simulated
with h2 0.9 from 3 causal SNPs; 20 repeats, each a new expression draw and split; epsilons as
in sweep.py, delta 1e-5. Needs the shared data (genotypes/hapmap_yri under $DPJAX_DATA_DIR or
../shared/data; `--config.data_dir=...`). `:quick` runs 5 repeats.
"""

from experiments.eqtl import experiment
from experiments.eqtl.configs import sweep


def get_config(arg: str | None = None):
  config = sweep.get_config()
  config.name = "hapmap"
  config.source = "plink_simulated"
  config.p = 10  # one row: all 60 samples, the first 10 SNPs
  config.num_causal = 3
  config.repeats = 20
  return experiment.variant(config, arg, "hapmap.py", "quick", repeats=5)
