"""Membership-inference metrics (ROC, LiRA) and epsilon lower bounds (one-run, Clopper-Pearson)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
from sklearn import metrics

from dpjax import auditing


# ----------------------------------------------------------------------------- ROC


def test_roc_auc_and_low_fpr_tpr_match_sklearn_with_ties():
  rng = np.random.default_rng(0)
  labels = rng.random(3000) < 0.4
  scores = np.round(rng.normal(size=3000) + labels, 1)  # rounding makes many ties
  assert auditing.roc_auc(scores, labels) == pytest.approx(metrics.roc_auc_score(labels, scores), abs=1e-12)
  fpr, tpr, _ = metrics.roc_curve(labels, scores, drop_intermediate=False)
  for target in (0.001, 0.01, 0.1):
    assert auditing.tpr_at_fpr(scores, labels, target) == pytest.approx(tpr[fpr <= target].max())


def test_roc_of_a_perfect_and_a_reversed_score():
  labels = np.array([True, True, False, False])
  assert auditing.roc_auc(np.array([4, 3, 2, 1]), labels) == 1.0
  assert auditing.roc_auc(np.array([1, 2, 3, 4]), labels) == 0.0
  assert auditing.tpr_at_fpr(np.array([4, 3, 2, 1]), labels, 0.0) == 1.0


def test_roc_refuses_one_sided_labels():
  with pytest.raises(ValueError, match="members and non-members"):
    auditing.roc_curve(np.arange(3.0), np.ones(3, bool))


# ----------------------------------------------------------------------------- LiRA


def test_logit_confidence_is_log_odds_of_the_true_class():
  logits = jnp.array([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0]])
  labels = jnp.array([0, 2])
  p = np.asarray(jax.nn.softmax(logits))[np.arange(2), np.asarray(labels)]
  np.testing.assert_allclose(auditing.logit_confidence(logits, labels), np.log(p / (1 - p)), rtol=1e-5)


def test_lira_online_equals_the_gaussian_likelihood_ratio_by_hand():
  # Two examples, four shadows: example 0 IN on shadows 0,1; example 1 IN on shadows 2,3.
  stats = np.array([[3.0, 0.0], [5.0, 2.0], [1.0, 4.0], [-1.0, 6.0]])
  shadow_in = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], bool)
  # IN means (4, 5), OUT means (0, 1); pooled residuals are all +-1 -> variance 4/(4-2) = 2.
  target = np.array([4.0, 1.0])
  expected = (scipy.stats.norm.logpdf(target, [4, 5], math.sqrt(2))
              - scipy.stats.norm.logpdf(target, [0, 1], math.sqrt(2)))
  np.testing.assert_allclose(auditing.lira_scores(target, stats, shadow_in), expected)
  offline = auditing.lira_scores(target, stats, shadow_in, online=False)
  np.testing.assert_allclose(offline, scipy.stats.norm.logcdf(target, [0, 1], math.sqrt(2)))


def test_lira_beats_the_loss_attack_when_examples_differ_in_difficulty():
  # Per-example difficulty dominates the raw statistic; membership adds +1. LiRA calibrates
  # the difficulty away with shadow models, the global loss threshold cannot.
  rng = np.random.default_rng(1)
  num_models, n = 16, 400
  difficulty = rng.normal(0, 3, n)
  membership = auditing.random_halves(0, num_models, n)
  stats = difficulty + 1.0 * membership + rng.normal(0, 0.5, (num_models, n))
  result = auditing.membership_inference(stats, -stats, membership)
  assert result["lira_online"]["auc"] > 0.85
  assert result["lira_offline"]["auc"] > 0.8
  assert result["loss"]["auc"] < 0.65
  assert result["lira_online"]["tpr_at_fpr_0.01"] > 5 * 0.01


# ----------------------------------------------------------------------------- lower bounds


def test_one_run_p_value_without_delta_is_the_binomial_tail():
  for m, r, v, eps in ((100, 50, 40, 1.0), (1000, 200, 150, 0.5), (10, 10, 10, 3.0)):
    expected = scipy.stats.binom.sf(v - 1, r, math.exp(eps) / (1 + math.exp(eps)))
    assert auditing.one_run_p_value(m, r, v, eps, 0.0) == pytest.approx(expected, rel=1e-12)


def test_one_run_delta_term_by_hand():
  # m=4, r=2, v=2: alpha = max(pmf(1), pmf(1)+pmf(0) over 2), p-value = beta + alpha 2 m delta.
  p = scipy.special.expit(0.7)
  pmf1, pmf0 = 2 * p * (1 - p), (1 - p) ** 2
  alpha = max(pmf1, (pmf1 + pmf0) / 2)
  expected = p ** 2 + alpha * 2 * 4 * 1e-3
  assert auditing.one_run_p_value(4, 2, 2, 0.7, 1e-3) == pytest.approx(expected, rel=1e-12)


def test_one_run_bound_of_all_correct_guesses_has_a_closed_form():
  # With delta = 0 and r correct out of r: p^r = 1 - confidence -> eps = logit((0.05)^(1/r)).
  r = 100
  expected = scipy.special.logit(0.05 ** (1 / r))
  assert auditing.one_run_epsilon_lower_bound(1000, r, r, 0.0) == pytest.approx(expected, abs=1e-6)
  assert auditing.one_run_epsilon_lower_bound(1000, r, r, 1e-5) < expected  # delta only loosens
  assert auditing.one_run_epsilon_lower_bound(1000, r, r // 2, 0.0) == 0.0


def test_one_run_bound_is_valid_and_informative_on_randomised_response():
  # An exactly eps0-DP mechanism: each canary's guess is right with probability e^eps0/(1+e^eps0).
  eps0, m, trials = 1.0, 1000, 100
  rng = np.random.default_rng(0)
  bounds = []
  for _ in range(trials):
    correct = int((rng.random(m) < scipy.special.expit(eps0)).sum())
    bounds.append(auditing.one_run_epsilon_lower_bound(m, m, correct, 0.0, confidence=0.95))
  bounds = np.array(bounds)
  assert np.mean(bounds > eps0) <= 0.1  # at most 5% expected; 10% leaves room for chance
  assert np.median(bounds) > 0.7  # and it is close to the truth


def test_one_run_audit_guesses_the_extremes():
  scores = np.arange(100.0)
  included = scores >= 50  # a perfect score
  result = auditing.one_run_audit(scores, included, 0.0, guess_fractions=(0.2,))
  assert (result["num_guesses"], result["num_correct"]) == (20, 20)
  assert result["epsilon_lower_bound"] == pytest.approx(
      auditing.one_run_epsilon_lower_bound(100, 20, 20, 0.0), rel=1e-9)


def test_clopper_pearson_bound_of_perfect_separation_by_hand():
  n = 200
  # tp = n: TPR_lo = (alpha/4)^(1/n); fp = 0: FPR_hi = 1 - (alpha/4)^(1/n).
  a = (0.05 / 4) ** (1 / n)
  expected = math.log(a / (1 - a))
  assert auditing.epsilon_lower_bound_clopper_pearson(n, 0, 0, n, 0.0) == pytest.approx(expected, rel=1e-6)


def test_clopper_pearson_bound_is_below_the_true_epsilon():
  eps0, n = 2.0, 5000
  rng = np.random.default_rng(0)
  p = scipy.special.expit(eps0)  # randomised response: TPR = p, FPR = 1 - p, exactly eps0-DP
  tp, fp = int((rng.random(n) < p).sum()), int((rng.random(n) < 1 - p).sum())
  bound = auditing.epsilon_lower_bound_clopper_pearson(tp, n - tp, fp, n - fp, 0.0)
  assert 1.5 < bound <= eps0


def test_lira_handles_an_example_no_shadow_holds():
  stats = np.array([[3.0, 0.0], [5.0, 2.0], [1.0, 4.0], [-1.0, 6.0]])
  shadow_in = np.array([[1, 0], [1, 0], [0, 0], [0, 0]], bool)  # example 1: never IN
  scores = auditing.lira_scores(np.array([4.0, 1.0]), stats, shadow_in)
  # IN mean of example 1 borrows example 0's gap (4 - 0 = 4): 3 + 4 = 7.
  # IN: example 0's values 3, 5 -> variance 2/1. OUT: residuals +-1 (example 0) and -3, -1, 1, 3
  # (example 1, mean 3) -> variance 22 / (6 observations - 2 means).
  assert np.all(np.isfinite(scores))
  np.testing.assert_allclose(scores[1], scipy.stats.norm.logpdf(1.0, 7.0, math.sqrt(2))
                             - scipy.stats.norm.logpdf(1.0, 3.0, math.sqrt(5.5)))


def test_membership_inference_scores_are_the_ones_behind_the_metrics():
  rng = np.random.default_rng(3)
  membership = auditing.random_halves(3, 4, 30)
  stats = rng.normal(size=membership.shape) + membership
  losses = rng.exponential(size=membership.shape) * np.where(membership, 0.5, 1.0)
  scores = auditing.membership_inference_scores(stats, losses, membership)
  expected = auditing.membership_inference(stats, losses, membership)
  assert sorted(scores) == sorted(expected)
  for name, score in scores.items():
    assert score.shape == (membership.size,)
    assert auditing.attack_metrics(score, membership.reshape(-1)) == expected[name]
  with pytest.raises(ValueError, match="at least 3 models"):
    auditing.membership_inference_scores(stats[:2], losses[:2], membership[:2])
