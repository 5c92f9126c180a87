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
from experiments.gan import merf

MODES = ("train", "benchmark", "sweep")
DISCRIMINATOR_KINDS = ("conv", "mlp")
SWEEP_EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0, math.inf)


@dataclasses.dataclass(frozen=True)
class Config:
  """One study run. The defaults are the study's command line (SPRINT_gan `dp_gan.py`:
  `--noise 1 --clip_value 0.0001 --epochs 500 --lr 2e-05 --batch_size 1`), on the simulated
  SPRINT-like data at SPRINT's size.

  Attributes:
    name: the config's name (configs/<name>.py[:arg]), recorded in results.json.
    mode: "train" (the study), "benchmark" (examples/s of the private discriminator step at
      each of `benchmark_batch_sizes`, timing `benchmark_examples` random examples; writes
      benchmark.json and trains nothing) or "sweep" (the study once per epsilon of
      `sweep_epsilons`, each in its own sub-folder, and one table across them).
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
    discriminator_kind: "conv" (the study's) or "mlp" (`models.MlpDiscriminator`: two dense
      layers of `discriminator_width` on the flat grid, far fewer parameters for the DP noise).
    dropout: the discriminator's dropout (0.3) in training.
    rf_trees: trees of the random forests.
    top_k: how many best epochs per classifier Figure 2D pools.
    microbatch_size: clip this many pairs at a time (see the README's throughput section).
    merf: also train DP-MERF (`merf.py`): a private generator fit to a random-feature mean
      embedding released once, at `target_epsilon` (or `noise_multiplier`) and `delta`.
    merf_frequencies, merf_lengthscale, merf_linear_weight, merf_count_weight,
      merf_generator_width, merf_steps, merf_batch_size, merf_learning_rate: DP-MERF's feature
      map, sensitivity (sqrt(1 + merf_count_weight^2)) and generator fit (`merf.MerfConfig`);
      the length scale is a public constant in the scaled [0, 1] units. Chosen on the
      simulator (public), never on a real trial.
    sweep_epsilons: the epsilons of mode="sweep" (inf: no noise, the non-private reference).
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
  discriminator_kind: str = "conv"
  dropout: bool = True
  rf_trees: int = 100
  top_k: int = 5
  microbatch_size: int | None = None
  benchmark_batch_sizes: tuple[int, ...] = (1, 4, 8, 16, 32)
  benchmark_examples: int = 512
  merf: bool = False
  merf_frequencies: int = 500
  merf_lengthscale: float = 0.5
  merf_linear_weight: float = 0.5
  merf_count_weight: float = 0.3
  merf_generator_width: int = 128
  merf_steps: int = 2000
  merf_batch_size: int = 256
  merf_learning_rate: float = 1e-3
  sweep_epsilons: tuple[float, ...] = SWEEP_EPSILONS
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
    if not (self.private or self.nonprivate_baseline or self.merf) and self.mode == "train":
      raise ValueError("--config.private=false with --config.nonprivate_baseline=false and "
                       "--config.merf=false trains nothing; set one of them to true.")
    if self.merf:
      self.merf_config(1.0)  # refuses a bad merf_* field, naming it
    if self.mode == "sweep" and (not self.sweep_epsilons
                                 or any(not e > 0 for e in self.sweep_epsilons)):
      raise ValueError(f"--config.sweep_epsilons={self.sweep_epsilons}: give epsilons > 0 "
                       "(inf for no noise), e.g. '(0.5, 1, 2, 4, 8, inf)'.")
    if self.private and not (self.clip_norm > 0 and math.isfinite(self.clip_norm)):
      raise ValueError(f"--config.clip_norm={self.clip_norm}: a private run needs a finite "
                       "clip norm > 0.")
    if self.private and self.target_epsilon is None and not self.noise_multiplier > 0:
      raise ValueError(f"--config.noise_multiplier={self.noise_multiplier} must be > 0 for a "
                       "private run (or set --config.target_epsilon, or --config.private=false "
                       "for a non-private one).")
    if self.private and self.target_epsilon is not None and math.isinf(self.target_epsilon):
      raise ValueError("--config.target_epsilon=inf needs --config.private=false (the GAN "
                       "without noise is --config.nonprivate_baseline=true).")
    if self.target_epsilon is not None and not self.target_epsilon > 0:
      raise ValueError(f"--config.target_epsilon={self.target_epsilon} must be > 0.")
    if not self.benchmark_batch_sizes or any(b < 1 for b in self.benchmark_batch_sizes):
      raise ValueError(f"--config.benchmark_batch_sizes={self.benchmark_batch_sizes}: give "
                       "batch sizes >= 1, e.g. '(1, 8, 32)' (the first should be 1).")
    if not 0 < self.delta < 1:
      raise ValueError(f"--config.delta={self.delta} must be in (0, 1), well below 1 / the "
                       "number of training participants (e.g. 1e-5).")
    if self.discriminator_kind not in DISCRIMINATOR_KINDS:
      raise ValueError(f"--config.discriminator_kind={self.discriminator_kind!r} is unknown; use "
                       f"one of {DISCRIMINATOR_KINDS}.")
    if self.accountant not in accounting.ACCOUNTANTS:
      raise ValueError(f"--config.accountant={self.accountant!r} is unknown; use one of "
                       f"{accounting.ACCOUNTANTS}.")


  def merf_config(self, noise_multiplier: float):
    """DP-MERF's settings (`merf.MerfConfig`) at this noise multiplier."""
    return merf.MerfConfig(
        num_frequencies=self.merf_frequencies, lengthscale=self.merf_lengthscale,
        linear_weight=self.merf_linear_weight, count_weight=self.merf_count_weight,
        noise_multiplier=noise_multiplier,
        generator_width=self.merf_generator_width, steps=self.merf_steps,
        generator_batch_size=self.merf_batch_size, learning_rate=self.merf_learning_rate)


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
  if "sweep_epsilons" in values:
    epsilons = values["sweep_epsilons"]
    try:
      values["sweep_epsilons"] = tuple(float(e) for e in (
          (epsilons,) if isinstance(epsilons, (int, float, str)) else epsilons))
    except (TypeError, ValueError):
      raise ValueError(f"--config.sweep_epsilons={epsilons!r}: expected numbers, e.g. "
                       "--config.sweep_epsilons='(0.5, 1, 2, 4, 8, inf)'.") from None
  return configs.settings_from(Config, values)
