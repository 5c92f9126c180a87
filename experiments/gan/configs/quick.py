"""quick: the study shrunk to minutes on a CPU (~9 minutes on 2 busy shared cores).

  python -m experiments.gan --config=experiments/gan/configs/quick.py --workdir=runs/gan_quick

1000 simulated SPRINT-like participants (800 train / 100 validation / 100 test), 20 epochs at
expected batch 32 (500 discriminator steps), Adam 2e-4, clip norm 1e-4, the noise calibrated to
epsilon 2 at delta 1e-5, generator conv width 64 and discriminator width 64 (the study: 256 /
1024), TSTR every 4 epochs on 1000 synthetic participants; plus DP-MERF at the same epsilon (its own
release: merf.py), the same GAN without privacy and the TRTR classifiers. DP-MERF alone (about
a minute): --config.private=false --config.nonprivate_baseline=false; the epsilon sweep:
--config.mode=sweep. `:tiny` is 80 participants, 2 epochs and tiny networks (what the
tests run, seconds).
"""

from experiments.gan import settings


def get_config(arg: str | None = None):
  config = settings.default_config()
  config.name = "quick"
  config.num_participants = 1000
  config.epochs = 20
  config.batch_size = 32
  config.learning_rate = 2e-4
  config.target_epsilon = 2.0
  config.eval_every = 4
  config.generator_conv_channels = 64
  config.discriminator_width = 64
  config.rf_trees = 100
  config.num_synthetic = 1000
  config.merf = True
  if arg == "tiny":
    config.name = "quick:tiny"
    config.num_participants = 80
    config.epochs = 2
    config.batch_size = 8
    config.learning_rate = 1e-3
    config.delta = 1e-3
    config.eval_every = 1
    config.generator_conv_channels = 8
    config.generator_coarse_channels = 8
    config.discriminator_width = 16
    config.rf_trees = 5
    config.top_k = 2
    config.num_synthetic = 40
    config.merf_frequencies = 20
    config.merf_generator_width = 16
    config.merf_steps = 20
    config.merf_batch_size = 16
  elif arg:
    raise ValueError(f"quick.py:{arg}: unknown argument; use quick.py or quick.py:tiny.")
  return config


def real_trial(dataset: str, arg: str | None, batch_size: int):
  """quick.py on a real trial table (all its patients, delta 1e-3, 40 epochs, TSTR every 5);
  `:tiny` keeps quick.py:tiny's networks and length."""
  if arg not in (None, "", "tiny"):
    raise ValueError(f"{dataset}.py:{arg}: unknown argument; use {dataset}.py or {dataset}.py:tiny.")
  config = get_config(arg or None)
  config.name = dataset if not arg else f"{dataset}:{arg}"
  config.dataset = dataset
  config.num_participants = None
  config.delta = 1e-3
  if not arg:
    config.batch_size = batch_size
    config.epochs = 40
    config.eval_every = 5
  return config
