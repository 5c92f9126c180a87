"""The Dirac-canary audit catches privacy bugs: a correct DP-SGD run stays at or below its claimed
epsilon, runs with clipping or noise off exceed it."""

import pytest

from experiments.audit import canary


@pytest.fixture(scope="module")
def canary_audits():
  """One correct and two broken DP-SGD runs, all with a claimed epsilon of about 2."""
  base = dict(noise_multiplier=3.0, num_steps=100, num_canaries=500)
  return {bug: canary.dirac_canary_audit(canary.CanaryAuditConfig(bug=bug, **base))
          for bug in ("none", "no_clip", "no_noise")}


@pytest.mark.slow
def test_correct_dp_sgd_stays_below_the_accountants_epsilon(canary_audits):
  result = canary_audits["none"]
  assert 1.5 < result["accountant_epsilon"] < 2.5
  assert result["epsilon_lower_bound"] <= result["accountant_epsilon"]
  assert not result["exceeds_accountant"]


@pytest.mark.slow
@pytest.mark.parametrize("bug", ["no_clip", "no_noise"])
def test_broken_dp_sgd_is_caught_by_the_audit(canary_audits, bug):
  result = canary_audits[bug]
  assert result["canary_auc"] > 0.99
  assert result["epsilon_lower_bound"] > result["accountant_epsilon"] + 1.0
  assert result["exceeds_accountant"]


def test_canary_audit_config_rejects_unknown_bug():
  with pytest.raises(ValueError, match="bug='typo'"):
    canary.CanaryAuditConfig(bug="typo")
