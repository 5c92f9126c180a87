"""The GAN study's settings: the checked `Config` a config file (configs/*.py) turns into.

A config file's `get_config()` starts from `default_config()` (every field at its default, the
study's own command line) and changes some; `make_config` turns that ConfigDict into a frozen
`Config`, which refuses a bad value with a message naming `--config.<field>=<value>`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from ml_collections import config_dict

from dpjax import accounting
from dpjax.data import trials

from experiments.common import configs

MODES = ("train", "benchmark")


@dataclasses.dataclass(frozen=True)
class Config:
  """One study run. The defaults are the study's command line (SPRINT_gan `dp_gan.py`:
  `--noise 1 --clip_value 0.0001 --epochs 500 --lr 2e-05 --batch_size 1`), on the simulated
  SPRINT-like data at SPRINT's size.

  Attributes:
    name: the config's name (configs/<name>.py[:arg]), recorded in results.json.
    mode: "train" (the study) or "benchmark" (examples/s of the private discriminator step at
      each of `benchmark_batch_sizes`, timing `benchmark_examples` random examples; writes
      benchmark.json and trains nothing).
    dataset: one of `trials.DATASET_NAMES` (the study: "sprint"; offline: "sprint_sim").
    data_dir: the shared data folder (None: `dpjax.data.paths.default_data_dir()`).
    num_participants: keep a random subset of this many participants (None: all); for
      "sprint_sim" the simulator draws exactly this many.
    test_fraction: held-out real participants that the TSTR/TRTR scores are reported on (and
      whose median trajectories are Figure 2's real curves).
    validation_fraction: held-out real participants that choose the "best" epochs. Together
      with the test participants they are the study's 20% held out, so training is the same.
    noise_multiplier, clip_norm, epochs, learning_rate, batch_size: the study's `--noise`,
      `--clip_value`, `--epochs`, `--lr`, `--batch_size` (expected real participants per
      discriminator step, Poisson); `prefix`: its `--prefix` of the output file names.
    target_epsilon: calibrate `noise_multiplier` so that the whole run spends this epsilon at
      `delta`.
    private: train the private GAN; `nonprivate_baseline`: also train a non-private one and
      the TRTR classifiers (epsilon = inf).
    eval_every: TSTR evaluation every this many epochs (and always at the last).
    num_synthetic: synthetic participants per evaluation (None: as many as training ones).
    generator_conv_channels / discriminator_width: the study's 256 / 1024; narrower for speed.
    dropout: the discriminator's dropout (0.3) in training.
    rf_trees: trees of the random forests.
    top_k: how many best epochs per classifier Figure 2D pools.
    microbatch_size: clip this many pairs at a time (see the README's throughput section).
    reproducible_private_randomness: derive batches and noise from `seed` (then a secret, kept
      out of config.json and results.json) instead of the OS CSPRNG; to debug or rerun bit for
      bit. `seed` otherwise steers public choices only (split, simulation, initialisation, the
      latents of released synthetic data).
  """
  name: str = "paper"
  mode: str = "train"
  dataset: str = "sprint_sim"
  data_dir: str | None = None
  num_participants: int | None = None
  test_fraction: float = 0.1
  validation_fraction: float = 0.1
  noise_multiplier: float = 1.0
  clip_norm: float = 1e-4
  epochs: int = 500
  learning_rate: float = 2e-5
  batch_size: int = 1
  prefix: str = ""
  target_epsilon: float | None = None
  delta: float = 1e-5
  accountant: str = "rdp"
  private: bool = True
  nonprivate_baseline: bool = True
  seed: int = 0
  eval_every: int = 10
  num_synthetic: int | None = None
  generator_conv_channels: int = 256
  generator_coarse_channels: int = 32
  discriminator_width: int = 1024
  dropout: bool = True
  rf_trees: int = 100
  top_k: int = 5
  microbatch_size: int | None = None
  benchmark_batch_sizes: tuple[int, ...] = (1, 4, 8, 16, 32)
  benchmark_examples: int = 512
  reproducible_private_randomness: bool = False

  def __post_init__(self):
    self.validate()

  def validate(self) -> None:
    """Raises ValueError naming the field (as --config.<field>=<value>) of a bad setting."""
    if self.mode not in MODES:
      raise ValueError(f"--config.mode={self.mode!r} is unknown; use one of {MODES}.")
    if self.dataset not in trials.DATASET_NAMES:
      raise ValueError(f"--config.dataset={self.dataset!r} is unknown; use one of "
                       f"{list(trials.DATASET_NAMES)}.")
    if not (self.test_fraction > 0 and self.validation_fraction > 0
            and self.test_fraction + self.validation_fraction < 1):
      raise ValueError(f"--config.test_fraction={self.test_fraction} and "
                       f"--config.validation_fraction={self.validation_fraction} must be > 0 "
                       "with a sum below 1.")
    for field in ("epochs", "batch_size", "eval_every", "rf_trees", "top_k", "benchmark_examples",
                  "generator_conv_channels", "generator_coarse_channels",
                  "discriminator_width"):
      if getattr(self, field) < 1:
        raise ValueError(f"--config.{field}={getattr(self, field)} must be >= 1.")
    for field in ("num_participants", "num_synthetic", "microbatch_size"):
      if getattr(self, field) is not None and getattr(self, field) < 1:
        raise ValueError(f"--config.{field}={getattr(self, field)} must be >= 1 (or unset).")
    if not self.learning_rate > 0:
      raise ValueError(f"--config.learning_rate={self.learning_rate} must be > 0.")
    if not (self.private or self.nonprivate_baseline) and self.mode == "train":
      raise ValueError("--config.private=false with --config.nonprivate_baseline=false trains "
                       "nothing; set one of them to true.")
    if self.private and not (self.clip_norm > 0 and math.isfinite(self.clip_norm)):
      raise ValueError(f"--config.clip_norm={self.clip_norm}: a private run needs a finite "
                       "clip norm > 0.")
    if self.private and self.target_epsilon is None and not self.noise_multiplier > 0:
      raise ValueError(f"--config.noise_multiplier={self.noise_multiplier} must be > 0 for a "
                       "private run (or set --config.target_epsilon, or --config.private=false "
                       "for a non-private one).")
    if self.target_epsilon is not None and not self.target_epsilon > 0:
      raise ValueError(f"--config.target_epsilon={self.target_epsilon} must be > 0.")
    if not self.benchmark_batch_sizes or any(b < 1 for b in self.benchmark_batch_sizes):
      raise ValueError(f"--config.benchmark_batch_sizes={self.benchmark_batch_sizes}: give "
                       "batch sizes >= 1, e.g. '(1, 8, 32)' (the first should be 1).")
    if not 0 < self.delta < 1:
      raise ValueError(f"--config.delta={self.delta} must be in (0, 1), well below 1 / the "
                       "number of training participants (e.g. 1e-5).")
    if self.accountant not in accounting.ACCOUNTANTS:
      raise ValueError(f"--config.accountant={self.accountant!r} is unknown; use one of "
                       f"{accounting.ACCOUNTANTS}.")


def default_config() -> config_dict.ConfigDict:
  """Every field of `Config` at its default: what the config files start from.

  A field whose default is None is a typed placeholder, so that `--config.<field>=<value>`
  can still set it from the command line.
  """
  return configs.config_dict_of(Config)


def make_config(config: Mapping[str, Any] | Any) -> Config:
  """The checked `Config` of a config file's ConfigDict (or a plain mapping of its fields)."""
  if isinstance(config, Config):
    return config
  values = dict(config.to_dict() if hasattr(config, "to_dict") else config)
  if "benchmark_batch_sizes" in values:
    sizes = values["benchmark_batch_sizes"]
    try:
      values["benchmark_batch_sizes"] = tuple(int(b) for b in (
          (sizes,) if isinstance(sizes, (int, str)) else sizes))
    except (TypeError, ValueError):
      raise ValueError(f"--config.benchmark_batch_sizes={sizes!r}: expected integers, e.g. "
                       "--config.benchmark_batch_sizes='(1, 8, 32)'.") from None
  return configs.settings_from(Config, values)
