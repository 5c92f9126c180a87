"""Privacy you can check from outside: membership inference and empirical epsilon lower bounds.

Three tools, all built on the real DP-SGD mechanism (`train.dp_gradient` / `engine.train`):

  * Membership-inference attacks scored by ROC AUC and the true-positive rate at low
    false-positive rates: the loss-threshold attack, and the likelihood-ratio attack (LiRA,
    Carlini et al. 2022, "Membership inference attacks from first principles") with shadow models
    trained in one `vmap`.
  * Canary auditing: `dirac_canary_audit` inserts m input-space "Dirac" canaries (a large input
    along a feature no real example uses, with a random label), includes each with probability
    1/2, trains with `engine.train`, scores each canary by how far the final model moved in its
    direction, and turns the guesses into an epsilon lower bound with the one-run test of Steinke,
    Nasr & Jagielski 2023 ("Privacy auditing with one (1) training run", Theorem 3 with delta).
    A correct mechanism stays at or below the accountant's epsilon with the stated confidence; a
    broken one (clipping or noise off) exceeds it.
  * `epsilon_lower_bound_clopper_pearson`: the classic many-run bound, TPR <= e^eps FPR + delta,
    with Clopper-Pearson intervals.

A lower bound is only evidence of a bug when it EXCEEDS the claimed epsilon; being far below it
says nothing (final-model audits of Poisson-subsampled DP-SGD are known to be loose).

Randomness. The noise and the batches of every audited model come from `dpjax.randomness`: the
operating system's CSPRNG by default (fresh for every model, nothing to keep or leak), or, with
`reproducible_private_randomness`, derived from the seed under a stream name per model, so that
no two models share noise. The membership design (which examples and canaries each model holds,
canary labels) is the auditor's experiment, not the training's private randomness: it stays a
function of the public `seed`. Remaining limits of the noise itself, stated plainly: the
per-model key is 64 bits expanded by threefry (not a vetted CSPRNG) and sits in checkpoints; and
Gaussian samples are float32 values from an inverse-CDF transform, whose uneven low-order bits
can leak the unnoised value (Mironov 2012, "On significance of the least significant bits for
differential privacy"); no mainstream JAX library implements discrete or snapping mechanisms for
DP-SGD, so these limits apply to every JAX DP-SGD implementation we know of.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.stats

from dpjax import accounting
from dpjax import clipping
from dpjax import engine
from dpjax import randomness as randomness_lib
from dpjax import report
from dpjax import sampling
from dpjax import train

PyTree = Any

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


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, labels[..., None], -1)[..., 0]


def init_mlp(key: jax.Array, num_features: int, hidden: int, num_classes: int) -> dict:
  """A one-hidden-layer ReLU network as a plain dict: the small model of audits and CLI checks."""
  k1, k2 = jax.random.split(key)
  return {"w1": jax.random.normal(k1, (num_features, hidden)) / np.sqrt(num_features),
          "b1": jnp.zeros(hidden),
          "w2": jax.random.normal(k2, (hidden, num_classes)) / np.sqrt(hidden),
          "b2": jnp.zeros(num_classes)}


def mlp_logits(params: dict, x: jax.Array) -> jax.Array:
  return jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


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


def train_models(loss_fn: Callable, init_params: PyTree, data: PyTree, membership: np.ndarray, *,
                 optimizer: optax.GradientTransformation, num_steps: int, sampling_rate: float,
                 dp: train.DPConfig | None,
                 randomness: randomness_lib.PrivateRandomness = randomness_lib.SECURE,
                 stream: str = "shadow models") -> PyTree:
  """Trains one model per row of `membership` (M, N) at once (`vmap` over models).

  Each model trains on the examples its row marks, with Poisson sampling at `sampling_rate`
  (each marked example joins each step's batch independently) and, with `dp`, the real DP-SGD
  mechanism `train.dp_gradient`. Model m draws its batches and noise from `randomness` under
  the streams (`stream`, "model m", "sampling"/"noise"): fresh OS randomness by default, or
  reproducible from a secret seed; never shared between models. The membership rows are the
  auditor's design and may be seeded. Every step evaluates the whole dataset under a mask, so
  this is for small data. Returns the parameters stacked along a leading model axis.
  """
  membership = jnp.asarray(membership, bool)
  num_models, num_examples = membership.shape
  if not 0 < sampling_rate <= 1:
    raise ValueError(f"sampling_rate={sampling_rate} must be in (0, 1].")
  data = jax.tree.map(jnp.asarray, data)

  if dp is None:
    def gradient(params, mask, step_key):
      del step_key
      def mean_loss(p):
        losses = jax.vmap(loss_fn, in_axes=(None, 0))(p, data)
        return jnp.sum(jnp.where(mask, losses, 0.0)) / jnp.maximum(jnp.sum(mask), 1)
      return jax.grad(mean_loss)(params)
  else:
    def gradient(params, mask, step_key):
      return train.dp_gradient(loss_fn, params, data, mask, step_key, dp)[0]

  # Why not one `engine.train` per model: the engine builds (and XLA compiles) a fresh step for
  # every call, and with these tiny models the compile dominates. Measured on the 2-core dev box
  # (quick preset's shadow MLPs, 16 models x 300 steps, under load): this vmapped loop 52 s in
  # all, `engine.train` 6-10 s per model (about 2-3x slower; ~1.4 s per model once compiles are
  # cached, so an engine-side cache of compiled steps would make the engine the faster path).
  # The private randomness is the engine's all the same: each model's sampling and noise keys
  # come from `randomness` under its own stream (threefry-expanded inside the jit, as the
  # engine expands its noise key).
  def one_model_step(params, opt_state, member, sample_key, noise_key, step):
    mask = member & jax.random.bernoulli(jax.random.fold_in(sample_key, step), sampling_rate,
                                         (num_examples,))
    grad = gradient(params, mask, jax.random.fold_in(noise_key, step))
    updates, opt_state = optimizer.update(grad, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  @jax.jit
  def run(sample_keys, noise_keys):
    params = jax.tree.map(lambda p: jnp.broadcast_to(p, (num_models,) + p.shape), init_params)
    opt_state = jax.vmap(optimizer.init)(params)

    def body(carry, step):
      params, opt_state = jax.vmap(one_model_step, in_axes=(0, 0, 0, 0, 0, None))(
          *carry, membership, sample_keys, noise_keys, step)
      return (params, opt_state), None
    (params, _), _ = jax.lax.scan(body, (params, opt_state), jnp.arange(num_steps))
    return params

  sample_keys, noise_keys = (
      jnp.stack([randomness.key(stream, f"model {m}", kind) for m in range(num_models)])
      for kind in ("sampling", "noise"))
  return run(sample_keys, noise_keys)


def random_halves(key_seed: int, num_models: int, num_examples: int) -> np.ndarray:
  """(M, N) membership: each model holds exactly half the examples, chosen independently."""
  rng = np.random.default_rng(key_seed)
  membership = np.zeros((num_models, num_examples), bool)
  for m in range(num_models):
    membership[m, rng.permutation(num_examples)[: num_examples // 2]] = True
  return membership


def membership_inference(stats: np.ndarray, losses: np.ndarray, membership: np.ndarray) -> dict:
  """Leave-one-model-out evaluation: each model in turn is the target, the others its shadows.

  Args:
    stats, losses: (M, N) LiRA statistic and loss of every example on every model.
    membership: (M, N) bool.
  Returns attack metrics (AUC, TPR at FPR 0.1% and 1%) of the loss attack and LiRA online and
  offline, pooled over all targets.
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
  is_member = membership.reshape(-1)
  return {name: attack_metrics(np.concatenate(scores), is_member) for name, scores in pooled.items()}


def membership_inference_scores(stats: np.ndarray, losses: np.ndarray, membership: np.ndarray
                                ) -> dict[str, np.ndarray]:
  """The pooled (M * N,) scores behind `membership_inference`, per attack, aligned with
  `membership.reshape(-1)`: what `roc_curve` needs to draw each attack's curve.

  These are per-example membership scores of training members: private diagnostics, not for
  publication beside the results.
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


# ---------------------------------------------------------------------------------------------
# Canary auditing with the real training loop.


@dataclasses.dataclass(frozen=True)
class CanaryAuditConfig:
  """One audited training run: a softmax-linear model on real features plus Dirac canaries.

  `bug` deliberately breaks the mechanism while the ledger still reports the claimed epsilon:
  "none", "no_clip" (clip norm 1e6 with noise still calibrated to clip norm 1: the classic
  "clipping silently off") or "no_noise" (noise multiplier 0).

  `seed` is the auditor's design (canary labels and which canaries are included): public. The
  batches and noise come from the OS CSPRNG unless `reproducible_private_randomness`, which
  derives them from `seed` (then a secret of the training, though the auditor knows it).
  """
  num_canaries: int = 500
  canary_scale: float = 1e4  # the canary's input norm: its gradient always hits the clip
  noise_multiplier: float = 1.0
  clip_norm: float = 1.0
  batch_size: int = 256
  num_steps: int = 200
  learning_rate: float = 1.0
  delta: float = 1e-5
  sampling: str = "poisson"
  accountant: str = "rdp"
  confidence: float = 0.95
  bug: str = "none"
  seed: int = 0
  reproducible_private_randomness: bool = False

  def __post_init__(self):
    if self.bug not in ("none", "no_clip", "no_noise"):
      raise ValueError(f"bug={self.bug!r}: expected 'none', 'no_clip' or 'no_noise'.")
    if self.num_canaries < 2:
      raise ValueError(f"num_canaries={self.num_canaries} must be >= 2.")


def digits_features() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's embedded 8x8 digits as (1797, 64) features in [0, 1] and int labels."""
  from sklearn import datasets  # pylint: disable=import-outside-toplevel
  digits = datasets.load_digits()
  return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int32)


def softmax_linear_loss(params, example):
  x, y = example
  return cross_entropy(x @ params["w"] + params["b"], y)


def dirac_canary_audit(config: CanaryAuditConfig, base_data: tuple[np.ndarray, np.ndarray] | None = None,
                       stream: str = "canary audit") -> dict:
  """Trains once with `engine.train` on real data plus a random half of m canaries; audits it.

  The run's batches and noise come from `randomness_lib.from_flag(
  config.reproducible_private_randomness, config.seed)` under `stream` (give each audited run of
  a study its own).

  Canary j is the input `canary_scale * e_(d + j)` (a feature no real example touches) with a
  random label c_j. Its only trace in the model is row d + j of the weights, so the score
  "how much did row d + j move towards c_j" (w[d+j, c_j] minus the row's mean) is the
  change of the model in the canary's direction, and only noise moves excluded canaries' rows.
  """
  x_real, y_real = digits_features() if base_data is None else base_data
  num_classes = int(y_real.max()) + 1
  rng = np.random.default_rng(config.seed)
  m, d = config.num_canaries, x_real.shape[1]
  canary_labels = rng.integers(num_classes, size=m).astype(np.int32)
  included = rng.random(m) < 0.5

  x_canary = np.zeros((m, d + m), np.float32)
  x_canary[np.arange(m), d + np.arange(m)] = config.canary_scale
  x = np.concatenate([np.pad(x_real, ((0, 0), (0, m))), x_canary[included]])
  y = np.concatenate([y_real, canary_labels[included]])

  claimed_sigma = config.noise_multiplier
  clip_norm, sigma = config.clip_norm, claimed_sigma
  if config.bug == "no_clip":
    clip_norm, sigma = 1e6, claimed_sigma * config.clip_norm / 1e6  # same absolute noise
  elif config.bug == "no_noise":
    sigma = 0.0
  sampler = sampling.BatchSampler(len(x), config.batch_size, config.sampling)
  dp = train.DPConfig(clipping.ClippingConfig(clip_norm), sigma, sampler.expected_batch_size)
  params = {"w": jnp.zeros((d + m, num_classes)), "b": jnp.zeros(num_classes)}
  loop = engine.LoopConfig(num_steps=config.num_steps, delta=config.delta,
                           accountant=config.accountant, log_every=0)
  source = randomness_lib.from_flag(config.reproducible_private_randomness, config.seed)
  result = engine.train(softmax_linear_loss, params, optax.sgd(config.learning_rate), (x, y),
                        sampler=sampler, dp=dp, loop=loop, randomness=source, stream=stream)

  rows = np.asarray(result.state.params["w"])[d:]
  scores = rows[np.arange(m), canary_labels] - rows.mean(1)
  # The claim the auditor checks: what the ledger would say for the intended mechanism.
  claimed = accounting.compute_epsilon(
      [sampler.privacy_phase(claimed_sigma).with_steps(result.ledger.steps)], config.delta,
      config.accountant)
  audit = one_run_audit(scores, included, config.delta, confidence=config.confidence)
  return {**audit, "accountant_epsilon": claimed, "bug": config.bug,
          "noise_multiplier": claimed_sigma, "num_steps": result.ledger.steps,
          "dataset_size": len(x), "canary_auc": roc_auc(scores, included),
          "exceeds_accountant": audit["epsilon_lower_bound"] > claimed}


