"""The interpret study's settings: the frozen `Config` a config file's ConfigDict becomes.

`from_config_dict` resolves the ConfigDict's nested and tuple fields (`model_kwargs` is a nested
dict there, a tuple of pairs here; an epsilon of infinity may be written 'inf'), refuses unknown
fields with the list of valid ones, and `Config.__post_init__` names a bad value as
`--config.<field>=<value>` with the fix.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from dpjax import devices

INF = math.inf
FLOAT_TUPLES = ("epsilons", "clip_norms", "ldp_epsilons", "robust_epsilons", "certify_radii")
INT_TUPLES = ("cost_samples",)


@dataclasses.dataclass(frozen=True)
class Config:
  """Every field of the study; the defaults are the quick preset (configs/quick.py)."""
  dataset: str = "pneumoniamnist"  # falls back to "digits" when the file is absent
  model: str = "cnn"
  model_kwargs: tuple = (("channels", (16, 32, 32, 64)),)
  cam_layer: str | None = None  # None: the last 4-D map
  max_per_class: int | None = None
  epochs: float = 5.0
  batch_size: int = 64
  # Momentum SGD, not Adam: Adam is invariant to the gradient's scale, and when every example is
  # clipped the privatised gradient is just S times a fixed vector, so a clip sweep would be flat.
  optimizer: str = "momentum"
  learning_rate: float = 0.1
  clip_norm: float = 1.0
  delta: float = 1e-4
  epsilons: tuple = (0.5, 1.0, 5.0, 10.0, INF)
  laplace_accounting: str = "pure"  # "pure": delta = 0 epsilon; "pld": epsilon at delta
  clip_norms: tuple = (0.1, 1.0, 5.0)  # sweep at epsilon `clip_sweep_epsilon` (Gaussian)
  clip_sweep_epsilon: float = 1.0
  ldp_epsilons: tuple = (0.5, 1.0, 5.0)  # per-pixel epsilon of the Laplace perturbation
  num_explain: int = 64  # test images scored by the metrics
  num_grid: int = 2  # images in the PNG grids
  # certified robustness
  robust_epsilons: tuple = (1.0, INF)  # Gaussian DP-SGD models evaluated (inf: non-private)
  num_robust: int = 4
  smoothing_sigma: float = 0.25
  num_samples: int = 1024  # T
  topk_fraction: float = 0.1  # k = this share of the pixels
  attack_radius: float = 0.5
  attack_steps: int = 10
  eot_samples: int = 4
  certify_radii: tuple = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
  certify_fraction: float = 0.5
  confidence: float = 0.999
  cost_samples: tuple = (64, 256, 1024, 4096)
  data_dir: str | None = None  # None: dpjax.data.paths.default_data_dir()
  seed: int = 0  # public choices (initialisation, data subset) and the smoothing noise
  reproducible_private_randomness: bool = False  # opt-in: batches and DP noise from `seed`
  ldp_label_epsilon: float | None = None  # randomised response on LDP labels; None: in clear
  data_parallel: bool = False  # shard training batches over all local devices
  cpu_devices: str = "0"  # split the host CPU into this many XLA devices ("auto": one per core)

  def __post_init__(self):
    if self.laplace_accounting not in ("pure", "pld"):
      _bad("laplace_accounting", self.laplace_accounting, "expected 'pure' (delta = 0 epsilon) "
           "or 'pld' (epsilon at delta)")
    for name in ("smoothing_sigma", "attack_radius", "topk_fraction", "clip_norm", "epochs",
                 "learning_rate", "clip_sweep_epsilon"):
      if not getattr(self, name) > 0:
        _bad(name, getattr(self, name), "must be > 0")
    if not 0 < self.topk_fraction <= 1:
      _bad("topk_fraction", self.topk_fraction, "must be in (0, 1]")
    if not 0 < self.certify_fraction <= 1:
      _bad("certify_fraction", self.certify_fraction, "must be in (0, 1]")
    if not 0 < self.confidence < 1:
      _bad("confidence", self.confidence, "must be in (0, 1), e.g. 0.999")
    for name in ("epsilons", "ldp_epsilons", "robust_epsilons"):
      if not all(e > 0 for e in getattr(self, name)):
        _bad(name, getattr(self, name), "every epsilon must be > 0 (write 'inf' for "
             "non-private)")
    if any(math.isinf(e) for e in self.ldp_epsilons):
      _bad("ldp_epsilons", self.ldp_epsilons, "local-DP epsilons must be finite")
    if any(r < 0 for r in self.certify_radii):
      _bad("certify_radii", self.certify_radii, "radii must be >= 0")
    for name in ("num_explain", "num_grid", "num_robust", "num_samples", "batch_size",
                 "attack_steps", "eot_samples"):
      if getattr(self, name) < 1:
        _bad(name, getattr(self, name), "must be >= 1")
    if any(t < 1 for t in self.cost_samples):
      _bad("cost_samples", self.cost_samples, "every T must be >= 1")
    try:
      devices.resolve_count(self.cpu_devices)
    except ValueError:
      _bad("cpu_devices", self.cpu_devices, "expected a whole number >= 0 or 'auto'")
    if self.max_per_class is not None and self.max_per_class < 1:
      _bad("max_per_class", self.max_per_class, "must be >= 1 (or unset for every image)")


def from_config_dict(config: Any) -> Config:
  """The `Config` of a ConfigDict (or mapping), its nested and tuple fields resolved."""
  values = dict(config.to_dict() if hasattr(config, "to_dict") else config)
  valid = [f.name for f in dataclasses.fields(Config)]
  unknown = sorted(set(values) - set(valid))
  if unknown:
    raise ValueError(f"unknown config field(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
  if "model_kwargs" in values:
    kwargs = values["model_kwargs"] or {}
    if not isinstance(kwargs, Mapping):
      _bad("model_kwargs", kwargs, "expected a dict such as {'channels': (16, 32)}")
    values["model_kwargs"] = tuple(sorted((k, _tuple(v)) for k, v in kwargs.items()))
  for name in FLOAT_TUPLES:
    if name in values:
      values[name] = _numbers(name, values[name], float)
  for name in INT_TUPLES:
    if name in values:
      values[name] = _numbers(name, values[name], int)
  if "cpu_devices" in values:
    values["cpu_devices"] = str(values["cpu_devices"])
  return Config(**values)


def _tuple(value):
  return tuple(_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _numbers(name: str, value, kind) -> tuple:
  """A tuple of numbers from a tuple (or one number); 'inf' is accepted for floats."""
  items = value if isinstance(value, (list, tuple)) else (value,)
  try:
    numbers = tuple(kind(float(v)) if kind is int else kind(v) for v in items)
  except (TypeError, ValueError):
    _bad(name, value, "expected a tuple of numbers, e.g. --config.%s=\"(1.0, 'inf')\" (infinity "
         "in quotes)" % name if kind is float else "expected a tuple of whole numbers")
  if kind is int and any(n != float(v) for n, v in zip(numbers, items)):
    _bad(name, value, "expected a tuple of whole numbers")
  return numbers


def _bad(name: str, value, fix: str):
  raise ValueError(f"--config.{name}={value!r}: {fix}.")
