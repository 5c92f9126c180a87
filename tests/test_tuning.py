"""dpjax.tuning: the Papernot & Steinke selection bound against a direct numeric evaluation.

The bound (dp_accounting's Theorem 2) is checked on a small mechanism whose output distribution
is known exactly: Q draws a score from a finite distribution, A runs Q K ~ D_{eta,gamma} times
and outputs the maximum. P[A <= j] = G(F(j)) with G the probability generating function of K,
so the Renyi divergence of A's outputs on two neighbours is computed exactly and must stay below
the bound; and the theorem's formula is re-derived here by hand.
"""

import dataclasses
import math

import numpy as np
import pytest
from scipy import special
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant

from dpjax import accounting
from dpjax import tuning

SHAPES = (0.0, 0.5, 1.0, 2.0)


@pytest.mark.parametrize("shape", SHAPES)
def test_trials_pmf_sums_to_one_with_the_requested_mean(shape):
  k = np.arange(1, 4000)
  pmf = tuning.trials_pmf(k, 3.0, shape)
  assert pmf.sum() == pytest.approx(1.0, abs=1e-9)
  assert (k * pmf).sum() == pytest.approx(3.0, rel=1e-6)


def test_trials_pmf_geometric_by_hand():
  # eta = 1 is the geometric distribution gamma (1 - gamma)^(k - 1), gamma = 1 / mean
  k = np.arange(1, 6)
  assert np.allclose(tuning.trials_pmf(k, 4.0, 1.0), 0.25 * 0.75 ** (k - 1))


@pytest.mark.parametrize("shape", (0.0, 1.0))
def test_draw_num_trials_follows_the_pmf(shape):
  rng = np.random.default_rng(0)
  draws = np.array([tuning.draw_num_trials(rng, 3.0, shape) for _ in range(4000)])
  assert draws.min() >= 1
  for k in (1, 2, 3):
    expected = tuning.trials_pmf(np.array([k]), 3.0, shape)[0]
    assert np.mean(draws == k) == pytest.approx(expected, abs=4 * math.sqrt(expected / 4000))
  assert draws.mean() == pytest.approx(3.0, rel=0.1)


def _renyi(p: np.ndarray, q: np.ndarray, order: float) -> float:
  """D_order(p || q) of two finite distributions, in logs (high orders overflow otherwise)."""
  terms = order * np.log(p) + (1 - order) * np.log(q)
  return float(special.logsumexp(terms) / (order - 1))


def _best_of_k(pmf_scores: np.ndarray, mean: float, shape: float) -> np.ndarray:
  """Exact output distribution of max over K ~ D trials of a score with pmf `pmf_scores`."""
  k = np.arange(1, 3000)
  weights = tuning.trials_pmf(k, mean, shape)
  cdf = np.cumsum(pmf_scores)
  pgf = np.array([np.sum(weights * c ** k) for c in cdf])
  return np.diff(np.concatenate([[0.0], pgf]))


def _theorem2_by_hand(orders, rdp, mean, shape):
  """eps' = eps(lambda) + (1+eta) min_lhat[(1 - 1/lhat) eps(lhat) + log(1/gamma)/lhat]
  + log(E K)/(lambda - 1), without dp_accounting's monotonicity step."""
  gamma = tuning.gamma_for_mean(mean, shape)
  c = (1 + shape) * min((1 - 1 / lh) * e + math.log(1 / gamma) / lh for lh, e in zip(orders, rdp))
  return np.array([e + c + math.log(mean) / (o - 1) for o, e in zip(orders, rdp)])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mean", (2.0, 5.0))
def test_bound_holds_on_an_exact_best_of_k_mechanism(shape, mean):
  # Q on two neighbouring data sets: scores 0..4 with these probabilities.
  p = np.array([0.30, 0.25, 0.20, 0.15, 0.10])
  q = np.array([0.20, 0.20, 0.20, 0.20, 0.20])
  orders = np.array(tuning.RDP_ORDERS)
  rdp_q = np.array([max(_renyi(p, q, o), _renyi(q, p, o)) for o in orders])
  bound = rdp_privacy_accountant._compute_rdp_repeat_and_select(orders, rdp_q, mean, shape)  # pylint: disable=protected-access
  by_hand = _theorem2_by_hand(orders, rdp_q, mean, shape)
  assert np.all(bound <= by_hand + 1e-9)  # dp_accounting also uses monotonicity in the order
  # the formula itself: the two agree at the largest order, where monotonicity cannot help
  assert bound[-1] == pytest.approx(by_hand[-1], rel=1e-9)
  a_p, a_q = _best_of_k(p, mean, shape), _best_of_k(q, mean, shape)
  assert a_p.sum() == pytest.approx(1.0, abs=1e-9)
  for order, limit in zip(orders[::10], bound[::10]):
    exact = max(_renyi(a_p, a_q, order), _renyi(a_q, a_p, order))
    assert exact <= limit + 1e-9, (order, exact, limit)


def _phase(sigma):
  return accounting.PrivacyPhase(noise_multiplier=sigma, dataset_size=1000, batch_size=100,
                                 steps=50)


def test_selection_costs_more_than_one_trial_and_less_than_composing_the_expected_trials():
  trial = tuning.trial_event([_phase(1.5)], tuning.score_event(4.0, math.sqrt(2)))
  one = tuning.event_epsilon(trial, 1e-5)
  selected = tuning.selection_epsilon(trial, 3.0, 1.0, 1e-5)
  three = tuning.event_epsilon(dp_event.SelfComposedDpEvent(trial, 3), 1e-5)
  assert one < selected
  assert tuning.selection_epsilon(trial, 1.0, 1.0, 1e-5) == pytest.approx(one)
  assert selected < 2 * three  # the point of a random K: no factor K in RDP


def test_calibrated_noise_meets_the_target_tightly():
  score = tuning.score_event(4.0, math.sqrt(2))
  extra = [dp_event.GaussianDpEvent(4.0)]
  sigma = tuning.calibrate_training_noise(8.0, 1e-5, _phase(1.0), score, 3.0, 1.0, extra)

  def eps(s):
    trial = tuning.trial_event([dataclasses.replace(_phase(1.0), noise_multiplier=s)], score)
    return tuning.selection_epsilon(trial, 3.0, 1.0, 1e-5, extra)

  assert eps(sigma) <= 8.0
  assert eps(sigma * 0.99) > 8.0


def test_calibration_refuses_a_budget_the_score_alone_spends():
  with pytest.raises(ValueError, match="score_noise"):
    tuning.calibrate_training_noise(0.05, 1e-5, _phase(1.0), tuning.score_event(0.5), 3.0, 1.0)


def test_bad_distribution_names_the_field():
  with pytest.raises(ValueError, match="mean_trials"):
    tuning.gamma_for_mean(0.5, 1.0)
  with pytest.raises(ValueError, match="shape"):
    tuning.gamma_for_mean(3.0, -1.0)
