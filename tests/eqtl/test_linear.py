"""Tests for experiments.eqtl.linear: OLS/ridge vs scikit-learn, R2, Gaussian calibration, AdaSSP."""

import math

import dp_accounting
from dp_accounting import pld
import jax
import numpy as np
import pytest
from scipy import stats
from sklearn import linear_model
from sklearn import metrics

from dpjax import randomness
from experiments.eqtl import linear


def _regression(seed, n=40, p=5, noise=0.3):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, p))
  y = x @ rng.standard_normal(p) + 1.5 + noise * rng.standard_normal(n)
  return x, y


def _balle_wang_delta(noise_std, epsilon, sensitivity):
  """delta(eps) of one Gaussian release, Balle & Wang (2018) Theorem 8, written out here."""
  a = sensitivity / (2 * noise_std)
  b = epsilon * noise_std / sensitivity
  return stats.norm.cdf(a - b) - math.exp(epsilon) * stats.norm.cdf(-a - b)


def _pld_epsilon(noise_multipliers, delta):
  accountant = pld.PLDAccountant()
  for noise_multiplier in noise_multipliers:
    accountant.compose(dp_accounting.GaussianDpEvent(noise_multiplier))
  return accountant.get_epsilon(delta)


# --- OLS, ridge, metrics ------------------------------------------------------


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_ols_matches_sklearn_linear_regression(fit_intercept):
  x, y = _regression(0)
  fit = linear.ols_fit(x, y, fit_intercept=fit_intercept)
  reference = linear_model.LinearRegression(fit_intercept=fit_intercept).fit(x, y)
  np.testing.assert_allclose(fit.coef, reference.coef_, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(fit.intercept, reference.intercept_, atol=1e-10)
  assert not fit.underdetermined and fit.warning is None


@pytest.mark.parametrize("ridge", [0.1, 10.0])
def test_ridge_matches_sklearn_ridge(ridge):
  x, y = _regression(1)
  fit = linear.ols_fit(x, y, ridge=ridge)
  reference = linear_model.Ridge(alpha=ridge).fit(x, y)
  np.testing.assert_allclose(fit.coef, reference.coef_, rtol=1e-8)
  np.testing.assert_allclose(fit.intercept, reference.intercept_, rtol=1e-8)


def test_ols_with_more_features_than_samples_is_reported_not_crashed():
  x, y = _regression(2, n=8, p=20)
  fit = linear.ols_fit(x, y)
  assert fit.underdetermined
  assert "under-determined" in fit.warning and "p=20" in fit.warning and "n=8" in fit.warning
  centred_x = x - x.mean(axis=0)
  np.testing.assert_allclose(fit.coef, np.linalg.pinv(centred_x) @ (y - y.mean()), atol=1e-10)
  # Minimum-norm interpolation: the training data are fitted exactly.
  np.testing.assert_allclose(fit.predict(x), y, atol=1e-9)


def test_ols_flags_collinear_snps_even_when_n_exceeds_p():
  x, y = _regression(3, n=30, p=4)
  duplicated = np.hstack([x, x[:, :1]])
  fit = linear.ols_fit(duplicated, y)
  assert fit.underdetermined and fit.details["rank"] == 4
  np.testing.assert_allclose(fit.predict(duplicated), linear.ols_fit(x, y).predict(x), atol=1e-9)


def test_ill_conditioned_design_is_still_solved_exactly():
  # cond(X) ~ 2e7 squares to ~4e14 in the normal equations: the lstsq fallback is used.
  # (scikit-learn treats this design as rank deficient, so the oracle here is a QR solve.)
  x, y = _regression(11, n=50, p=4)
  x[:, 1] = x[:, 0] + 1e-7 * np.random.default_rng(0).standard_normal(50)
  fit = linear.ols_fit(x, y)
  design = np.hstack([x, np.ones((50, 1))])
  q, r = np.linalg.qr(design)
  np.testing.assert_allclose(fit.predict(x), design @ np.linalg.solve(r, q.T @ y), atol=1e-6)
  assert not fit.underdetermined


def test_ols_names_bad_shapes_and_nans():
  x, y = _regression(4)
  with pytest.raises(ValueError, match="same n"):
    linear.ols_fit(x, y[:-1])
  x[0, 0] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    linear.ols_fit(x, y)


def test_r2_matches_sklearn_and_is_nan_for_constant_target():
  rng = np.random.default_rng(5)
  y, y_pred = rng.standard_normal(30), rng.standard_normal(30)
  assert linear.r2_score(y, y_pred) == pytest.approx(metrics.r2_score(y, y_pred), abs=1e-12)
  assert math.isnan(linear.r2_score(np.ones(5), np.zeros(5)))


def test_adjusted_r2_by_hand_and_undefined_when_too_few_samples():
  # 1 - (1 - 0.5) * 20 / 16
  assert linear.adjusted_r2(0.5, n=21, p=4) == pytest.approx(0.375)
  assert linear.adjusted_r2_undefined_reason(21, 4) is None
  assert math.isnan(linear.adjusted_r2(0.9, n=11, p=10))
  assert "n=11, p=10" in linear.adjusted_r2_undefined_reason(11, 10)
  assert math.isnan(linear.adjusted_r2(0.9, n=5, p=10))


# --- Gaussian mechanism calibration -------------------------------------------


@pytest.mark.parametrize("epsilon,delta,sensitivity",
                         [(0.1, 1e-5, 1.0), (1.0, 1e-6, 2.5), (8.0, 1e-5, 0.3)])
def test_gaussian_noise_std_is_the_exact_analytic_calibration(epsilon, delta, sensitivity):
  noise_std = linear.gaussian_noise_std(epsilon, delta, sensitivity)
  assert _balle_wang_delta(noise_std, epsilon, sensitivity) <= delta
  # Tight: 0.1% less noise already breaks the guarantee.
  assert _balle_wang_delta(0.999 * noise_std, epsilon, sensitivity) > delta
  pld_epsilon = _pld_epsilon([noise_std / sensitivity], delta)
  assert pld_epsilon == pytest.approx(epsilon, rel=1e-2)


@pytest.mark.parametrize("epsilon", [0.1, 0.5, 0.9])
def test_analytic_noise_is_below_the_classical_bound_where_that_is_valid(epsilon):
  classical = math.sqrt(2 * math.log(1.25 / 1e-5)) / epsilon
  assert linear.gaussian_noise_std(epsilon, 1e-5) < classical


def test_gaussian_noise_std_rejects_bad_budgets_and_is_zero_at_infinity():
  assert linear.gaussian_noise_std(math.inf, 1e-5) == 0.0
  with pytest.raises(ValueError, match="epsilon"):
    linear.gaussian_noise_std(0.0, 1e-5)
  with pytest.raises(ValueError, match="delta"):
    linear.gaussian_noise_std(1.0, 0.0)


@pytest.mark.parametrize("budget_split", ["thirds", "joint"])
def test_adassp_releases_compose_to_the_budget(budget_split):
  epsilon, delta = 1.0, 1e-5
  noise_stds = linear.adassp_noise_stds(epsilon, delta, row_bound=2.0, y_bound=3.0,
                                        budget_split=budget_split)
  sensitivities = linear.adassp_sensitivities(2.0, 3.0)
  assert sensitivities == {"lambda_min": 4.0, "xtx": 4.0, "xty": 6.0}
  multipliers = [noise_stds[k] / sensitivities[k] for k in sensitivities]
  composed = _pld_epsilon(multipliers, delta)
  if budget_split == "joint":
    assert composed == pytest.approx(epsilon, rel=1e-2)
  else:
    # eps/3 each with basic composition is loose: the exact composition spends less.
    assert composed < epsilon
    assert multipliers[0] == pytest.approx(linear.gaussian_noise_std(epsilon / 3, delta / 3))


# --- clipping and AdaSSP --------------------------------------------------------


def test_clipping_respects_bounds_and_keeps_small_rows():
  rng = np.random.default_rng(6)
  x = rng.standard_normal((50, 4)) * rng.uniform(0.1, 5, size=(50, 1))
  clipped = linear.clip_rows(x, 2.0)
  norms = np.linalg.norm(x, axis=1)
  assert np.all(np.linalg.norm(clipped, axis=1) <= 2.0 + 1e-12)
  np.testing.assert_array_equal(clipped[norms <= 2.0], x[norms <= 2.0])
  big = norms > 2.0
  np.testing.assert_allclose(clipped[big] / np.linalg.norm(clipped[big], axis=1, keepdims=True),
                             x[big] / norms[big, None])
  np.testing.assert_array_equal(linear.clip_rows(np.zeros((2, 3)), 1.0), np.zeros((2, 3)))
  np.testing.assert_array_equal(linear.clip_targets(np.array([-5.0, 0.5, 7.0]), 1.0),
                                [-1.0, 0.5, 1.0])


def test_adassp_without_privacy_is_ols_on_clipped_data():
  x, y = _regression(7, n=60, p=3)
  x[0] *= 50  # an outlier the bound must tame
  fit = linear.adassp_fit(x, y, math.inf, 1e-5, x_bound=4.0, y_bound=100.0)
  reference = linear.ols_fit(linear.clip_rows(x, 4.0), y)
  np.testing.assert_allclose(fit.coef, reference.coef, rtol=1e-8)
  assert fit.intercept == pytest.approx(reference.intercept, rel=1e-8)
  assert fit.details["ridge_lambda"] == 0.0


def test_adassp_at_huge_epsilon_approaches_ols():
  x, y = _regression(8, n=400, p=5)
  ols = linear.ols_fit(x, y)
  # Bounds just above the data's, so that nothing is clipped.
  x_bound = 1.01 * np.linalg.norm(x, axis=1).max()
  y_bound = 1.01 * np.abs(y).max()
  fit = linear.adassp_fit(x, y, 1e6, 1e-5, x_bound=x_bound, y_bound=y_bound)
  np.testing.assert_allclose(fit.coef, ols.coef, atol=1e-2)
  assert fit.intercept == pytest.approx(ols.intercept, abs=1e-2)


def test_adassp_noise_matches_calibration_at_small_epsilon():
  epsilon, delta = 0.5, 1e-5
  x = np.array([[0.6, 0.0, 0.8], [0.0, 1.0, 0.0], [0.5, 0.5, 0.5], [0.1, 0.2, 0.3]])
  y = np.array([1.0, -1.0, 0.5, 0.0])
  noise_stds = linear.adassp_noise_stds(epsilon, delta, row_bound=1.0, y_bound=1.0)
  expected = linear.gaussian_noise_std(epsilon / 3, delta / 3, sensitivity=1.0)
  assert noise_stds == pytest.approx({"lambda_min": expected, "xtx": expected, "xty": expected})
  rng = np.random.default_rng(9)
  draws = [linear.private_sufficient_statistics(rng, x, y, noise_stds, delta)
           for _ in range(3000)]
  xty_noise = np.stack([d.xty for d in draws]) - x.T @ y
  xtx_noise = np.stack([d.xtx for d in draws]) - x.T @ x
  np.testing.assert_allclose(xty_noise.std(axis=0), expected, rtol=0.06)
  upper = np.triu_indices(3)
  np.testing.assert_allclose(xtx_noise[:, upper[0], upper[1]].std(axis=0), expected, rtol=0.06)
  np.testing.assert_array_equal(xtx_noise, np.swapaxes(xtx_noise, 1, 2))


def test_lambda_min_is_the_exact_smallest_eigenvalue():
  x, y = _regression(12, n=30, p=4)
  zero_noise = {"lambda_min": 0.0, "xtx": 0.0, "xty": 0.0}
  stats_full = linear.private_sufficient_statistics(np.random.default_rng(0), x, y,
                                                    zero_noise, 1e-5)
  assert stats_full.lambda_min == pytest.approx(np.linalg.eigvalsh(x.T @ x)[0], rel=1e-10)
  wide = linear.private_sufficient_statistics(np.random.default_rng(0), x[:3], y[:3],
                                              zero_noise, 1e-5)
  assert wide.lambda_min == 0.0


def test_adassp_noise_is_secret_by_default_and_reproducible_only_with_a_secret_seed():
  x, y = _regression(10)
  args = (x, y, 1.0, 1e-5, 3.0, 5.0)
  # Default: fresh OS randomness, so two fits differ although nothing else changed.
  assert not np.array_equal(linear.adassp_fit(*args).coef, linear.adassp_fit(*args).coef)
  secret = randomness.PrivateRandomness(secret_seed=3)
  first = linear.adassp_fit(*args, randomness=secret, stream="a")
  again = linear.adassp_fit(*args, randomness=secret, stream="a")
  other_stream = linear.adassp_fit(*args, randomness=secret, stream="b")
  np.testing.assert_array_equal(first.coef, again.coef)
  assert not np.array_equal(first.coef, other_stream.coef)
  assert first.details["epsilon"] == again.details["epsilon"] == 1.0


@pytest.mark.parametrize("public", [0, 7, np.random.default_rng(7), jax.random.key(3),
                                    jax.random.PRNGKey(3)])
def test_adassp_refuses_a_public_seed_or_key(public):
  x, y = _regression(10)
  with pytest.raises(TypeError):  # the former call adassp_fit(key, x, y, ...)
    linear.adassp_fit(public, x, y, 1.0, 1e-5, 3.0, 5.0)
  with pytest.raises(TypeError, match="randomness"):
    linear.adassp_fit(public, x, y, 1.0, 1e-5, 3.0)


def test_adassp_release_names_the_mechanism_and_its_budget():
  x, y = _regression(10)
  fit = linear.adassp_fit(x, y, 2.0, 1e-5, 3.0, 5.0, budget_split="joint")
  entry = linear.adassp_release(fit, "AdaSSP fit", ["results.json"])
  assert entry["epsilon"] == 2.0 and entry["delta"] == 1e-5
  assert "AdaSSP" in entry["mechanism"] and entry["files"] == ["results.json"]
  assert entry["noise_stds"] == fit.details["noise_stds"]


def test_adassp_joint_split_uses_less_noise_than_thirds():
  thirds = linear.adassp_noise_stds(1.0, 1e-5, 1.0, 1.0, "thirds")
  joint = linear.adassp_noise_stds(1.0, 1e-5, 1.0, 1.0, "joint")
  assert joint["xty"] < 0.7 * thirds["xty"]
  with pytest.raises(ValueError, match="budget_split"):
    linear.adassp_noise_stds(1.0, 1e-5, 1.0, 1.0, "halves")
