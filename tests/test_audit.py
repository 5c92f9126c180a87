"""Membership inference, epsilon lower bounds and the canary audit that catches privacy bugs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.special
import scipy.stats
from sklearn import metrics

from dpjax import audit
from dpjax import clipping
from dpjax import randomness
from dpjax import train


# ----------------------------------------------------------------------------- ROC


def test_roc_auc_and_low_fpr_tpr_match_sklearn_with_ties():
  rng = np.random.default_rng(0)
  labels = rng.random(3000) < 0.4
  scores = np.round(rng.normal(size=3000) + labels, 1)  # rounding makes many ties
  assert audit.roc_auc(scores, labels) == pytest.approx(metrics.roc_auc_score(labels, scores), abs=1e-12)
  fpr, tpr, _ = metrics.roc_curve(labels, scores, drop_intermediate=False)
  for target in (0.001, 0.01, 0.1):
    assert audit.tpr_at_fpr(scores, labels, target) == pytest.approx(tpr[fpr <= target].max())


def test_roc_of_a_perfect_and_a_reversed_score():
  labels = np.array([True, True, False, False])
  assert audit.roc_auc(np.array([4, 3, 2, 1]), labels) == 1.0
  assert audit.roc_auc(np.array([1, 2, 3, 4]), labels) == 0.0
  assert audit.tpr_at_fpr(np.array([4, 3, 2, 1]), labels, 0.0) == 1.0


def test_roc_refuses_one_sided_labels():
  with pytest.raises(ValueError, match="members and non-members"):
    audit.roc_curve(np.arange(3.0), np.ones(3, bool))


# ----------------------------------------------------------------------------- LiRA


def test_logit_confidence_is_log_odds_of_the_true_class():
  logits = jnp.array([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0]])
  labels = jnp.array([0, 2])
  p = np.asarray(jax.nn.softmax(logits))[np.arange(2), np.asarray(labels)]
  np.testing.assert_allclose(audit.logit_confidence(logits, labels), np.log(p / (1 - p)), rtol=1e-5)


def test_lira_online_equals_the_gaussian_likelihood_ratio_by_hand():
  # Two examples, four shadows: example 0 IN on shadows 0,1; example 1 IN on shadows 2,3.
  stats = np.array([[3.0, 0.0], [5.0, 2.0], [1.0, 4.0], [-1.0, 6.0]])
  shadow_in = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], bool)
  # IN means (4, 5), OUT means (0, 1); pooled residuals are all +-1 -> variance 4/(4-2) = 2.
  target = np.array([4.0, 1.0])
  expected = (scipy.stats.norm.logpdf(target, [4, 5], math.sqrt(2))
              - scipy.stats.norm.logpdf(target, [0, 1], math.sqrt(2)))
  np.testing.assert_allclose(audit.lira_scores(target, stats, shadow_in), expected)
  offline = audit.lira_scores(target, stats, shadow_in, online=False)
  np.testing.assert_allclose(offline, scipy.stats.norm.logcdf(target, [0, 1], math.sqrt(2)))


def test_lira_beats_the_loss_attack_when_examples_differ_in_difficulty():
  # Per-example difficulty dominates the raw statistic; membership adds +1. LiRA calibrates
  # the difficulty away with shadow models, the global loss threshold cannot.
  rng = np.random.default_rng(1)
  num_models, n = 16, 400
  difficulty = rng.normal(0, 3, n)
  membership = audit.random_halves(0, num_models, n)
  stats = difficulty + 1.0 * membership + rng.normal(0, 0.5, (num_models, n))
  result = audit.membership_inference(stats, -stats, membership)
  assert result["lira_online"]["auc"] > 0.85
  assert result["lira_offline"]["auc"] > 0.8
  assert result["loss"]["auc"] < 0.65
  assert result["lira_online"]["tpr_at_fpr_0.01"] > 5 * 0.01


def tiny_classification(n=120, d=50, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = (rng.random(n) < 0.5).astype(np.int32)  # random labels: only memorisation helps
  return x, y


def tiny_loss(params, example):
  x, y = example
  return audit.cross_entropy(x @ params["w"] + params["b"], y)


def test_shadow_models_memorise_without_privacy_and_not_with_heavy_noise():
  x, y = tiny_classification()
  membership = audit.random_halves(0, 8, len(x))
  params = {"w": jnp.zeros((50, 2)), "b": jnp.zeros(2)}
  results = {}
  for name, dp in (("nonprivate", None),
                   ("dp", train.DPConfig(clipping.ClippingConfig(1.0), 50.0, 0.5 * 60))):
    stacked = audit.train_models(tiny_loss, params, (x, y), membership, optimizer=optax.sgd(0.5),
                                 num_steps=200, sampling_rate=0.5, dp=dp)
    assert jax.tree.leaves(stacked)[0].shape[0] == 8
    logits = jnp.einsum("nd,mdk->mnk", x, stacked["w"]) + stacked["b"][:, None]
    labels = jnp.broadcast_to(y, membership.shape)
    stats = np.asarray(audit.logit_confidence(logits, labels))
    losses = np.asarray(audit.cross_entropy(logits, labels))
    results[name] = audit.membership_inference(stats, losses, membership)
  assert results["nonprivate"]["loss"]["auc"] > 0.65
  assert results["nonprivate"]["lira_online"]["auc"] > 0.7
  assert abs(results["dp"]["lira_online"]["auc"] - 0.5) < 0.1


def tiny_shadow_models(source, noise_multiplier=0.0, membership=None):
  x, y = tiny_classification(n=40, d=5)
  if membership is None:
    membership = np.zeros((2, 40), bool)
    membership[0, :20] = True  # model 1 sees nothing: without noise it must not move
  params = {"w": jnp.zeros((5, 2)), "b": jnp.zeros(2)}
  dp = train.DPConfig(clipping.ClippingConfig(1.0), noise_multiplier, 10.0)
  return audit.train_models(tiny_loss, params, (x, y), membership, optimizer=optax.sgd(0.1),
                            num_steps=5, sampling_rate=0.5, dp=dp, randomness=source)


def test_train_models_respects_membership():
  stacked = tiny_shadow_models(randomness.SECURE)
  assert np.abs(stacked["w"][0]).sum() > 0
  assert np.abs(stacked["w"][1]).sum() == 0


def test_train_models_batches_are_secret_by_default_and_reproducible_with_the_opt_in():
  """Same public inputs: different models from the OS CSPRNG, identical ones from a secret seed."""
  a, b = tiny_shadow_models(randomness.SECURE), tiny_shadow_models(randomness.SECURE)
  assert not np.array_equal(a["w"][0], b["w"][0])
  secret = randomness.PrivateRandomness(secret_seed=3)
  np.testing.assert_array_equal(tiny_shadow_models(secret)["w"], tiny_shadow_models(secret)["w"])


def test_shadow_models_never_share_noise():
  """Two models on the same examples, with a secret seed: each its own noise stream."""
  membership = np.ones((2, 40), bool)
  stacked = tiny_shadow_models(randomness.PrivateRandomness(secret_seed=3), noise_multiplier=1.0,
                               membership=membership)
  assert not np.allclose(stacked["w"][0], stacked["w"][1])


def test_train_models_takes_no_public_noise_key():
  with pytest.raises(TypeError, match="key"):
    audit.train_models(tiny_loss, {}, (), np.ones((3, 1), bool), optimizer=optax.sgd(0.1),
                       num_steps=1, sampling_rate=0.5, dp=None, key=jax.random.PRNGKey(0))


# ----------------------------------------------------------------------------- lower bounds


def test_one_run_p_value_without_delta_is_the_binomial_tail():
  for m, r, v, eps in ((100, 50, 40, 1.0), (1000, 200, 150, 0.5), (10, 10, 10, 3.0)):
    expected = scipy.stats.binom.sf(v - 1, r, math.exp(eps) / (1 + math.exp(eps)))
    assert audit.one_run_p_value(m, r, v, eps, 0.0) == pytest.approx(expected, rel=1e-12)


def test_one_run_delta_term_by_hand():
  # m=4, r=2, v=2: alpha = max(pmf(1), pmf(1)+pmf(0) over 2), p-value = beta + alpha 2 m delta.
  p = scipy.special.expit(0.7)
  pmf1, pmf0 = 2 * p * (1 - p), (1 - p) ** 2
  alpha = max(pmf1, (pmf1 + pmf0) / 2)
  expected = p ** 2 + alpha * 2 * 4 * 1e-3
  assert audit.one_run_p_value(4, 2, 2, 0.7, 1e-3) == pytest.approx(expected, rel=1e-12)


def test_one_run_bound_of_all_correct_guesses_has_a_closed_form():
  # With delta = 0 and r correct out of r: p^r = 1 - confidence -> eps = logit((0.05)^(1/r)).
  r = 100
  expected = scipy.special.logit(0.05 ** (1 / r))
  assert audit.one_run_epsilon_lower_bound(1000, r, r, 0.0) == pytest.approx(expected, abs=1e-6)
  assert audit.one_run_epsilon_lower_bound(1000, r, r, 1e-5) < expected  # delta only loosens
  assert audit.one_run_epsilon_lower_bound(1000, r, r // 2, 0.0) == 0.0


def test_one_run_bound_is_valid_and_informative_on_randomised_response():
  # An exactly eps0-DP mechanism: each canary's guess is right with probability e^eps0/(1+e^eps0).
  eps0, m, trials = 1.0, 1000, 100
  rng = np.random.default_rng(0)
  bounds = []
  for _ in range(trials):
    correct = int((rng.random(m) < scipy.special.expit(eps0)).sum())
    bounds.append(audit.one_run_epsilon_lower_bound(m, m, correct, 0.0, confidence=0.95))
  bounds = np.array(bounds)
  assert np.mean(bounds > eps0) <= 0.1  # at most 5% expected; 10% leaves room for chance
  assert np.median(bounds) > 0.7  # and it is close to the truth


def test_one_run_audit_guesses_the_extremes():
  scores = np.arange(100.0)
  included = scores >= 50  # a perfect score
  result = audit.one_run_audit(scores, included, 0.0, guess_fractions=(0.2,))
  assert (result["num_guesses"], result["num_correct"]) == (20, 20)
  assert result["epsilon_lower_bound"] == pytest.approx(
      audit.one_run_epsilon_lower_bound(100, 20, 20, 0.0), rel=1e-9)


def test_clopper_pearson_bound_of_perfect_separation_by_hand():
  n = 200
  # tp = n: TPR_lo = (alpha/4)^(1/n); fp = 0: FPR_hi = 1 - (alpha/4)^(1/n).
  a = (0.05 / 4) ** (1 / n)
  expected = math.log(a / (1 - a))
  assert audit.epsilon_lower_bound_clopper_pearson(n, 0, 0, n, 0.0) == pytest.approx(expected, rel=1e-6)


def test_clopper_pearson_bound_is_below_the_true_epsilon():
  eps0, n = 2.0, 5000
  rng = np.random.default_rng(0)
  p = scipy.special.expit(eps0)  # randomised response: TPR = p, FPR = 1 - p, exactly eps0-DP
  tp, fp = int((rng.random(n) < p).sum()), int((rng.random(n) < 1 - p).sum())
  bound = audit.epsilon_lower_bound_clopper_pearson(tp, n - tp, fp, n - fp, 0.0)
  assert 1.5 < bound <= eps0


# ----------------------------------------------------------------------------- canary audit


@pytest.fixture(scope="module")
def canary_audits():
  """One correct and two broken DP-SGD runs, all with a claimed epsilon of about 2."""
  base = dict(noise_multiplier=3.0, num_steps=100, num_canaries=500)
  return {bug: audit.dirac_canary_audit(audit.CanaryAuditConfig(bug=bug, **base))
          for bug in ("none", "no_clip", "no_noise")}


def test_correct_dp_sgd_stays_below_the_accountants_epsilon(canary_audits):
  result = canary_audits["none"]
  assert 1.5 < result["accountant_epsilon"] < 2.5
  assert result["epsilon_lower_bound"] <= result["accountant_epsilon"]
  assert not result["exceeds_accountant"]


@pytest.mark.parametrize("bug", ["no_clip", "no_noise"])
def test_broken_dp_sgd_is_caught_by_the_audit(canary_audits, bug):
  result = canary_audits[bug]
  assert result["canary_auc"] > 0.99
  assert result["epsilon_lower_bound"] > result["accountant_epsilon"] + 1.0
  assert result["exceeds_accountant"]


def test_canary_audit_config_rejects_unknown_bug():
  with pytest.raises(ValueError, match="bug='typo'"):
    audit.CanaryAuditConfig(bug="typo")


def test_lira_handles_an_example_no_shadow_holds():
  stats = np.array([[3.0, 0.0], [5.0, 2.0], [1.0, 4.0], [-1.0, 6.0]])
  shadow_in = np.array([[1, 0], [1, 0], [0, 0], [0, 0]], bool)  # example 1: never IN
  scores = audit.lira_scores(np.array([4.0, 1.0]), stats, shadow_in)
  # IN mean of example 1 borrows example 0's gap (4 - 0 = 4): 3 + 4 = 7.
  # IN: example 0's values 3, 5 -> variance 2/1. OUT: residuals +-1 (example 0) and -3, -1, 1, 3
  # (example 1, mean 3) -> variance 22 / (6 observations - 2 means).
  assert np.all(np.isfinite(scores))
  np.testing.assert_allclose(scores[1], scipy.stats.norm.logpdf(1.0, 7.0, math.sqrt(2))
                             - scipy.stats.norm.logpdf(1.0, 3.0, math.sqrt(5.5)))


def test_membership_inference_scores_are_the_ones_behind_the_metrics():
  rng = np.random.default_rng(3)
  membership = audit.random_halves(3, 4, 30)
  stats = rng.normal(size=membership.shape) + membership
  losses = rng.exponential(size=membership.shape) * np.where(membership, 0.5, 1.0)
  scores = audit.membership_inference_scores(stats, losses, membership)
  expected = audit.membership_inference(stats, losses, membership)
  assert sorted(scores) == sorted(expected)
  for name, score in scores.items():
    assert score.shape == (membership.size,)
    assert audit.attack_metrics(score, membership.reshape(-1)) == expected[name]
  with pytest.raises(ValueError, match="at least 3 models"):
    audit.membership_inference_scores(stats[:2], losses[:2], membership[:2])
