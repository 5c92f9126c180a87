"""onek1k: real genotypes and real expression of one gene (OneK1K chr22, 94 donors, CD14 monocytes).

  python -m experiments.eqtl --config=experiments/eqtl/configs/onek1k.py:ENSG00000100031 \
      --workdir=runs/eqtl_onek1k

The argument is the gene (`--config.gene_id=...` also sets it). The OneK1K genotypes have no
.bim, so the 100 SNPs are chosen by index (`--config.snp_start`, `--config.p`), not by cis
window. The privacy settings are quick.py's (noise multiplier 0.5, 700 full-batch steps: epsilon
about 1675, no real guarantee): add e.g. `--config.target_epsilon=8 --config.delta=1e-5`.
Needs the expression file (genotypes/onek1k_chr22_n94/*.tmm.bed.gz, or
`--config.expression_path`). No result of it is reported.
"""

from experiments.eqtl import experiment


def get_config(arg: str | None = None):
  config = experiment.default_config()
  config.name = "onek1k"
  config.source = "plink_expression"
  config.p = 100  # one row: all donors of the file, 100 SNPs from snp_start
  if arg:
    config.gene_id = arg
  return config
