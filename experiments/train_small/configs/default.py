"""train_small's configuration: softmax regression on digits, 200 DP-SGD steps (seconds on a CPU).

  python -m experiments.train_small --config=experiments/train_small/configs/default.py \
      --workdir=runs/small [--config.num_steps=60 --config.checkpoint_every=10]

`:tiny` shrinks the run to 3 steps (same code path). A rerun on the same workdir resumes from its
checkpoint.
"""

import ml_collections
from ml_collections import config_dict


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.num_steps = 200
  config.checkpoint_every = 20
  config.noise_multiplier = 1.0
  config.clip_norm = 1.0
  config.batch_size = 64  # expected Poisson batch size
  config.learning_rate = 0.5  # SGD with momentum 0.9
  config.delta = 1e-5
  config.accountant = "rdp"  # or "pld"
  config.max_epsilon = config_dict.placeholder(float)  # stop before exceeding it
  config.allow_privacy_change = False  # resume with other privacy settings; both phases composed
  config.model = "linear"  # or "mlp" (one hidden layer of 32)
  config.data = "digits"  # or an .npz file with arrays x (N, features), y (N,)
  config.data_dir = config_dict.placeholder(str)  # the folder of a relative --config.data
  config.seed = 0  # initialisation; keys batches and noise only with the option below
  config.reproducible_private_randomness = False  # a resumed run then matches bit for bit
  config.sleep_per_step = 0.0  # tests only: slows the loop so a kill lands mid-run
  if arg == "tiny":
    config.num_steps, config.checkpoint_every = 3, 3
  elif arg:
    raise ValueError(f"experiments/train_small/configs/default.py:{arg}: unknown argument; "
                     "valid: tiny.")
  return config
