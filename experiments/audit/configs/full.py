"""The audit's full preset: more canaries and steps, 32 shadow models on 600 examples.

  python -m experiments.audit --config=experiments/audit/configs/full.py --workdir=runs/audit_full

Not run yet (time). `:tiny` shrinks every size to the tiny preset's (same code path).
"""

import ml_collections

TINY = dict(target_epsilons=(1.0, 8.0), num_canaries=100, canary_steps=30, canary_batch_size=64,
            num_models=4, mia_examples=80, mia_hidden=8, mia_steps=20)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.target_epsilons = (1.0, 4.0, 8.0)
  config.include_no_clip = True
  config.no_clip_claimed_epsilon = 1.0
  config.delta = 1e-5
  config.accountant = "rdp"
  config.confidence = 0.95
  config.seed = 0  # the auditor's design; keys the noise only with the option below
  config.reproducible_private_randomness = False
  config.num_canaries = 2000
  config.canary_steps = 500
  config.canary_batch_size = 256
  config.canary_learning_rate = 1.0
  config.num_models = 32
  config.mia_examples = 600
  config.mia_hidden = 32
  config.mia_steps = 500
  config.mia_sampling_rate = 0.25
  config.mia_learning_rate = 0.01
  if arg == "tiny":
    config.update(TINY)
  elif arg:
    raise ValueError(f"experiments/audit/configs/full.py:{arg}: unknown argument; valid: tiny.")
  return config
