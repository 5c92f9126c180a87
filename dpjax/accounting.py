"""Privacy accounting for DP-SGD on top of `dp_accounting`.

A training run is a sequence of *phases*; each phase holds its privacy parameters (mechanism,
noise multiplier, sampling scheme, dataset and batch size) for a number of steps. The
`PrivacyLedger` records the phases actually run and is saved with every checkpoint, so the
epsilon reported after a resume counts every step that touched the data.

Adjacency, per sampling scheme (what one "example" of privacy means):
  * "poisson": each example joins each batch independently with probability q = B/N;
    add-or-remove-one adjacency; the clipped sum has sensitivity C. This is what the RDP and
    PLD accountants' `PoissonSampledDpEvent` analyse.
  * "full": every step uses all N examples (q = 1); add-or-remove-one; sensitivity C.
  * "fixed": each step a uniformly random subset of exactly B examples (sampling without
    replacement); replace-one adjacency, for which the clipped sum's l2 sensitivity is 2C, so
    the event carries noise multiplier sigma/2. RDP accountant only.

The unit of privacy (`PrivacyPhase.unit`) is "example" (one record) or "person" (all records
of one person, `dpjax.user_level`): with per-person sampling and one clipped term per person
the same events hold with N the number of persons and B the expected persons per step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Sequence

import dp_accounting
from absl import logging
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

ACCOUNTANTS = ("rdp", "pld")
SAMPLINGS = ("poisson", "fixed", "full")
MECHANISMS = ("gaussian", "laplace")
UNITS = ("example", "person")

NeighborRel = dp_accounting.NeighboringRelation


@dataclasses.dataclass(frozen=True)
class PrivacyPhase:
  """Privacy parameters held fixed for `steps` steps."""
  noise_multiplier: float
  dataset_size: int
  batch_size: int
  sampling: str = "poisson"
  mechanism: str = "gaussian"
  steps: int = 0
  unit: str = "example"  # what dataset_size and batch_size count: records, or persons

  def __post_init__(self):
    if self.unit not in UNITS:
      raise ValueError(f"unit={self.unit!r}: expected one of {UNITS}.")
    if self.sampling not in SAMPLINGS:
      raise ValueError(f"sampling={self.sampling!r}: expected one of {SAMPLINGS}.")
    if self.mechanism not in MECHANISMS:
      raise ValueError(f"mechanism={self.mechanism!r}: expected one of {MECHANISMS}.")
    if self.dataset_size < 1:
      raise ValueError(f"dataset_size={self.dataset_size} must be >= 1.")
    if not 1 <= self.batch_size <= self.dataset_size:
      raise ValueError(f"batch_size={self.batch_size} must be between 1 and dataset_size="
                       f"{self.dataset_size} (sampling probability q = batch/dataset must be in (0, 1]).")
    if self.noise_multiplier < 0 or math.isnan(self.noise_multiplier):
      raise ValueError(f"noise_multiplier={self.noise_multiplier} must be >= 0.")
    if self.steps < 0:
      raise ValueError(f"steps={self.steps} must be >= 0.")
    if self.sampling == "fixed" and self.mechanism == "laplace":
      raise ValueError("Laplace noise with fixed-size batches is not supported: use "
                       "sampling='poisson' or 'full'.")

  @property
  def sampling_probability(self) -> float:
    if self.sampling == "full":
      return 1.0
    return self.batch_size / self.dataset_size

  @property
  def neighboring_relation(self):
    return NeighborRel.REPLACE_ONE if self.sampling == "fixed" else NeighborRel.ADD_OR_REMOVE_ONE

  def same_parameters(self, other: "PrivacyPhase") -> bool:
    return dataclasses.replace(self, steps=0) == dataclasses.replace(other, steps=0)

  def with_steps(self, steps: int) -> "PrivacyPhase":
    return dataclasses.replace(self, steps=steps)


def step_event(phase: PrivacyPhase) -> dp_event.DpEvent:
  """The DpEvent of one DP-SGD step with the phase's parameters."""
  if phase.noise_multiplier == 0:
    return dp_event.NonPrivateDpEvent()
  if phase.mechanism == "laplace":
    base = dp_event.LaplaceDpEvent(phase.noise_multiplier)
  elif phase.sampling == "fixed":
    base = dp_event.GaussianDpEvent(phase.noise_multiplier / 2)  # replace-one doubles sensitivity
  else:
    base = dp_event.GaussianDpEvent(phase.noise_multiplier)
  if phase.sampling == "full" or phase.sampling_probability == 1.0:
    return base
  if phase.sampling == "fixed":
    return dp_event.SampledWithoutReplacementDpEvent(phase.dataset_size, phase.batch_size, base)
  return dp_event.PoissonSampledDpEvent(phase.sampling_probability, base)


def training_event(phases: Iterable[PrivacyPhase]) -> dp_event.DpEvent:
  events = [dp_event.SelfComposedDpEvent(step_event(p), p.steps) for p in phases if p.steps > 0]
  return dp_event.ComposedDpEvent(events)


def _make_accountant(accountant: str, relation):
  if accountant == "rdp":
    return rdp_privacy_accountant.RdpAccountant(neighboring_relation=relation)
  if accountant == "pld":
    return pld_privacy_accountant.PLDAccountant(neighboring_relation=relation)
  raise ValueError(f"accountant={accountant!r}: expected one of {ACCOUNTANTS}.")


def _relation(phases: Sequence[PrivacyPhase]):
  units = {p.unit for p in phases if p.steps > 0}
  if len(units) > 1:
    raise ValueError(f"phases mix units of privacy {sorted(units)}: a per-example and a "
                     "per-person epsilon do not compose in one unit; start a new workdir.")
  relations = {p.neighboring_relation for p in phases if p.steps > 0}
  if len(relations) > 1:
    raise ValueError("phases mix Poisson/full sampling (add-or-remove adjacency) with fixed-size "
                     "sampling (replace-one adjacency); their epsilons do not compose in one unit.")
  return relations.pop() if relations else NeighborRel.ADD_OR_REMOVE_ONE


def check_delta(delta: float) -> None:
  if not 0 < delta < 1:
    raise ValueError(f"delta={delta} must be in (0, 1).")


def compute_epsilon(phases: Sequence[PrivacyPhase], delta: float, accountant: str = "rdp") -> float:
  """(epsilon, delta)-DP epsilon of all phases composed. 0 when no step has run."""
  check_delta(delta)
  phases = list(phases)
  if not any(p.steps for p in phases):
    return 0.0
  if any(p.noise_multiplier == 0 and p.steps for p in phases):
    return math.inf
  if accountant == "pld" and any(p.sampling == "fixed" and p.steps for p in phases):
    raise ValueError("the PLD accountant does not analyse fixed-size sampling without "
                     "replacement; use accountant='rdp'.")
  if accountant == "rdp" and any(p.mechanism == "laplace" and p.sampling_probability < 1
                                 and p.steps for p in phases):
    raise ValueError("the RDP accountant cannot analyse Poisson-sampled Laplace noise; "
                     "use accountant='pld' (or pure_epsilon for the delta=0 bound).")
  acct = _make_accountant(accountant, _relation(phases))
  acct.compose(training_event(phases))
  return float(acct.get_epsilon(delta))


def pure_epsilon(phases: Sequence[PrivacyPhase]) -> float:
  """Pure (delta = 0) epsilon by basic composition; finite only for Laplace phases.

  One Laplace step with l1 sensitivity C and scale sigma*C is (1/sigma)-DP; Poisson sampling
  with probability q amplifies it to log(1 + q (e^(1/sigma) - 1)) (add/remove adjacency).
  """
  total = 0.0
  for p in phases:
    if not p.steps:
      continue
    if p.mechanism != "laplace" or p.noise_multiplier == 0:
      return math.inf
    eps_step = 1.0 / p.noise_multiplier
    q = p.sampling_probability
    if q < 1:
      eps_step = math.log1p(q * math.expm1(eps_step))
    total += p.steps * eps_step
  return total


def calibrate_noise_multiplier(target_epsilon: float, delta: float, phase: PrivacyPhase,
                               accountant: str = "rdp", rtol: float = 0.01) -> float:
  """The smallest noise multiplier (to `rtol`) whose epsilon after `phase.steps` is <= target.

  The returned sigma gives target*(1 - rtol) <= epsilon <= target.
  """
  if not target_epsilon > 0:
    raise ValueError(f"target_epsilon={target_epsilon} must be > 0.")
  if phase.steps < 1:
    raise ValueError("calibration needs steps >= 1.")
  check_delta(delta)

  def eps(sigma):
    return compute_epsilon([dataclasses.replace(phase, noise_multiplier=sigma)], delta, accountant)

  lo, hi = 0.0, 1.0  # invariant: eps(lo) > target >= eps(hi)
  eps_hi = eps(hi)
  while eps_hi > target_epsilon:
    lo, hi = hi, hi * 2
    if hi > 1e6:
      raise ValueError(
          f"target_epsilon={target_epsilon} is unreachable at delta={delta} with the {accountant} "
          "accountant for these settings (even a noise multiplier of 1e6 exceeds it); raise the "
          "target or delta, or try accountant='pld'.")
    eps_hi = eps(hi)
  while eps_hi < target_epsilon * (1 - rtol) and hi - lo > 1e-9 * hi:
    mid = (lo + hi) / 2
    eps_mid = eps(mid)
    if eps_mid > target_epsilon:
      lo = mid
    else:
      hi, eps_hi = mid, eps_mid
  if eps_hi < target_epsilon * (1 - rtol):
    logging.warning("calibration: epsilon %.6g is below the target %.6g by more than %g%% (the "
                    "accountant's epsilon jumps here); the noise is conservative.",
                    eps_hi, target_epsilon, 100 * rtol)
  return hi


@dataclasses.dataclass
class PrivacyLedger:
  """What a run has spent: its phases with the number of steps each actually ran."""
  phases: list[PrivacyPhase] = dataclasses.field(default_factory=list)

  @property
  def steps(self) -> int:
    return sum(p.steps for p in self.phases)

  @property
  def current(self) -> PrivacyPhase | None:
    return self.phases[-1] if self.phases else None

  def begin(self, phase: PrivacyPhase, allow_change: bool = False) -> None:
    """Continues the current phase if `phase` has its parameters, else opens a new one.

    A change of privacy parameters in a resumed run is refused unless `allow_change`: a silent
    change usually means a flag was mistyped, and the ledger must show both phases.
    """
    phase = phase.with_steps(0)
    if self.current is not None and self.current.same_parameters(phase):
      return
    if self.current is not None and not allow_change:
      raise ValueError(
          "the privacy parameters differ from the checkpoint's ledger:\n"
          f"  ledger:    {_describe(self.current)}\n  requested: {_describe(phase)}\n"
          "set allow_privacy_change (--config.allow_privacy_change=true) to compose both phases, or restore the old settings.")
    self.phases.append(phase)

  def record(self, steps: int = 1) -> None:
    if self.current is None:
      raise ValueError("record() before begin(): the ledger has no phase.")
    self.phases[-1] = self.current.with_steps(self.current.steps + steps)

  def epsilon(self, delta: float, accountant: str = "rdp", extra_steps: int = 0) -> float:
    phases = list(self.phases)
    if extra_steps:
      phases[-1] = phases[-1].with_steps(phases[-1].steps + extra_steps)
    return compute_epsilon(phases, delta, accountant)

  def to_dict(self) -> dict:
    return {"phases": [dataclasses.asdict(p) for p in self.phases]}

  @classmethod
  def from_dict(cls, d: dict) -> "PrivacyLedger":
    return cls([PrivacyPhase(**p) for p in d["phases"]])


def _describe(p: PrivacyPhase) -> str:
  return (f"mechanism={p.mechanism} noise_multiplier={p.noise_multiplier} sampling={p.sampling} "
          f"dataset_size={p.dataset_size} batch_size={p.batch_size} unit={p.unit}")
