"""The audit's full preset: more canaries and steps, 32 shadow models on 600 examples.

  python -m experiments.audit --config=experiments/audit/configs/full.py --workdir=runs/audit_full

The quick preset with larger sizes. Not run yet (time). `:tiny` shrinks every size to the tiny
preset's (same code path).
"""

import ml_collections

from experiments.audit.configs import quick


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg and arg != "tiny":
    raise ValueError(f"experiments/audit/configs/full.py:{arg}: unknown argument; valid: tiny.")
  config = quick.get_config()
  config.update(dict(num_canaries=2000, canary_steps=500, num_models=32, mia_examples=600,
                     mia_steps=500))
  if arg == "tiny":
    config.update(quick.TINY)
  return config
