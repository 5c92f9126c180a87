"""The audit's tiny preset: a smoke test of every setting in well under a minute.

  python -m experiments.audit --config=experiments/audit/configs/tiny.py --workdir=runs/tiny

The numbers say little (4 shadow models, 30 canary steps); the tests use this config.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f"experiments/audit/configs/tiny.py:{arg}: takes no argument.")
  config = ml_collections.ConfigDict()
  config.target_epsilons = (1.0, 8.0)
  config.include_no_clip = True
  config.no_clip_claimed_epsilon = 1.0
  config.delta = 1e-5
  config.accountant = "rdp"
  config.confidence = 0.95
  config.seed = 0  # the auditor's design; keys the noise only with the option below
  config.reproducible_private_randomness = False
  config.num_canaries = 100
  config.canary_steps = 30
  config.canary_batch_size = 64
  config.canary_learning_rate = 1.0
  config.num_models = 4
  config.mia_examples = 80
  config.mia_hidden = 8
  config.mia_steps = 20
  config.mia_sampling_rate = 0.25
  config.mia_learning_rate = 0.01
  return config
