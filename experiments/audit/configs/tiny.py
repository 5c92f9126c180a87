"""The audit's tiny preset: a smoke test of every setting in well under a minute.

  python -m experiments.audit --config=experiments/audit/configs/tiny.py --workdir=runs/tiny

The numbers say little (4 shadow models, 30 canary steps); the tests use this config. It is
`quick.py:tiny`.
"""

import ml_collections

from experiments.audit.configs import quick


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f"experiments/audit/configs/tiny.py:{arg}: takes no argument.")
  return quick.get_config("tiny")
