"""RDP certificate of smoothed top-k maps: bounds checked against exact Gaussian computations
and Monte Carlo on a toy attribution (the identity map), Clopper-Pearson by hand."""

import jax
import numpy as np
import pytest
from scipy import stats

from experiments.interpret import certified


def test_rdp_bounds_are_valid_and_never_tighter_than_neyman_pearson():
  p = np.array([0.02, 0.2, 0.5, 0.8, 0.97, 1.0])
  for radius in (0.01, 0.1, 0.5, 1.0):
    low, high = certified.rdp_bounds(p, radius, sigma=0.5)
    g_low, g_high = certified.gaussian_bounds(p, radius, sigma=0.5)
    assert np.all(low <= g_low + 1e-12) and np.all(g_high <= high + 1e-12)
    assert np.all(low <= p) and np.all(p <= high) and np.all(high <= 1) and np.all(low >= 0)
  low0, high0 = certified.rdp_bounds(p, 0.0, sigma=0.5)
  np.testing.assert_allclose(low0, p)
  np.testing.assert_allclose(high0, p)


def test_rdp_bound_at_one_order_by_hand():
  # alpha = 2, L = sigma / 2: eps = 2 * 0.25 / 2 = 0.25; lower >= e^-0.25 p^2, upper <= sqrt(e^0.25 p)
  p = np.array([0.9, 0.5])
  low, high = certified.rdp_bounds(p, 0.5, sigma=1.0, alphas=[2.0])
  np.testing.assert_allclose(low, np.exp(-0.25) * p**2)
  np.testing.assert_allclose(high, [1.0, np.sqrt(np.exp(0.25) * 0.5)])  # capped at 1
  best_low, best_high = certified.rdp_bounds(p, 0.5, sigma=1.0)
  assert np.all(best_low >= low) and np.all(best_high <= high)  # optimising over alpha can only help


def test_bounds_hold_for_the_worst_case_half_space():
  # f(x) = 1{x_1 > 0}: E f(x + z) = Phi(x_1 / sigma); moving x_1 by -L is the worst case and
  # meets the Gaussian (Neyman-Pearson) bound with equality.
  sigma, x1 = 0.5, 0.3
  p = stats.norm.cdf(x1 / sigma)
  for radius in (0.05, 0.2, 0.6):
    worst = stats.norm.cdf((x1 - radius) / sigma)
    g_low, _ = certified.gaussian_bounds(p, radius, sigma)
    r_low, _ = certified.rdp_bounds(p, radius, sigma)
    np.testing.assert_allclose(g_low, worst, rtol=1e-9)
    assert r_low <= worst


def test_clopper_pearson_extremes_by_hand():
  low, high = certified.clopper_pearson(np.array([10, 0, 4]), 10, 0.01)
  np.testing.assert_allclose(low[0], 0.01**(1 / 10))  # all successes: P(all) = p^n = error
  np.testing.assert_allclose(high[1], 1 - 0.01**(1 / 10))
  assert low[1] == 0 and high[0] == 1
  assert low[2] < 0.4 < high[2]
  # the lower bound is the p at which seeing >= 4 of 10 has probability `error`
  np.testing.assert_allclose(stats.binom.sf(3, 10, low[2]), 0.01, rtol=1e-6)


def test_certified_members_by_hand():
  lower = np.array([0.9, 0.6, 0.3, 0.1, 0.0])
  upper = np.array([1.0, 0.8, 0.65, 0.5, 0.2])
  # k = 2, top = pixels 0, 1. Pixel 0: others with upper >= 0.9: none -> certified.
  # Pixel 1: others with upper >= 0.6: pixels 0 and 2 (two >= k) -> not certified.
  got = certified.certified_members(lower, upper, np.array([0, 1]), 2)
  np.testing.assert_array_equal(got, [True, False])
  got = certified.certified_members(lower, upper, np.array([0, 1, 2]), 3)
  np.testing.assert_array_equal(got, [True, True, False])  # pixel 2: 0, 1, 3 reach 0.3


def _identity_attribution(params, images, classes):
  del params, classes
  return images[..., 0]


def _toy_image():
  values = np.array([1.0, 0.9, 0.8, 0.35, 0.3, 0.25, 0.1, 0.0], np.float32)
  return values.reshape(2, 4, 1)


def test_smoothing_is_deterministic_and_counts_k_per_copy():
  fn = jax.jit(_identity_attribution)
  a = certified.smooth_attributions(fn, None, _toy_image(), 0, jax.random.key(0), sigma=0.2,
                                    num_samples=50, k=3, batch_size=16)
  b = certified.smooth_attributions(fn, None, _toy_image(), 0, jax.random.key(0), sigma=0.2,
                                    num_samples=50, k=3, batch_size=16)
  np.testing.assert_array_equal(a.topk_counts, b.topk_counts)
  assert a.topk_counts.sum() == 50 * 3  # every copy has exactly k members, padding excluded
  np.testing.assert_allclose(a.smoothgrad, _toy_image()[..., 0], atol=0.12)


def test_certificate_survives_an_adversarial_shift_monte_carlo():
  """Where the certificate says a share of the top-k stays, it stays (toy map, large T)."""
  fn = jax.jit(_identity_attribution)
  sigma, k, samples = 0.3, 3, 20000
  image = _toy_image()
  clean = certified.smooth_attributions(fn, None, image, 0, jax.random.key(1), sigma=sigma,
                                        num_samples=samples, k=k, batch_size=5000)
  radius = certified.certified_radius(clean, 2 / 3, confidence=0.999)
  assert radius > 0
  top = np.argsort(-clean.topk_counts.reshape(-1), kind="stable")[:k]
  # Adversary: push the top pixels down, the best outsiders up, l2 norm = radius.
  direction = np.zeros(8, np.float32)
  direction[top] = -1.0
  direction[[3, 4, 5]] = 1.0
  shifted = image + (radius * direction / np.linalg.norm(direction)).reshape(2, 4, 1)
  moved = certified.smooth_attributions(fn, None, shifted, 0, jax.random.key(2), sigma=sigma,
                                        num_samples=samples, k=k, batch_size=5000)
  new_top = np.argsort(-moved.topk_frequency.reshape(-1), kind="stable")[:k]
  assert len(np.intersect1d(top, new_top)) / k >= 2 / 3
  # Per pixel, the RDP bounds at the radius contain the shifted frequencies (up to MC error).
  low, high = certified.rdp_bounds(clean.topk_frequency.reshape(-1), radius, sigma)
  frequency = moved.topk_frequency.reshape(-1)
  assert np.all(low <= frequency + 0.02) and np.all(frequency <= high + 0.02)
  # The certificate is conservative: just beyond the radius it no longer holds.
  beyond = certified.certify(clean, [radius + 0.01], confidence=0.999).fractions[0]
  assert beyond < 2 / 3


def test_fraction_does_not_grow_with_radius_and_gaussian_bound_certifies_more():
  fn = jax.jit(_identity_attribution)
  clean = certified.smooth_attributions(fn, None, _toy_image(), 0, jax.random.key(3), sigma=0.3,
                                        num_samples=2000, k=3, batch_size=1000)
  radii = [0.0, 0.02, 0.05, 0.1, 0.2, 0.5]
  rdp = certified.certify(clean, radii).fractions
  gauss = certified.certify(clean, radii, bound="gaussian").fractions
  assert np.all(np.diff(rdp) <= 0) and np.all(gauss >= rdp)
  assert rdp[0] == 1.0
  exact = certified.certify(clean, radii, confidence=None).fractions
  assert np.all(exact >= rdp)  # Monte Carlo error only removes certified pixels
  with pytest.raises(ValueError, match="unknown bound"):
    certified.certify(clean, radii, bound="laplace")


def test_rdp_bounds_match_their_closed_form_optimum():
  # Optimising alpha analytically (experiments/interpret/README.md, derivation step 3): with
  # c = log(1/p), r = L / (sigma sqrt 2),
  # lower = exp(-(sqrt c + r)^2), upper = exp(-(sqrt c - r)^2) if c > r^2 else 1.
  p = np.array([1e-4, 0.01, 0.3, 0.7, 0.95])
  radius, sigma = 0.2, 0.5
  c, r = np.log(1 / p), radius / (sigma * np.sqrt(2))
  low, high = certified.rdp_bounds(p, radius, sigma)  # closed form
  grid_low, grid_high = certified.rdp_bounds(p, radius, sigma,
                                             alphas=np.geomspace(1 + 1e-6, 1e7, 20000))
  np.testing.assert_allclose(grid_low, low, rtol=1e-4)
  np.testing.assert_allclose(grid_high, high, rtol=1e-4)
  assert np.all(grid_low <= low * (1 + 1e-12)) and np.all(grid_high >= high * (1 - 1e-12))
  np.testing.assert_allclose(low, np.exp(-(np.sqrt(c) + r)**2), rtol=1e-4)
  want_high = np.where(c > r**2, np.exp(-(np.sqrt(c) - r)**2), 1.0)
  np.testing.assert_allclose(high, want_high, rtol=1e-4)


def _failure_rate(p, num_samples, k, confidence, trials, seed):
  """Share of simulated count vectors for which some bound the certificate uses misses m."""
  rng = np.random.default_rng(seed)
  failures = 0
  for _ in range(trials):
    counts = rng.binomial(num_samples, p)
    topk, lower, upper = certified._topk_and_bounds(counts, num_samples, k, confidence)
    # certify uses the lower bounds of K and the upper bounds of every pixel
    failures += bool(np.any(lower[topk] > p[topk]) or np.any(upper < p))
  return failures / trials


@pytest.mark.parametrize("p, k, num_samples", [
    (np.full(64, 0.1), 5, 1000),  # every pixel tied in truth: K is pure sampling noise
    # a few clear winners, then many close pixels competing for the last places of the top-k
    (np.concatenate([[0.9, 0.85, 0.8], 0.25 + 0.01 * np.linspace(-1, 1, 97)]), 8, 500),
])
def test_simultaneous_confidence_holds_when_topk_is_chosen_from_the_counts(p, k, num_samples):
  # Expected failure rates at confidence 0.8 (20000 simulations each): Bonferroni over only the
  # P + k used bounds 0.285 and 0.269, over all 2P bounds 0.155 and 0.151. 1000 trials put the
  # 0.2 threshold more than 3 standard errors from either.
  confidence = 0.8
  rate = _failure_rate(p, num_samples, k, confidence, trials=1000, seed=0)
  assert rate <= 1 - confidence, rate
