"""Tests for experiments.eqtl.dp_linear: DP-SGD linear regression on the core."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import accounting
from dpjax import clipping
from dpjax import noise
from dpjax import randomness
from experiments.eqtl import dp_linear
from experiments.eqtl import linear


def _regression(seed, n=64, p=6, noise=0.1):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, p)).astype(np.float32)
  y = (x @ rng.standard_normal(p) + 0.7 + noise * rng.standard_normal(n)).astype(np.float32)
  return x, y


@pytest.mark.parametrize("fit_intercept,clip_norm", [(True, 0.3), (False, 2.0), (True, math.inf)])
def test_linear_clipped_sum_equals_the_core_clipped_sum(fit_intercept, clip_norm):
  x, y = _regression(0, n=12, p=5)
  rng = np.random.default_rng(1)
  params = {"w": jnp.asarray(rng.standard_normal(5), jnp.float32)}
  if fit_intercept:
    params["b"] = jnp.asarray(0.4, jnp.float32)
  mask = jnp.asarray(np.arange(12) < 9)  # the last 3 rows are padding
  fast = jax.jit(dp_linear.linear_clipped_grad_sum, static_argnums=4)
  summed, metrics = fast(params, jnp.asarray(x), jnp.asarray(y), mask, clip_norm)
  ref_sum, ref_metrics = jax.jit(
      lambda p, b, m: clipping.clipped_grad_sum(
          dp_linear.linear_loss, p, b, m, clipping.ClippingConfig(clip_norm=clip_norm)))(
              params, {"x": jnp.asarray(x), "y": jnp.asarray(y)}, mask)
  for name in params:
    np.testing.assert_allclose(summed[name], ref_sum[name], rtol=2e-5, atol=1e-5)
  for field in ("num_examples", "num_clipped", "num_nonfinite", "norm_sum", "loss_sum"):
    np.testing.assert_allclose(getattr(metrics, field), getattr(ref_metrics, field), rtol=2e-5)
  if math.isfinite(clip_norm) and clip_norm < 1:
    assert float(metrics.num_clipped) > 0  # the comparison covered clipped examples


def test_linear_clipped_sum_by_hand_and_nonfinite_rows_contribute_zero():
  x = jnp.asarray([[3.0, 4.0], [1.0, 0.0], [np.nan, 1.0]], jnp.float32)
  y = jnp.asarray([0.0, 2.0, 1.0], jnp.float32)
  params = {"w": jnp.asarray([1.0, 0.0]), "b": jnp.asarray(0.0)}
  summed, metrics = jax.jit(dp_linear.linear_clipped_grad_sum, static_argnums=4)(
      params, x, y, jnp.ones(3, bool), 1.0)
  # Row 0: r = 3, ||[x, 1]|| = sqrt(26), norm 3 sqrt(26) > 1: clipped to unit norm.
  # Row 1: r = -1, ||[x, 1]|| = sqrt(2): clipped to [1, 0, 1] * -1 / sqrt(2).
  expected_w = np.array([3.0, 4.0]) / math.sqrt(26) - np.array([1.0, 0.0]) / math.sqrt(2)
  expected_b = 1 / math.sqrt(26) - 1 / math.sqrt(2)
  np.testing.assert_allclose(summed["w"], expected_w, rtol=1e-6)
  np.testing.assert_allclose(summed["b"], expected_b, rtol=1e-6)
  assert float(metrics.num_nonfinite) == 1 and float(metrics.num_clipped) == 2


def test_zero_noise_and_no_clipping_converges_to_ols():
  x, y = _regression(2)
  config = dp_linear.DPLinearConfig(steps=700, learning_rate=0.1, noise_multiplier=0.0,
                                    clip_norm=math.inf)
  fit = dp_linear.dp_linear_regression(x, y, config)
  ols = linear.ols_fit(x, y)
  np.testing.assert_allclose(fit.coef, ols.coef, atol=2e-4)
  np.testing.assert_allclose(fit.intercept, ols.intercept, atol=2e-4)
  loss = fit.private_diagnostics["loss"]
  assert fit.epsilon == math.inf and loss[-1] < loss[0]


def test_ridge_converges_to_ridge_solution_with_unpenalised_intercept():
  x, y = _regression(3)
  ridge = 0.5
  config = dp_linear.DPLinearConfig(steps=2000, learning_rate=0.1, noise_multiplier=0.0,
                                    clip_norm=math.inf, ridge=ridge)
  fit = dp_linear.dp_linear_regression(x, y, config)
  # The mean loss 0.5 mean(r^2) + ridge/2 ||w||^2 is minimised by OLS ridge with N * ridge.
  reference = linear.ols_fit(x, y, ridge=ridge * x.shape[0])
  np.testing.assert_allclose(fit.coef, reference.coef, atol=2e-4)
  np.testing.assert_allclose(fit.intercept, reference.intercept, atol=2e-4)


@pytest.mark.parametrize("sampling,batch_size", [("full", None), ("poisson", 16)])
def test_epsilon_is_the_accountants_for_the_run(sampling, batch_size):
  x, y = _regression(4)
  config = dp_linear.DPLinearConfig(steps=30, noise_multiplier=1.3, delta=1e-4,
                                    sampling=sampling, batch_size=batch_size)
  fit = dp_linear.dp_linear_regression(x, y, config)
  phase = accounting.PrivacyPhase(1.3, 64, batch_size or 64, sampling, steps=30)
  assert fit.epsilon == pytest.approx(accounting.compute_epsilon([phase], 1e-4), rel=1e-12)
  assert fit.ledger.steps == 30 and fit.clip_norm == pytest.approx(math.sqrt(7))


def test_target_epsilon_is_calibrated_and_met():
  x, y = _regression(5)
  config = dp_linear.DPLinearConfig(steps=50, target_epsilon=2.0, delta=1e-5)
  fit = dp_linear.dp_linear_regression(x, y, config)
  assert 2.0 * 0.99 - 1e-9 <= fit.epsilon <= 2.0
  expected = accounting.calibrate_noise_multiplier(
      2.0, 1e-5, accounting.PrivacyPhase(1.0, 64, 64, "full", steps=50))
  assert fit.noise_multiplier == expected


def test_vmap_and_linear_clip_methods_give_the_same_run():
  x, y = _regression(6)
  config = dp_linear.DPLinearConfig(steps=15, noise_multiplier=0.8, clip_norm=0.5,
                                    sampling="poisson", batch_size=20)
  secret = randomness.PrivateRandomness(secret_seed=7)  # the same secret noise and batches
  fast = dp_linear.dp_linear_regression(x, y, config, randomness=secret, stream="s")
  generic = dp_linear.dp_linear_regression(
      x, y, dataclasses.replace(config, clip_method="vmap"), randomness=secret, stream="s")
  np.testing.assert_allclose(fast.coef, generic.coef, atol=1e-5)
  np.testing.assert_allclose(fast.private_diagnostics["loss"],
                             generic.private_diagnostics["loss"], rtol=1e-4)


@pytest.mark.parametrize("sampling,batch_size", [("full", None), ("poisson", 16)])
def test_same_seed_gives_different_private_params_by_default_and_identical_with_opt_in(
    sampling, batch_size):
  x, y = _regression(7)
  config = dp_linear.DPLinearConfig(steps=20, noise_multiplier=1.0, sampling=sampling,
                                    batch_size=batch_size)
  a = dp_linear.dp_linear_regression(x, y, config)
  b = dp_linear.dp_linear_regression(x, y, config)
  assert not np.allclose(a.coef, b.coef)  # fresh OS randomness for every fit
  secret = randomness.from_flag(True, 0)
  c = dp_linear.dp_linear_regression(x, y, config, randomness=secret, stream="fit")
  d = dp_linear.dp_linear_regression(x, y, config, randomness=secret, stream="fit")
  e = dp_linear.dp_linear_regression(x, y, config, randomness=secret, stream="other fit")
  np.testing.assert_array_equal(c.coef, d.coef)
  assert not np.allclose(c.coef, e.coef)  # another stream (arm of a sweep): other noise
  assert a.epsilon == b.epsilon == c.epsilon == d.epsilon


def test_regenerating_the_noise_from_the_public_seed_does_not_recover_the_clipped_sum():
  # One full-batch step from w = 0 with learning rate 1 releases -(clipped sum + noise) / N.
  # The former code keyed that noise with the public seed (key(seed), fold_in(key, step)).
  x, y = _regression(11, n=32, p=4)
  config = dp_linear.DPLinearConfig(steps=1, learning_rate=1.0, noise_multiplier=2.0,
                                    clip_norm=1.0)
  zero = {"w": jnp.zeros(4, jnp.float32), "b": jnp.zeros((), jnp.float32)}
  clipped_sum, _ = dp_linear.linear_clipped_grad_sum(zero, jnp.asarray(x), jnp.asarray(y),
                                                     jnp.ones(32, bool), 1.0)

  def recovered(fit, key):
    released = {"w": -jnp.asarray(fit.coef, jnp.float32),
                "b": -jnp.asarray(fit.intercept, jnp.float32)}
    noise_only = noise.privatize_sum(jax.random.fold_in(key, 0), jax.tree.map(jnp.zeros_like, zero),
                                     noise_multiplier=2.0, sensitivity=1.0, expected_batch_size=32,
                                     mechanism="gaussian")
    return jax.tree.map(lambda r, z: (r - z) * 32, released, noise_only)

  def error(tree):
    return max(float(jnp.max(jnp.abs(tree[k] - clipped_sum[k]))) for k in tree)

  fit = dp_linear.dp_linear_regression(x, y, config)
  public_keys = [jax.random.key(0), jax.random.PRNGKey(0), jax.random.key(1),
                 jax.random.split(jax.random.fold_in(jax.random.key(0), 0))[0]]
  for key in public_keys:
    assert error(recovered(fit, key)) > 0.1  # noise std 2 per coordinate of the sum
  # The check has teeth: whoever holds the secret stream does recover it.
  secret = randomness.PrivateRandomness(secret_seed=0)
  fit = dp_linear.dp_linear_regression(x, y, config, randomness=secret, stream="s")
  assert error(recovered(fit, secret.key("s", "noise"))) < 1e-4


def test_the_release_entry_is_the_ledgers():
  x, y = _regression(12)
  config = dp_linear.DPLinearConfig(steps=10, noise_multiplier=1.0, delta=1e-4)
  fit = dp_linear.dp_linear_regression(x, y, config)
  entry = fit.release("coefficients", ["results.json"])
  assert entry["epsilon"] == pytest.approx(fit.epsilon)
  assert entry["steps"] == 10 and entry["noise_multiplier"] == 1.0
  assert entry["clip_norm"] == fit.clip_norm and entry["files"] == ["results.json"]
  assert "loss" not in dp_linear.summary(fit)
  assert set(dp_linear.private_summary(fit)) == {"final_loss", "final_clipped_fraction",
                                                 "final_num_nonfinite"}


def test_epochs_become_steps_through_steps_for_epochs():
  x, y = _regression(13)
  config = dp_linear.DPLinearConfig(epochs=2.5, sampling="poisson", batch_size=10,
                                    noise_multiplier=1.0)
  fit = dp_linear.dp_linear_regression(x, y, config)
  assert fit.steps == fit.ledger.steps == 16  # ceil(2.5 * 64 / 10)


def test_a_key_as_first_argument_is_refused_with_the_fix():
  x, y = _regression(14, n=8, p=2)
  with pytest.raises(TypeError):  # the former call (key, x, y, config)
    dp_linear.dp_linear_regression(jax.random.key(0), x, y, dp_linear.DPLinearConfig(steps=2))
  with pytest.raises(TypeError, match="randomness"):
    dp_linear.dp_linear_regression(jax.random.key(0), x, y)


def test_default_delta_is_below_one_over_n():
  assert dp_linear.default_delta(100) == 1e-5
  assert dp_linear.default_delta(10**6) == pytest.approx(1e-7)
  for n in (10, 1000, 10**7):
    assert dp_linear.default_delta(n) < 1 / n


@pytest.mark.parametrize("change,message", [
    ({"steps": 0}, "steps=0"),
    ({"sampling": "poisson"}, "batch_size"),
    ({"noise_multiplier": -1.0}, "noise_multiplier=-1.0"),
    ({"delta": 1.0}, "delta=1.0"),
    ({"clip_norm": 0.0}, "clip_norm=0.0"),
    ({"clip_norm": math.inf}, "finite clip_norm"),
    ({"clip_method": "ghost"}, "clip_method"),
])
def test_bad_settings_are_named(change, message):
  x, y = _regression(8, n=8, p=2)
  config = dataclasses.replace(dp_linear.DPLinearConfig(steps=2), **change)
  with pytest.raises(ValueError, match=message):
    dp_linear.dp_linear_regression(x, y, config)


def test_nonfinite_data_and_bad_shapes_are_refused():
  x, y = _regression(9, n=8, p=2)
  x[0, 0] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    dp_linear.dp_linear_regression(x, y, dp_linear.DPLinearConfig(steps=2))
  with pytest.raises(ValueError, match="y"):
    dp_linear.dp_linear_regression(np.ones((4, 2)), np.ones(3),
                                   dp_linear.DPLinearConfig(steps=2))


def test_divergence_is_an_error_not_a_nan_fit():
  x, y = _regression(10, n=16, p=3)
  config = dp_linear.DPLinearConfig(steps=60, learning_rate=50.0, noise_multiplier=0.0,
                                    clip_norm=math.inf)
  with pytest.raises(FloatingPointError, match="learning_rate"):
    dp_linear.dp_linear_regression(x * 10, y, config)


def test_noise_of_successive_steps_is_fresh():
  """With zero data (zero gradients) each SGD step moves w by its noise only: the noises of
  steps 1 and 2 must be uncorrelated (a noise key reused across steps repeats the vector)."""
  x, y = np.zeros((32, 4000), np.float32), np.zeros(32, np.float32)
  secret = randomness.PrivateRandomness(secret_seed=5)  # the same noise for both fits
  coefs = []
  for steps in (1, 2):
    config = dp_linear.DPLinearConfig(steps=steps, learning_rate=1.0, noise_multiplier=1.0,
                                      clip_norm=1.0, fit_intercept=False)
    coefs.append(dp_linear.dp_linear_regression(x, y, config, randomness=secret,
                                                stream="fresh").coef)
  first, second = coefs[0], coefs[1] - coefs[0]
  assert abs(np.corrcoef(first, second)[0, 1]) < 0.1  # 4000 pairs: sd of r ~0.016
  np.testing.assert_allclose([first.std(), second.std()], 1.0 / 32, rtol=0.1)
