"""Private hyperparameter selection, counted: Papernot & Steinke (ICLR 2022), "Hyperparameter
tuning with Renyi differential privacy".

Random search with a random number of trials: draw K from a truncated negative binomial
distribution D_{eta,gamma} (eta = `shape`: 0 logarithmic, 1 geometric; gamma set by the mean),
run K trials (each a DP mechanism Q: a DP-SGD training run plus a DP score of it on the
validation split), release only the best trial. Theorem 2 of the paper: if Q is (lambda,
eps)-RDP and (lambda_hat, eps_hat)-RDP, the selection is (lambda, eps')-RDP with

  eps' = eps + (1 + eta) (1 - 1/lambda_hat) eps_hat + (1 + eta) log(1/gamma) / lambda_hat
         + log(E[K]) / (lambda - 1).

The bound is dp_accounting's (`RepeatAndSelectDpEvent`, RDP accountant, minimised over
lambda_hat); this module builds the events, draws K from secret randomness, and states the cost.
`tests/test_tuning.py` checks the bound against the exact Renyi divergence of a small
repeat-and-select mechanism computed directly, and the distribution of K against its pmf.

Why a random K: with a fixed number of trials the best-of-K release costs about K times one
trial (composition); a random K with a heavy enough tail costs a small additive amount.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant

from dpjax import accounting

RDP_ORDERS = tuple(np.concatenate([np.linspace(1.5, 10.9, 95), np.arange(11, 64),
                                   [64, 80, 96, 128, 192, 256, 512, 1024]]).tolist())


def gamma_for_mean(mean: float, shape: float) -> float:
  """The halting probability gamma of D_{shape,gamma} whose mean number of trials is `mean`."""
  _check_distribution(mean, shape)
  return rdp_privacy_accountant._gamma_truncated_negative_binomial(shape, mean)  # pylint: disable=protected-access


def _check_distribution(mean: float, shape: float) -> None:
  if not (math.isfinite(shape) and shape >= 0):
    raise ValueError(f"tune shape={shape!r} must be finite and >= 0 (0 logarithmic, 1 geometric).")
  if not (math.isfinite(mean) and mean >= 1):
    raise ValueError(f"tune mean_trials={mean!r} must be finite and >= 1.")


def trials_pmf(k: np.ndarray, mean: float, shape: float) -> np.ndarray:
  """P[K = k] of the truncated negative binomial D_{shape,gamma} (Definition 1), k >= 1.

  eta = shape > 0: (1-gamma)^k / (gamma^-eta - 1) * prod_{l<k} (l+eta)/(l+1);
  eta = 0 (logarithmic): (1-gamma)^k / (k log(1/gamma)).
  """
  gamma = gamma_for_mean(mean, shape)
  k = np.asarray(k, np.float64)
  if gamma >= 1:
    return (k == 1).astype(np.float64)
  log_q = math.log1p(-gamma)
  if shape == 0:
    return np.exp(k * log_q - np.log(k) - math.log(-math.log(gamma)))
  from scipy import special  # pylint: disable=import-outside-toplevel
  # prod_{l<k} (l+eta)/(l+1) = Gamma(k+eta) / (Gamma(eta) Gamma(k+1))
  log_prod = special.gammaln(k + shape) - special.gammaln(shape) - special.gammaln(k + 1)
  return np.exp(k * log_q + log_prod - math.log(math.expm1(-shape * math.log(gamma))))


def draw_num_trials(rng: np.random.Generator, mean: float, shape: float) -> int:
  """K ~ D_{shape,gamma} by inversion, one uniform from `rng` (secret randomness: the number
  of trials is part of the mechanism). No cap: truncating K would void the theorem."""
  if mean == 1:
    return 1
  u = rng.random()
  k, cumulative = 0, 0.0
  while True:
    k += 1
    cumulative += float(trials_pmf(np.array([k]), mean, shape)[0])
    if u < cumulative or cumulative >= 1.0 - 1e-15:
      return k


def score_event(noise_std: float, sensitivity: float = 1.0) -> dp_event.DpEvent:
  """The DP score of one trial: a vector of counts on the validation split with Gaussian noise
  of std `noise_std` per entry, L2 sensitivity `sensitivity` (one record moves each of its
  entries by at most 1)."""
  if not noise_std > 0:
    raise ValueError(f"validation score noise std must be > 0, got {noise_std}.")
  return dp_event.GaussianDpEvent(noise_std / sensitivity)


def trial_event(training_phases: Sequence[accounting.PrivacyPhase],
                score: dp_event.DpEvent) -> dp_event.DpEvent:
  """One trial: DP-SGD on the training split, then its DP score on the validation split.

  The two touch disjoint records, so the max of the two would do; the sum (composition) is
  used, which is never smaller and needs no argument about how the split was drawn.
  """
  return dp_event.ComposedDpEvent([accounting.training_event(training_phases), score])


@dataclasses.dataclass(frozen=True)
class SelectionCost:
  """What a private selection costs: the guarantee of releasing the best of K trials."""
  epsilon: float
  delta: float
  mean_trials: float
  shape: float
  gamma: float
  one_trial_epsilon: float  # one trial on its own, for comparison
  extra: dp_event.DpEvent | None = None  # also released once (e.g. a noisy class histogram)

  def to_dict(self) -> dict:
    return {"epsilon": self.epsilon, "delta": self.delta, "mean_trials": self.mean_trials,
            "shape": self.shape, "gamma": self.gamma,
            "one_trial_epsilon": self.one_trial_epsilon,
            "theorem": ("one trial, no selection: RDP composition of the trial and the extra "
                        "events" if self.mean_trials == 1 else
                        "Papernot & Steinke 2022, Theorem 2 (truncated negative binomial number "
                        "of trials, RDP), via dp_accounting RepeatAndSelectDpEvent")}


def selection_epsilon(trial: dp_event.DpEvent, mean: float, shape: float, delta: float,
                      extra: Sequence[dp_event.DpEvent] = ()) -> float:
  """(epsilon, delta) of releasing the best of K ~ D_{shape,mean} trials, composed with `extra`
  events released once. RDP accountant, add-or-remove-one adjacency (Poisson sampling).
  mean == 1 is one trial, no selection: its own cost (K = 1 always)."""
  _check_distribution(mean, shape)
  accountant = rdp_privacy_accountant.RdpAccountant(orders=list(RDP_ORDERS))
  accountant.compose(trial if mean == 1 else dp_event.RepeatAndSelectDpEvent(trial, mean, shape))
  for event in extra:
    accountant.compose(event)
  return float(accountant.get_epsilon(delta))


def event_epsilon(event: dp_event.DpEvent, delta: float) -> float:
  accountant = rdp_privacy_accountant.RdpAccountant(orders=list(RDP_ORDERS))
  accountant.compose(event)
  return float(accountant.get_epsilon(delta))


def selection_cost(trial: dp_event.DpEvent, mean: float, shape: float, delta: float,
                   extra: Sequence[dp_event.DpEvent] = ()) -> SelectionCost:
  extra_event = dp_event.ComposedDpEvent(list(extra)) if extra else None
  return SelectionCost(
      epsilon=selection_epsilon(trial, mean, shape, delta, extra), delta=delta,
      mean_trials=mean, shape=shape, gamma=1.0 if mean == 1 else gamma_for_mean(mean, shape),
      one_trial_epsilon=event_epsilon(trial, delta), extra=extra_event)


def calibrate_training_noise(target_epsilon: float, delta: float, phase: accounting.PrivacyPhase,
                             score: dp_event.DpEvent, mean: float, shape: float,
                             extra: Sequence[dp_event.DpEvent] = (), *,
                             low: float = 0.3, high: float = 200.0, tolerance: float = 1e-3) -> float:
  """The smallest DP-SGD noise multiplier (to `tolerance`, rounded up) at which the whole
  selection (best of K trials of `phase` + `score`, and `extra`) stays within `target_epsilon`.

  Raises ValueError naming the fix when even `high` is not enough (the score or the extra
  events alone spend the budget).
  """
  def eps(sigma: float) -> float:
    trial = trial_event([dataclasses.replace(phase, noise_multiplier=sigma)], score)
    return selection_epsilon(trial, mean, shape, delta, extra)

  if eps(high) > target_epsilon:
    raise ValueError(
        f"target_epsilon={target_epsilon} is out of reach for the selection even with DP-SGD "
        f"noise {high}: the validation score noise (score_noise) or the class histogram spend "
        "it; raise their noise, lower tune.mean_trials, or raise target_epsilon.")
  while eps(low) <= target_epsilon and low > 1e-3:
    low /= 2
  while high - low > tolerance * low:
    mid = math.sqrt(low * high)
    if eps(mid) <= target_epsilon:
      high = mid
    else:
      low = mid
  return high
