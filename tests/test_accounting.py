"""Accounting checked against dp_accounting called directly."""

import math

import dp_accounting
import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from dpjax import accounting

NR = dp_accounting.NeighboringRelation


def direct_epsilon(event, delta, accountant="rdp", relation=NR.ADD_OR_REMOVE_ONE):
  acct = (rdp_privacy_accountant.RdpAccountant(neighboring_relation=relation) if accountant == "rdp"
          else pld_privacy_accountant.PLDAccountant(neighboring_relation=relation))
  return acct.compose(event).get_epsilon(delta)


def test_mnist_style_settings_give_dp_accountings_rdp_epsilon():
  steps = math.ceil(60 * 60000 / 256)
  phase = accounting.PrivacyPhase(1.1, 60000, 256, steps=steps)
  eps = accounting.compute_epsilon([phase], 1e-5, "rdp")
  expected = direct_epsilon(dp_event.SelfComposedDpEvent(
      dp_event.PoissonSampledDpEvent(256 / 60000, dp_event.GaussianDpEvent(1.1)), steps), 1e-5)
  assert eps == pytest.approx(expected, rel=1e-12)
  assert eps == pytest.approx(2.60, abs=0.01)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
@pytest.mark.parametrize("sigma,q,steps", [(0.8, 0.01, 500), (2.0, 0.1, 100), (1.0, 1.0, 20)])
def test_gaussian_epsilon_equals_direct_call(accountant, sigma, q, steps):
  n = 1000
  sampling = "full" if q == 1.0 else "poisson"
  phase = accounting.PrivacyPhase(sigma, n, int(q * n), sampling=sampling, steps=steps)
  base = dp_event.GaussianDpEvent(sigma)
  event = base if q == 1.0 else dp_event.PoissonSampledDpEvent(q, base)
  expected = direct_epsilon(dp_event.SelfComposedDpEvent(event, steps), 1e-5, accountant)
  assert accounting.compute_epsilon([phase], 1e-5, accountant) == pytest.approx(expected, rel=1e-9)


def test_fixed_size_sampling_is_replace_one_with_doubled_sensitivity():
  phase = accounting.PrivacyPhase(2.0, 1000, 50, sampling="fixed", steps=200)
  expected = direct_epsilon(dp_event.SelfComposedDpEvent(dp_event.SampledWithoutReplacementDpEvent(
      1000, 50, dp_event.GaussianDpEvent(1.0)), 200), 1e-5, "rdp", NR.REPLACE_ONE)
  assert accounting.compute_epsilon([phase], 1e-5) == pytest.approx(expected, rel=1e-9)
  with pytest.raises(ValueError, match="rdp"):
    accounting.compute_epsilon([phase], 1e-5, "pld")


def test_laplace_pure_and_approximate_epsilon():
  full = accounting.PrivacyPhase(4.0, 100, 100, sampling="full", mechanism="laplace", steps=8)
  assert accounting.pure_epsilon([full]) == pytest.approx(8 / 4.0)
  sampled = accounting.PrivacyPhase(2.0, 1000, 100, mechanism="laplace", steps=10)
  assert accounting.pure_epsilon([sampled]) == pytest.approx(10 * math.log1p(0.1 * math.expm1(0.5)))
  expected = direct_epsilon(dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(
      0.1, dp_event.LaplaceDpEvent(2.0)), 10), 1e-5, "pld")
  eps_pld = accounting.compute_epsilon([sampled], 1e-5, "pld")
  assert eps_pld == pytest.approx(expected, rel=1e-9)
  assert eps_pld <= accounting.pure_epsilon([sampled]) + 1e-9
  with pytest.raises(ValueError, match="pld"):
    accounting.compute_epsilon([sampled], 1e-5, "rdp")
  gaussian = accounting.PrivacyPhase(1.0, 100, 10, steps=1)
  assert accounting.pure_epsilon([gaussian]) == math.inf


def test_zero_steps_and_zero_noise():
  assert accounting.compute_epsilon([accounting.PrivacyPhase(1.0, 100, 10)], 1e-5) == 0.0
  assert accounting.compute_epsilon([accounting.PrivacyPhase(0.0, 100, 10, steps=3)], 1e-5) == math.inf


@pytest.mark.parametrize("accountant,target", [("rdp", 1.0), ("rdp", 8.0), ("pld", 2.0)])
def test_calibration_round_trips_within_one_percent(accountant, target):
  phase = accounting.PrivacyPhase(1.0, 10000, 100, steps=1000)
  sigma = accounting.calibrate_noise_multiplier(target, 1e-5, phase, accountant)
  eps = accounting.compute_epsilon([phase.__class__(sigma, 10000, 100, steps=1000)], 1e-5, accountant)
  assert target * 0.99 <= eps <= target
  # A slightly smaller sigma would exceed the target: the result is not needlessly large.
  eps_less = accounting.compute_epsilon([phase.__class__(sigma * 0.97, 10000, 100, steps=1000)],
                                        1e-5, accountant)
  assert eps_less > target * 0.99


def test_calibration_rejects_bad_targets():
  phase = accounting.PrivacyPhase(1.0, 1000, 10, steps=10)
  with pytest.raises(ValueError, match="target_epsilon"):
    accounting.calibrate_noise_multiplier(0.0, 1e-5, phase)
  with pytest.raises(ValueError, match="delta"):
    accounting.calibrate_noise_multiplier(1.0, 1.5, phase)


def test_ledger_composes_phases_and_round_trips():
  ledger = accounting.PrivacyLedger()
  p1 = accounting.PrivacyPhase(1.0, 1000, 10)
  ledger.begin(p1)
  ledger.record(300)
  p2 = accounting.PrivacyPhase(2.0, 1000, 20)
  with pytest.raises(ValueError, match="allow_privacy_change"):
    ledger.begin(p2)
  ledger.begin(p2, allow_change=True)
  ledger.record(100)
  ledger.begin(p2)  # same parameters: continues the phase
  ledger.record(50)
  assert ledger.steps == 450 and len(ledger.phases) == 2
  restored = accounting.PrivacyLedger.from_dict(ledger.to_dict())
  assert restored == ledger
  expected = direct_epsilon(dp_event.ComposedDpEvent([
      dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(0.01, dp_event.GaussianDpEvent(1.0)), 300),
      dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(0.02, dp_event.GaussianDpEvent(2.0)), 150),
  ]), 1e-6)
  assert restored.epsilon(1e-6) == pytest.approx(expected, rel=1e-9)
  assert ledger.epsilon(1e-6, extra_steps=10) > ledger.epsilon(1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(noise_multiplier=1.0, dataset_size=10, batch_size=20), "batch_size"),
    (dict(noise_multiplier=-1.0, dataset_size=10, batch_size=2), "noise_multiplier"),
    (dict(noise_multiplier=1.0, dataset_size=0, batch_size=1), "dataset_size"),
    (dict(noise_multiplier=1.0, dataset_size=10, batch_size=2, sampling="shuffle"), "sampling"),
])
def test_bad_phases_are_refused(kwargs, match):
  with pytest.raises(ValueError, match=match):
    accounting.PrivacyPhase(**kwargs)
