"""The quick preset: PneumoniaMNIST (sklearn digits when the file is absent), SmallCNN, 5 epochs.

  python -m experiments.interpret --config=experiments/interpret/configs/quick.py \
      --workdir=runs/interpret_quick

Every other preset starts from this one. The argument `:tiny` (quick.py:tiny) keeps the dataset
and shrinks every number (20 images per class, 1 epoch, epsilons 1 and inf, T = 16): the same code
path in a minute or two on a CPU.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

INF = float("inf")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.dataset = "pneumoniamnist"  # falls back to "digits" when the file is absent
  config.data_dir = config_dict.placeholder(str)  # None: dpjax.data.paths.default_data_dir()
  config.max_per_class = config_dict.placeholder(int)  # None: every image
  config.model = "cnn"
  config.model_kwargs = {"channels": (16, 32, 32, 64)}
  config.cam_layer = config_dict.placeholder(str)  # None: the last 4-D map
  # training (momentum SGD: with Adam a clip sweep would be flat, see README)
  config.epochs = 5.0
  config.batch_size = 64
  config.optimizer = "momentum"
  config.learning_rate = 0.1
  config.clip_norm = 1.0
  config.delta = 1e-4
  config.epsilons = (0.5, 1.0, 5.0, 10.0, INF)  # Gaussian and Laplace DP-SGD; inf: non-private
  config.laplace_accounting = "pure"  # "pure": delta = 0 epsilon; "pld": epsilon at delta
  config.clip_norms = (0.1, 1.0, 5.0)  # clip sweep at clip_sweep_epsilon (Gaussian)
  config.clip_sweep_epsilon = 1.0
  config.ldp_epsilons = (0.5, 1.0, 5.0)  # per-pixel epsilon of the local-DP Laplace noise
  config.ldp_label_epsilon = config_dict.placeholder(float)  # None: LDP labels in clear
  # explanations
  config.num_explain = 64  # test images scored by the metrics
  config.num_grid = 2  # images in the PNG grids
  # robustness and certificates
  config.robust_epsilons = (1.0, INF)  # Gaussian DP-SGD models evaluated (inf: non-private)
  config.num_robust = 4
  config.smoothing_sigma = 0.25
  config.num_samples = 1024  # T, noisy copies per smoothed map
  config.topk_fraction = 0.1  # k = this share of the pixels
  config.attack_radius = 0.5
  config.attack_steps = 10
  config.eot_samples = 4
  config.certify_radii = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
  config.certify_fraction = 0.5
  config.confidence = 0.999
  config.cost_samples = (64, 256, 1024, 4096)
  # randomness and devices
  config.seed = 0  # public choices (initialisation, data subset) and the smoothing noise
  config.reproducible_private_randomness = False  # opt-in: batches and DP noise from `seed`
  config.data_parallel = False  # shard training batches over all local devices
  config.cpu_devices = "0"  # split the host CPU into this many XLA devices ("auto": per core)
  return shrink(config, arg)


def shrink(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """`arg` "tiny": the same configuration with every number small; None or "": unchanged."""
  if not arg:
    return config
  if arg != "tiny":
    raise ValueError(f"unknown config argument {arg!r}; valid: tiny (or none)")
  if config.model == "cnn":
    config.model_kwargs = {"channels": (4, 8)}
  config.max_per_class = 20
  config.epochs = 1.0
  config.epsilons = (1.0, INF)
  config.clip_norms = (1.0,)
  config.ldp_epsilons = (1.0,)
  config.num_explain = 8
  config.num_grid = 1
  config.robust_epsilons = (INF,)
  config.num_robust = 1
  config.num_samples = 16
  config.attack_steps = 2
  config.eot_samples = 1
  config.cost_samples = (8,)
  config.certify_radii = (0.0, 0.01)
  return config
