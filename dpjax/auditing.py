"""Privacy you can check from outside: membership-inference metrics and epsilon lower bounds.

Tools that score an attack or an audit; they train nothing (the studies that use them train with
the real DP-SGD mechanism, e.g. `experiments/audit`):

  * ROC curves, AUC and the true-positive rate at low false-positive rates (`attack_metrics`).
  * Membership-inference scores: the loss-threshold attack (Yeom et al. 2018) and the
    likelihood-ratio attack (LiRA, Carlini et al. 2022, "Membership inference attacks from first
    principles") from the statistics of a target model and its shadow models, with a
    leave-one-model-out evaluation over many models (`membership_inference`).
  * Epsilon lower bounds: the one-run test of Steinke, Nasr & Jagielski 2023 ("Privacy auditing
    with one (1) training run", Theorem 3 with delta) from canary guesses (`one_run_audit`), and
    the classic many-run bound, TPR <= e^eps FPR + delta, with Clopper-Pearson intervals
    (`epsilon_lower_bound_clopper_pearson`).

A lower bound is only evidence of a bug when it EXCEEDS the claimed epsilon; being far below it
says nothing (final-model audits of Poisson-subsampled DP-SGD are known to be loose).

The membership design (`random_halves`: which examples each model holds) is the auditor's
experiment, not a training's private randomness: it may be a function of a public seed.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special
import scipy.stats

LOW_FPRS = (0.001, 0.01)


# ---------------------------------------------------------------------------------------------
# ROC curves.


def roc_curve(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(fpr, tpr) at every distinct threshold, from (0, 0) to (1, 1); higher score = 'member'."""
  scores = np.asarray(scores, np.float64)
  is_member = np.asarray(is_member, bool)
  if scores.shape != is_member.shape or scores.ndim != 1:
    raise ValueError(f"scores {scores.shape} and is_member {is_member.shape} must be equal 1-D shapes.")
  num_pos, num_neg = int(is_member.sum()), int((~is_member).sum())
  if num_pos == 0 or num_neg == 0:
    raise ValueError(f"a ROC curve needs members and non-members (got {num_pos} and {num_neg}).")
  order = np.argsort(-scores, kind="stable")
  sorted_scores, sorted_members = scores[order], is_member[order]
  # The last index of each run of tied scores: a threshold admits all ties at once.
  last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores)), scores.size - 1]
  tp = np.cumsum(sorted_members)[last_of_tie]
  fp = (last_of_tie + 1) - tp
  return np.r_[0.0, fp / num_neg], np.r_[0.0, tp / num_pos]


def roc_auc(scores: np.ndarray, is_member: np.ndarray) -> float:
  fpr, tpr = roc_curve(scores, is_member)
  return float(np.trapezoid(tpr, fpr))


def tpr_at_fpr(scores: np.ndarray, is_member: np.ndarray, max_fpr: float) -> float:
  """The largest TPR over thresholds whose FPR is at most `max_fpr`."""
  fpr, tpr = roc_curve(scores, is_member)
  return float(tpr[fpr <= max_fpr].max())


def attack_metrics(scores: np.ndarray, is_member: np.ndarray) -> dict:
  metrics = {"auc": roc_auc(scores, is_member)}
  for fpr in LOW_FPRS:
    metrics[f"tpr_at_fpr_{fpr:g}"] = tpr_at_fpr(scores, is_member, fpr)
  metrics["num_members"] = int(np.sum(is_member))
  metrics["num_nonmembers"] = int(np.size(is_member) - np.sum(is_member))
  return metrics


# ---------------------------------------------------------------------------------------------
# Membership inference: loss threshold and LiRA.


def logit_confidence(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """log(p_y / (1 - p_y)) computed stably: LiRA's statistic, roughly Gaussian across models."""
  true_logit = jnp.take_along_axis(logits, labels[..., None], -1)[..., 0]
  others = jnp.where(jax.nn.one_hot(labels, logits.shape[-1], dtype=bool), -jnp.inf, logits)
  return true_logit - jax.nn.logsumexp(others, -1)


def loss_attack_scores(losses: np.ndarray) -> np.ndarray:
  """The loss-threshold attack (Yeom et al. 2018): a low loss means 'member'."""
  return -np.asarray(losses)


def lira_scores(target_stat: np.ndarray, shadow_stats: np.ndarray, shadow_in: np.ndarray, *,
                online: bool = True, min_std: float = 1e-3) -> np.ndarray:
  """LiRA membership scores of one target model's examples (higher = more likely a member).

  Args:
    target_stat: (N,) the statistic (logit confidence) of each example on the target model.
    shadow_stats: (S, N) the same statistic on S shadow models.
    shadow_in: (S, N) bool, whether each shadow model trained on each example.
    online: fit Gaussians to both the IN and OUT shadow statistics and score the log likelihood
      ratio; offline: only OUT models, score the one-sided tail log P[OUT statistic <= observed].
    min_std: floor on the fitted standard deviations (few shadows can give near-zero spread).

  Variances are pooled over examples (Carlini et al.'s "global variance"), which is the more
  reliable choice with few shadow models.
  """
  shadow_stats = np.asarray(shadow_stats, np.float64)
  shadow_in = np.asarray(shadow_in, bool)
  target_stat = np.asarray(target_stat, np.float64)
  out_mean, out_std = _masked_gaussian(shadow_stats, ~shadow_in, min_std)
  in_mean, in_std = _masked_gaussian(shadow_stats, shadow_in, min_std)
  # An example that no shadow holds (or every shadow holds) borrows the average IN-OUT gap.
  both = np.isfinite(in_mean) & np.isfinite(out_mean)
  if not np.any(both):
    raise ValueError("no example has shadow models both with and without it; train more shadows.")
  gap = float(np.mean(in_mean[both] - out_mean[both]))
  out_mean = np.where(np.isfinite(out_mean), out_mean, in_mean - gap)
  in_mean = np.where(np.isfinite(in_mean), in_mean, out_mean + gap)
  if not online:
    return scipy.stats.norm.logcdf(target_stat, out_mean, out_std)
  return (scipy.stats.norm.logpdf(target_stat, in_mean, in_std)
          - scipy.stats.norm.logpdf(target_stat, out_mean, out_std))


def _masked_gaussian(stats: np.ndarray, mask: np.ndarray, min_std: float):
  """Per-example means (NaN where the mask is empty) and one standard deviation pooled over all."""
  counts = mask.sum(0)
  mean = np.where(mask, stats, 0).sum(0) / np.where(counts > 0, counts, np.nan)
  residual = np.where(mask, stats - np.nan_to_num(mean), 0)
  dof = mask.sum() - np.sum(counts > 0)
  pooled_var = (residual ** 2).sum() / max(dof, 1)
  return mean, max(math.sqrt(pooled_var), min_std)


def random_halves(key_seed: int, num_models: int, num_examples: int) -> np.ndarray:
  """(M, N) membership: each model holds exactly half the examples, chosen independently."""
  rng = np.random.default_rng(key_seed)
  membership = np.zeros((num_models, num_examples), bool)
  for m in range(num_models):
    membership[m, rng.permutation(num_examples)[: num_examples // 2]] = True
  return membership


def membership_inference_scores(stats: np.ndarray, losses: np.ndarray, membership: np.ndarray
                                ) -> dict[str, np.ndarray]:
  """Leave-one-model-out scores: each model in turn is the target, the others its shadows.

  Args:
    stats, losses: (M, N) LiRA statistic and loss of every example on every model.
    membership: (M, N) bool.
  Returns the pooled (M * N,) scores of the loss attack and LiRA online and offline, aligned with
  `membership.reshape(-1)`: what `roc_curve` needs to draw each attack's curve. These are
  per-example membership scores of training members: private diagnostics, not for publication
  beside the results (publish `membership_inference`'s metrics).
  """
  num_models = stats.shape[0]
  if num_models < 3:
    raise ValueError(f"membership inference needs at least 3 models (got {num_models}).")
  pooled = {"loss": [], "lira_online": [], "lira_offline": []}
  for target in range(num_models):
    shadows = np.arange(num_models) != target
    pooled["loss"].append(loss_attack_scores(losses[target]))
    for online in (True, False):
      pooled["lira_online" if online else "lira_offline"].append(
          lira_scores(stats[target], stats[shadows], membership[shadows], online=online))
  return {name: np.concatenate(scores) for name, scores in pooled.items()}


def membership_inference(stats: np.ndarray, losses: np.ndarray, membership: np.ndarray) -> dict:
  """Attack metrics (AUC, TPR at FPR 0.1% and 1%) of the loss attack and LiRA online and
  offline, pooled over every target of `membership_inference_scores`."""
  is_member = np.asarray(membership).reshape(-1)
  return {name: attack_metrics(scores, is_member)
          for name, scores in membership_inference_scores(stats, losses, membership).items()}


# ---------------------------------------------------------------------------------------------
# Epsilon lower bounds.


def one_run_p_value(num_canaries: int, num_guesses: int, num_correct: int, epsilon: float,
                    delta: float) -> float:
  """P[>= num_correct right guesses] for an (epsilon, delta)-DP mechanism (Steinke et al. 2023).

  m canaries each included independently with probability 1/2; the auditor makes r guesses and
  abstains on the rest. Theorem 3: the number right is dominated by Binomial(r, e^eps/(1+e^eps))
  up to a delta term, giving P[W >= v] <= beta + alpha * 2 m delta with
  beta = P[Binomial(r, p) >= v] and alpha = max_{i=1..v} P[v - i <= Binomial(r, p) < v] / i.
  """
  m, r, v = num_canaries, num_guesses, num_correct
  if not 0 <= v <= r <= m:
    raise ValueError(f"need 0 <= correct ({v}) <= guesses ({r}) <= canaries ({m}).")
  if epsilon < 0 or not 0 <= delta <= 1:
    raise ValueError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon}, {delta}.")
  p = scipy.special.expit(epsilon)  # accuracy of epsilon-DP randomized response
  beta = scipy.stats.binom.sf(v - 1, r, p)
  alpha = 0.0
  if v > 0 and delta > 0:
    pmf_below = scipy.stats.binom.pmf(np.arange(v - 1, -1, -1), r, p)  # pmf(v-1), ..., pmf(0)
    alpha = float(np.max(np.cumsum(pmf_below) / np.arange(1, v + 1)))
  return float(min(beta + alpha * 2 * m * delta, 1.0))


def one_run_epsilon_lower_bound(num_canaries: int, num_guesses: int, num_correct: int,
                                delta: float, confidence: float = 0.95) -> float:
  """The largest epsilon the guesses reject at `confidence`: the mechanism is not (eps, delta)-DP
  for any smaller eps, except with probability 1 - confidence. 0 when nothing is rejected."""
  alpha = 1 - confidence
  def rejects(eps):
    return one_run_p_value(num_canaries, num_guesses, num_correct, eps, delta) < alpha
  if not rejects(0.0):
    return 0.0
  lo, hi = 0.0, 1.0
  while rejects(hi):
    lo, hi = hi, 2 * hi
    if hi > 1e3:
      return math.inf
  for _ in range(50):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if rejects(mid) else (lo, mid)
  return lo


def one_run_audit(scores: np.ndarray, included: np.ndarray, delta: float, *,
                  confidence: float = 0.95, guess_fractions: Sequence[float] = (0.05, 0.1, 0.2, 0.5, 1.0)
                  ) -> dict:
  """Guesses 'in' for the top k/2 scores and 'out' for the bottom k/2, for k = fraction * m.

  Several k are tried; the confidence is split among them (Bonferroni), so taking the best k
  keeps the stated confidence. Returns the best bound and the guesses that gave it.
  """
  scores = np.asarray(scores, np.float64)
  included = np.asarray(included, bool)
  m = scores.size
  order = np.argsort(-scores, kind="stable")
  per_test_confidence = 1 - (1 - confidence) / len(guess_fractions)
  best = {"epsilon_lower_bound": 0.0, "num_guesses": 0, "num_correct": 0}
  for fraction in guess_fractions:
    k = max(1, int(round(fraction * m / 2)))
    k = min(k, m // 2)
    correct = int(included[order[:k]].sum() + (~included[order[m - k:]]).sum())
    eps = one_run_epsilon_lower_bound(m, 2 * k, correct, delta, per_test_confidence)
    if eps > best["epsilon_lower_bound"] or best["num_guesses"] == 0:
      best = {"epsilon_lower_bound": eps, "num_guesses": 2 * k, "num_correct": correct}
  return {**best, "num_canaries": m, "confidence": confidence, "delta": delta}


def epsilon_lower_bound_clopper_pearson(true_pos: int, false_neg: int, false_pos: int,
                                        true_neg: int, delta: float, confidence: float = 0.95
                                        ) -> float:
  """Epsilon lower bound from a membership test repeated over independent runs.

  (eps, delta)-DP forces TPR <= e^eps FPR + delta and TNR <= e^eps FNR + delta, so
  eps >= log((TPR_lo - delta) / FPR_hi) with one-sided Clopper-Pearson bounds; the two
  directions and two intervals share 1 - confidence (Bonferroni over four bounds).
  """
  alpha = (1 - confidence) / 4
  def lower(k, n):
    return 0.0 if k == 0 else float(scipy.stats.beta.ppf(alpha, k, n - k + 1))
  def upper(k, n):
    return 1.0 if k == n else float(scipy.stats.beta.ppf(1 - alpha, k + 1, n - k))
  positives, negatives = true_pos + false_neg, false_pos + true_neg
  if positives == 0 or negatives == 0:
    raise ValueError("Clopper-Pearson auditing needs runs with and without the canary.")
  bounds = [0.0]
  for hit, hits_of, miss, misses_of in ((true_pos, positives, false_pos, negatives),
                                        (true_neg, negatives, false_neg, positives)):
    rate_lo, other_hi = lower(hit, hits_of), upper(miss, misses_of)
    if rate_lo - delta > 0 and other_hi > 0:
      bounds.append(math.log((rate_lo - delta) / other_hi))
  return max(bounds)
