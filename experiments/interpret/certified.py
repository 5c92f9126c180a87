"""Certifiably robust top-k attributions by Gaussian smoothing, certified through Renyi DP.

After Liu et al., "Certifiably robust interpretation via Renyi differential privacy" (Artificial
Intelligence 313, 2022; arXiv 2107.01561). The smoothed map of an image x is
  m_i(x) = E_z [ 1{pixel i is among the k largest of A(x + z)} ],  z ~ N(0, sigma^2 I),
estimated from T noisy copies (SmoothGrad averages A(x + z) itself, from the same copies).

x -> A(x + z) is the Gaussian mechanism on the input followed by post-processing, so for any x'
with ||x' - x||_2 <= L it is (alpha, alpha L^2 / (2 sigma^2))-RDP for every alpha > 1. For any
[0, 1]-valued function of the output (here a pixel's top-k indicator), Hoelder's inequality gives
  m_i(x') >= exp(-eps_alpha) m_i(x)^(alpha / (alpha - 1))     (lower bound)
  m_i(x') <= (exp(eps_alpha) m_i(x))^((alpha - 1) / alpha)     (upper bound)
and each holds for every alpha, so the best alpha is taken per pixel. Pixel i of the top-k set K
of m(x) stays in the top-k of m(x') whenever fewer than k other pixels j have upper_j >= lower_i;
the certified fraction is the share of K for which this holds. The derivation, and how it relates
to the paper's theorem, is in experiments/interpret/README.md (certified robustness).
`bound="gaussian"` uses the tight Neyman-Pearson bound Phi(Phi^-1(m) -+ L / sigma) of Gaussian
smoothing instead (never weaker).

Monte Carlo error: m is estimated from T samples, so by default every bound is a one-sided
Clopper-Pearson bound, Bonferroni-corrected over 2P of them (a lower and an upper bound for each
of the P pixels; see `_topk_and_bounds` for why not P + k); the certificate then holds with
probability >= `confidence` over the sampling noise. `confidence=None` treats the estimates as
exact (stated wherever results are reported).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from experiments.interpret.gradcam import AttributionFn

PyTree = object


@dataclasses.dataclass(frozen=True)
class SmoothedMaps:
  """Monte Carlo estimates from `num_samples` noisy copies of one image."""
  topk_counts: np.ndarray  # (H, W): how many copies had the pixel in their top k
  smoothgrad: np.ndarray  # (H, W): mean attribution (SmoothGrad)
  num_samples: int
  k: int
  sigma: float
  seconds: float  # wall time of the sampling (after compilation)

  @property
  def topk_frequency(self) -> np.ndarray:
    """The (H, W) smoothed top-k map m (the RDP-smoothed attribution)."""
    return self.topk_counts / self.num_samples


def _topk_indicator(maps: jnp.ndarray, k: int) -> jnp.ndarray:
  flat = maps.reshape(maps.shape[0], -1)
  _, index = jax.lax.top_k(flat, k)
  rows = jnp.arange(flat.shape[0])[:, None]
  return jnp.zeros_like(flat).at[rows, index].set(1.0).reshape(maps.shape)


@functools.partial(jax.jit, static_argnames=("attribution_fn", "k", "batch_size"))
def _noisy_batch_sums(attribution_fn, params, image, class_index, key, sigma, valid, *, k,
                      batch_size):
  noise = sigma * jax.random.normal(key, (batch_size,) + image.shape, image.dtype)
  classes = jnp.full((batch_size,), class_index, jnp.int32)
  maps = attribution_fn(params, image[None] + noise, classes)
  weights = (jnp.arange(batch_size) < valid).astype(maps.dtype)[:, None, None]
  return (_topk_indicator(maps, k) * weights).sum(0), (maps * weights).sum(0)


def smooth_attributions(attribution_fn: AttributionFn, params: PyTree, image, class_index: int,
                        key: jax.Array, *, sigma: float, num_samples: int, k: int,
                        batch_size: int = 32) -> SmoothedMaps:
  """Top-k counts and SmoothGrad of `attribution_fn` over `num_samples` copies x + N(0, sigma^2).

  `attribution_fn(params, images (B,H,W,C), classes (B,)) -> (B, H, W)` (jitted, hashable: make
  it once and reuse it). The explained class is fixed to `class_index` for every copy. Copy t
  uses noise from `fold_in(key, batch)`: same key, same result.
  """
  if not sigma > 0:
    raise ValueError(f"sigma must be > 0, got {sigma}")
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  image = jnp.asarray(image, jnp.float32)
  batch_size = max(1, min(batch_size, num_samples))
  run = functools.partial(_noisy_batch_sums, attribution_fn, params, image,
                          jnp.int32(class_index), k=k, batch_size=batch_size)
  jax.block_until_ready(run(key, jnp.float32(sigma), 0))  # compile outside the timing
  start = time.perf_counter()
  counts, total = 0.0, 0.0
  for batch, first in enumerate(range(0, num_samples, batch_size)):
    batch_counts, batch_total = run(jax.random.fold_in(key, batch), jnp.float32(sigma),
                                    min(batch_size, num_samples - first))
    counts, total = counts + batch_counts, total + batch_total
  counts, total = np.asarray(counts), np.asarray(total)
  return SmoothedMaps(topk_counts=np.rint(counts).astype(np.int64),
                      smoothgrad=total / num_samples, num_samples=num_samples, k=k,
                      sigma=float(sigma), seconds=time.perf_counter() - start)


def rdp_epsilon(alpha, radius: float, sigma: float):
  """RDP of order alpha of the Gaussian mechanism with sensitivity `radius`: alpha L^2/(2 s^2)."""
  return np.asarray(alpha) * radius**2 / (2.0 * sigma**2)


def rdp_bounds(p, radius: float, sigma: float, alphas: Sequence[float] | None = None):
  """(lower, upper) on E[f(x')] for every x' within `radius` of x, given p = E[f(x)], f in [0,1].

  The two Hoelder/RDP bounds of the module docstring, at the best order alpha: in closed form
  (default; with c = log(1/p) and r = radius / (sigma sqrt 2), lower = exp(-(sqrt c + r)^2) and
  upper = exp(-(sqrt c - r)^2) if c > r^2, else 1; derived in experiments/interpret/README.md (certified robustness)), or the best
  over the given finite `alphas`.
  """
  p = np.clip(np.asarray(p, np.float64), 0.0, 1.0)
  if radius == 0:
    return p.copy(), p.copy()
  if alphas is None:
    with np.errstate(divide="ignore"):
      c = np.log(1.0 / p)
    r = radius / (sigma * np.sqrt(2.0))
    lower = np.exp(-(np.sqrt(c) + r)**2)
    upper = np.where(c > r**2, np.exp(-(np.sqrt(c) - r)**2), 1.0)
    return np.where(p > 0, lower, 0.0), np.where(p > 0, upper, 0.0)
  alphas = np.asarray(alphas, np.float64).reshape((-1,) + (1,) * p.ndim)
  eps = rdp_epsilon(alphas, radius, sigma)
  with np.errstate(divide="ignore"):
    log_p = np.log(p)
  log_lower = -eps + alphas / (alphas - 1.0) * log_p
  log_upper = (alphas - 1.0) / alphas * (eps + log_p)
  lower = np.exp(np.max(log_lower, axis=0))
  upper = np.minimum(1.0, np.exp(np.min(log_upper, axis=0)))
  return np.where(p > 0, lower, 0.0), np.where(p > 0, upper, 0.0)


def gaussian_bounds(p, radius: float, sigma: float):
  """Tight (Neyman-Pearson) bounds for Gaussian smoothing: Phi(Phi^-1(p) -+ radius / sigma)."""
  p = np.clip(np.asarray(p, np.float64), 0.0, 1.0)
  z = stats.norm.ppf(p)
  return stats.norm.cdf(z - radius / sigma), stats.norm.cdf(z + radius / sigma)


def clopper_pearson(counts, num_samples: int, error: float):
  """One-sided (lower, upper) Clopper-Pearson bounds, each failing with probability <= error."""
  counts = np.asarray(counts, np.float64)
  lower = np.where(counts > 0, stats.beta.ppf(error, counts, num_samples - counts + 1), 0.0)
  upper = np.where(counts < num_samples,
                   stats.beta.ppf(1.0 - error, counts + 1, num_samples - counts), 1.0)
  return np.nan_to_num(lower), np.nan_to_num(upper, nan=1.0)


def certified_members(lower: np.ndarray, upper: np.ndarray, topk: np.ndarray, k: int) -> np.ndarray:
  """Boolean per member i of `topk`: fewer than k other pixels j can reach upper_j >= lower_i.

  If i left the top-k of m(x'), k other pixels j would have m_j(x') >= m_i(x') >= lower_i, so
  upper_j >= lower_i for k of them; fewer than k such j means i provably stays.
  """
  upper_sorted = np.sort(upper.reshape(-1))
  lower_top = lower.reshape(-1)[topk]
  upper_top = upper.reshape(-1)[topk]
  at_least = upper_sorted.size - np.searchsorted(upper_sorted, lower_top, side="left")
  others = at_least - (upper_top >= lower_top)  # pixel i itself is not a competitor
  return (others <= k - 1) & (lower_top > 0)


@dataclasses.dataclass(frozen=True)
class Certificate:
  radii: np.ndarray
  fractions: np.ndarray  # certified fraction of the top-k at each radius
  bound: str
  confidence: float | None


def _topk_and_bounds(counts, num_samples: int, k: int, confidence: float | None):
  """(K, lower, upper): the top-k set of the counts and (1-D) bounds on every pixel's m_i.

  K is chosen from the same counts the bounds are computed from, so which lower bounds the
  certificate uses (those of K) depends on the sample, and it prefers exactly the pixels whose
  counts came out high, i.e. those whose lower bound is most likely to be too high. A Bonferroni
  correction over only the P + k bounds that end up used (upper for all P, lower for K) treats K
  as fixed in advance and is not valid: with many pixels of similar m near the k-th place, the
  pixel whose lower bound fails is usually the one that made it into K, and the simultaneous
  failure rate approaches that of 2P bounds at the P + k level (measured 0.26-0.29 at
  confidence 0.8 in `test_simultaneous_confidence_holds_when_topk_is_chosen_from_the_counts`).
  Correcting over all 2P bounds makes every pixel's lower and upper bound hold at once, so they
  hold in particular for whichever K the data pick. Choosing K on a separate set of copies would
  also be valid but costs more: halving T widens every interval by about sqrt 2, whereas going
  from P + k to 2P bounds shrinks the per-bound error by at most a factor 2, which moves the
  Clopper-Pearson quantiles only logarithmically.
  """
  counts = np.asarray(counts).reshape(-1)
  topk = np.argsort(-counts, kind="stable")[:k]
  if confidence is None:
    estimate = counts / num_samples
    return topk, estimate, estimate
  if not 0 < confidence < 1:
    raise ValueError(f"confidence must be in (0, 1) or None, got {confidence}")
  error = (1.0 - confidence) / (2 * counts.size)  # Bonferroni over a lower and an upper per pixel
  lower, upper = clopper_pearson(counts, num_samples, error)
  return topk, lower, upper


def certify(smoothed: SmoothedMaps, radii: Sequence[float], *, bound: str = "rdp",
            confidence: float | None = 0.999,
            alphas: Sequence[float] | None = None) -> Certificate:
  """The certified fraction of the smoothed map's top-k at each radius (l2, input units)."""
  bound_fn = _bound_fn(bound, alphas)
  k = smoothed.k
  topk, p_low, p_high = _topk_and_bounds(smoothed.topk_counts, smoothed.num_samples, k,
                                         confidence)
  fractions = []
  for radius in radii:
    lower, _ = bound_fn(p_low, float(radius), smoothed.sigma)
    _, upper = bound_fn(p_high, float(radius), smoothed.sigma)
    fractions.append(certified_members(lower, upper, topk, k).mean())
  return Certificate(radii=np.asarray(radii, np.float64), fractions=np.asarray(fractions),
                     bound=bound, confidence=confidence)


def certified_radius(smoothed: SmoothedMaps, fraction: float, *, bound: str = "rdp",
                     confidence: float | None = 0.999, max_radius: float | None = None,
                     tolerance: float = 1e-3, alphas: Sequence[float] | None = None) -> float:
  """The largest radius (to `tolerance`) at which >= `fraction` of the top-k is certified.

  0 when even radius 0 fails (Monte Carlo uncertainty alone). The certified fraction does not
  increase with the radius (both bounds loosen), so bisection finds the boundary.
  """
  if not 0 < fraction <= 1:
    raise ValueError(f"fraction must be in (0, 1], got {fraction}")
  max_radius = 20.0 * smoothed.sigma if max_radius is None else max_radius

  def holds(radius):
    return certify(smoothed, [radius], bound=bound, confidence=confidence,
                   alphas=alphas).fractions[0] >= fraction - 1e-12

  if not holds(0.0):
    return 0.0
  if holds(max_radius):
    return max_radius
  low, high = 0.0, max_radius
  while high - low > tolerance:
    middle = 0.5 * (low + high)
    low, high = (middle, high) if holds(middle) else (low, middle)
  return low


def _bound_fn(bound: str, alphas) -> Callable:
  if bound == "rdp":
    return functools.partial(rdp_bounds, alphas=alphas)
  if bound == "gaussian":
    return gaussian_bounds
  raise ValueError(f"unknown bound {bound!r}; valid: rdp, gaussian")
