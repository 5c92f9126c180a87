"""DP-SGD linear regression on the dpjax core, with the eQTL study's defaults.

The model is y ~ x @ w + b with the per-example loss 0.5 (x @ w + b - y)^2, trained by SGD
(the study: 700 iterations, learning rate 0.025) on privatised gradients: per-example
clipping to `clip_norm`, Gaussian noise of std `noise_multiplier * clip_norm` added once
to the clipped sum (`noise.privatize_sum`), division by the expected batch size.

Batches are the full training set (the study) or Poisson samples drawn by
`sampling.BatchSampler`; the privacy spent is counted by an `accounting.PrivacyLedger` and
reported through `report.release_from_ledger`, as for every run of `dpjax.engine`.

Secret randomness. The noise key and the Poisson batches come from a
`randomness.PrivateRandomness` (the OS CSPRNG by default) under a named `stream`, exactly as
`engine.train` draws them: `randomness.key(stream, "noise")` (step t uses fold_in(key, t)) and
a sampler with `secret_seed=randomness.sampling_seed(stream)`. There is no key or seed
argument: a public seed would let anyone regenerate the noise and subtract it. Give every fit
of a sweep its own stream.

Why a specialised clipped sum. For a linear model the per-example gradient is
r_i [x_i, 1] with residual r_i = x_i @ w + b - y_i, so its norm is |r_i| sqrt(||x_i||^2 + 1)
and the clipped sum is X^T (f * r) with f_i = min(1, C / norm_i): two matrix-vector
products per step instead of the (B, P) per-example gradients that `vmap` materialises
(8000 x 6000 floats at the study's largest size). `linear_clipped_grad_sum` is tested
equal to `clipping.clipped_grad_sum`, which `clip_method="vmap"` uses instead.

Why one jitted scan and not `engine.train`. The engine's host loop dispatches one jitted step
per iteration; measured on a laptop-class CPU (2 cores) a 700-step full-batch fit took 2.4-5 s
on the engine (with the generic vmap clipping, which is all its step offers) against at
most 0.1 s here once compiled (N = 160..1600, P = 10..100), and 73 s against 9 s at
N = 8000, P = 1000. The study fits hundreds of such models (27 rows, sweeps of 6 epsilons x
repeats), so the data go to the device once and all steps run inside one `jax.lax.scan`
(Poisson batches enter as a precomputed (steps, N) mask drawn by the secret sampler on the
host). Everything the engine owns for privacy is taken from the same places as the engine:
the randomness (above), the ledger, the release entry, `steps_for_epochs`. There is no
checkpointing: a run takes seconds. Moving onto the engine would need a way to plug this
clipped sum in as the step's per-example function and a device-side multi-step loop.

The ridge penalty (ridge/2) ||w||^2 has a gradient that does not depend on the data, so it
is added after the noise, unclipped, at no privacy cost. The intercept is not penalised.

Default clip norm. Features standardised per SNP have E ||x||^2 = P, so
C = sqrt(P + 1) (with intercept) clips the examples whose residual exceeds about one
standard deviation of a standardised y. It depends only on the public P.

What is private in a fit. `coef`, `intercept` and everything computed from them on held-out
data are DP outputs. `private_diagnostics` (training loss and clipped fraction per step,
non-finite counts) are unnoised statistics of the training batches: keep them under a
run's `private/` folder, never in a released table.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax import accounting
from dpjax import clipping
from dpjax import engine
from dpjax import noise
from dpjax import randomness as randomness_lib
from dpjax import report
from dpjax import sampling
from dpjax import train

CLIP_METHODS = ("linear", "vmap")
SAMPLINGS = ("full", "poisson")


@dataclasses.dataclass(frozen=True)
class DPLinearConfig:
  """Settings of one DP-SGD linear regression.

  Attributes:
    steps, learning_rate: SGD iterations and step size (the study: 700 and 0.025).
    epochs: when given, the run has `sampling.steps_for_epochs(epochs, N, B)` steps instead
      of `steps` (the one rule that turns epochs into steps).
    sampling: "full" (every step uses all samples; the study) or "poisson".
    batch_size: expected Poisson batch size (ignored for "full").
    noise_multiplier: noise std / clip norm; 0 is non-private. Ignored when
      `target_epsilon` is given.
    target_epsilon: calibrate the noise multiplier so that the run spends at most this.
    delta: None picks min(1e-5, 0.1 / N), below 1/N as it should be.
    clip_norm: per-example L2 bound; None picks `default_clip_norm(P)`; math.inf (only
      with zero noise) disables clipping.
    ridge: L2 penalty (ridge/2) ||w||^2, added after the noise (no privacy cost).
    fit_intercept: learn b (its gradient is part of the clipped per-example gradient).
    accountant: "rdp" or "pld".
    clip_method: "linear" (the two-matvec clipped sum) or "vmap" (the core's generic one).
  """
  steps: int = 700
  learning_rate: float = 0.025
  epochs: float | None = None
  sampling: str = "full"
  batch_size: int | None = None
  noise_multiplier: float = 0.5
  target_epsilon: float | None = None
  delta: float | None = None
  clip_norm: float | None = None
  ridge: float = 0.0
  fit_intercept: bool = True
  accountant: str = "rdp"
  clip_method: str = "linear"

  def validate(self) -> None:
    if not (isinstance(self.steps, int) and self.steps >= 1):
      raise ValueError(f"steps={self.steps} must be an integer >= 1.")
    if self.epochs is not None and not (math.isfinite(self.epochs) and self.epochs > 0):
      raise ValueError(f"epochs={self.epochs} must be a finite number > 0.")
    if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
      raise ValueError(f"learning_rate={self.learning_rate} must be a finite number > 0.")
    if self.sampling not in SAMPLINGS:
      raise ValueError(f"sampling={self.sampling!r} must be one of {SAMPLINGS}.")
    if self.sampling == "poisson" and (self.batch_size is None or self.batch_size < 1):
      raise ValueError("sampling='poisson' needs batch_size >= 1 (the expected batch size).")
    if self.target_epsilon is None and not (self.noise_multiplier >= 0
                                            and math.isfinite(self.noise_multiplier)):
      raise ValueError(f"noise_multiplier={self.noise_multiplier} must be finite and >= 0.")
    if self.target_epsilon is not None and not self.target_epsilon > 0:
      raise ValueError(f"target_epsilon={self.target_epsilon} must be > 0 (math.inf: no noise).")
    if self.delta is not None and not 0 < self.delta < 1:
      raise ValueError(f"delta={self.delta} must be in (0, 1).")
    if self.clip_norm is not None and not self.clip_norm > 0:
      raise ValueError(f"clip_norm={self.clip_norm} must be > 0.")
    if not (self.ridge >= 0 and math.isfinite(self.ridge)):
      raise ValueError(f"ridge={self.ridge} must be finite and >= 0.")
    if self.accountant not in accounting.ACCOUNTANTS:
      raise ValueError(f"accountant={self.accountant!r} must be one of {accounting.ACCOUNTANTS}.")
    if self.clip_method not in CLIP_METHODS:
      raise ValueError(f"clip_method={self.clip_method!r} must be one of {CLIP_METHODS}.")


@dataclasses.dataclass(frozen=True)
class DPLinearFit:
  """A DP-SGD linear fit and what it cost.

  Attributes:
    coef, intercept: the learned w (P,) and b: DP outputs.
    epsilon, delta: the privacy spent, from the run's ledger (inf without noise).
    noise_multiplier, clip_norm, steps, accountant: the values actually used (after
      calibration/defaults).
    ledger: the `accounting.PrivacyLedger` of the run.
    private_diagnostics: PRIVATE, unnoised statistics of the training batches: "loss" and
      "clipped_fraction" (per step, of the examples in each step's batch) and
      "num_nonfinite". Never release them (see the module docstring).
  """
  coef: np.ndarray
  intercept: float
  epsilon: float
  delta: float
  noise_multiplier: float
  clip_norm: float
  steps: int
  accountant: str
  ledger: accounting.PrivacyLedger
  private_diagnostics: dict[str, np.ndarray]

  def predict(self, x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64) @ self.coef + self.intercept

  def release(self, name: str, files: list[str]) -> dict:
    """The privacy-report entry of an output computed from this fit (`report.write_privacy_report`)."""
    return report.release_from_ledger(name, files, self.ledger, self.delta, self.accountant,
                                      clip_norm=self.clip_norm)


def default_delta(num_samples: int) -> float:
  """min(1e-5, 0.1 / N): below 1/N, so that no example can be released outright."""
  return min(1e-5, 0.1 / num_samples)


def default_clip_norm(num_features: int, fit_intercept: bool = True) -> float:
  """sqrt(P + 1): a residual of about one sd times the typical ||[x, 1]|| (module docstring)."""
  return math.sqrt(num_features + (1 if fit_intercept else 0))


def linear_loss(params: dict[str, jax.Array], example: dict[str, jax.Array]) -> jax.Array:
  """0.5 (x @ w + b - y)^2 for one example (the core's per-example loss convention)."""
  prediction = example["x"] @ params["w"] + params.get("b", 0.0)
  return 0.5 * jnp.square(prediction - example["y"])


def linear_clipped_grad_sum(params, x, y, mask, clip_norm,
                            row_norms_sq=None) -> tuple[dict, clipping.ClipMetrics]:
  """`clipping.clipped_grad_sum(linear_loss, ...)` for the linear model, in two matvecs.

  Args:
    params: {"w": (P,), optionally "b": ()}.
    x, y, mask: (B, P), (B,), (B,) bool; masked-out rows contribute zero.
    clip_norm: the per-example L2 bound (inf: no clipping).
    row_norms_sq: ||x_i||^2, precomputed once per data set (computed here when None).
  """
  if row_norms_sq is None:
    row_norms_sq = jnp.sum(jnp.square(x), axis=1)
  residual = x @ params["w"] + params.get("b", 0.0) - y
  feature_norm = jnp.sqrt(row_norms_sq + (1.0 if "b" in params else 0.0))
  norms = jnp.abs(residual) * feature_norm
  losses = 0.5 * jnp.square(residual)
  finite = jnp.isfinite(norms) & jnp.isfinite(losses)
  keep = mask & finite
  factors = clipping.clip_factor(norms, clip_norm)
  weights = jnp.where(keep, factors * residual, 0.0)
  safe_x = jnp.where(keep[:, None], x, 0.0)  # a NaN row must not reach the sum (0 * nan = nan)
  summed = {"w": weights @ safe_x}
  if "b" in params:
    summed["b"] = jnp.sum(weights)
  zero = jnp.zeros((), jnp.float32)
  metrics = clipping.ClipMetrics(
      num_examples=jnp.sum(mask).astype(jnp.float32),
      num_clipped=jnp.sum(keep & (norms > clip_norm)).astype(jnp.float32),
      num_nonfinite=jnp.sum(mask & ~finite).astype(jnp.float32),
      norm_sum=jnp.sum(jnp.where(keep, norms, zero)),
      loss_sum=jnp.sum(jnp.where(keep, losses, zero)))
  return summed, metrics


def _step_masks(sampler: sampling.BatchSampler, steps: int) -> np.ndarray | None:
  """(steps, N) bool Poisson memberships drawn by the secret sampler; None for full batches.

  The masks are as secret as the noise: they never leave this function's caller.
  """
  if sampler.sampling == "full":
    return None
  masks = np.zeros((steps, sampler.dataset_size), bool)
  for t in range(steps):
    batch = sampler.batch(t)
    masks[t, batch.indices[batch.mask]] = True
  return masks


def _gradient_fn(clip_method: str, ridge: float, privacy):
  """`gradient(params, x, y, row_norms_sq, mask, key, traced_privacy) -> (grad, metrics)`.

  For "linear", the noise std, clip norm and expected batch size are traced arguments
  (`traced_privacy`), so one compilation serves every privacy setting. The core's
  generic path ("vmap") validates them in Python, so they are compile-time constants
  (`privacy`) there.
  """
  def gradient(params, x, y, row_norms_sq, mask, key, traced_privacy):
    if clip_method == "linear":
      noise_std, clip_norm, expected_batch_size = traced_privacy
      summed, metrics = linear_clipped_grad_sum(params, x, y, mask, clip_norm, row_norms_sq)
      # privatize_sum adds noise_multiplier * sensitivity * N(0, 1); passing the std as the
      # sensitivity with multiplier 1 keeps it traced (a zero std adds exactly zero).
      grad = noise.privatize_sum(key, summed, noise_multiplier=1.0, sensitivity=noise_std,
                                 expected_batch_size=expected_batch_size, mechanism="gaussian")
    else:
      noise_multiplier, clip_norm, expected_batch_size = privacy
      dp_config = train.DPConfig(clipping=clipping.ClippingConfig(clip_norm=clip_norm),
                                 noise_multiplier=noise_multiplier,
                                 expected_batch_size=expected_batch_size)
      grad, metrics = train.dp_gradient(linear_loss, params, {"x": x, "y": y}, mask, key,
                                        dp_config)
    if ridge:
      grad = dict(grad, w=grad["w"] + ridge * params["w"])
    return grad, metrics
  return gradient


@functools.lru_cache(maxsize=64)
def _compiled_run(steps: int, learning_rate: float, ridge: float, clip_method: str,
                  privacy: tuple[float, float, float] | None):
  """A jitted `run(params, x, y, masks, key, traced_privacy) -> (params, history)`.

  Cached, so repeated fits (rows of a table, tests) with the same static settings
  compile once per shape.
  """
  optimizer = optax.sgd(learning_rate)
  gradient = _gradient_fn(clip_method, ridge, privacy)

  def run(params, x, y, masks, key, traced_privacy):
    row_norms_sq = jnp.sum(jnp.square(x), axis=1)
    full_mask = jnp.ones(x.shape[0], bool)

    def body(carry, inputs):
      params, opt_state = carry
      t, mask = inputs
      mask = full_mask if mask is None else mask
      grad, metrics = gradient(params, x, y, row_norms_sq, mask, jax.random.fold_in(key, t),
                               traced_privacy)
      updates, opt_state = optimizer.update(grad, opt_state, params)
      count = jnp.maximum(metrics.num_examples, 1.0)
      return ((optax.apply_updates(params, updates), opt_state),
              (metrics.loss_sum / count, metrics.num_clipped / count, metrics.num_nonfinite))

    (params, _), history = jax.lax.scan(
        body, (params, optimizer.init(params)), (jnp.arange(steps), masks))
    return params, history

  return jax.jit(run)


def resolve_privacy(config: DPLinearConfig, num_samples: int, num_features: int
                    ) -> tuple[sampling.BatchSampler, int, float, float, float]:
  """(sampler, steps, noise multiplier, clip norm, delta) after defaults and calibration.

  The sampler has no secret seed yet: `dp_linear_regression` sets it from its randomness.
  """
  delta = default_delta(num_samples) if config.delta is None else config.delta
  clip_norm = (default_clip_norm(num_features, config.fit_intercept)
               if config.clip_norm is None else config.clip_norm)
  sampler = sampling.BatchSampler(
      dataset_size=num_samples,
      batch_size=num_samples if config.sampling == "full" else config.batch_size,
      sampling=config.sampling)
  steps = config.steps if config.epochs is None else sampler.steps_for_epochs(config.epochs)
  noise_multiplier = config.noise_multiplier
  if config.target_epsilon is not None:
    if math.isinf(config.target_epsilon):
      noise_multiplier = 0.0
    else:
      phase = sampler.privacy_phase(1.0).with_steps(steps)
      noise_multiplier = accounting.calibrate_noise_multiplier(
          config.target_epsilon, delta, phase, config.accountant)
  if noise_multiplier > 0 and not math.isfinite(clip_norm):
    raise ValueError("noise needs a finite clip_norm: with clip_norm=inf the sum is unbounded.")
  return sampler, steps, noise_multiplier, clip_norm, delta


def _refuse_old_arguments(x, config) -> None:
  """A clear error for the former `dp_linear_regression(key, x, y, config, seed=...)` calls."""
  if not isinstance(config, DPLinearConfig):
    raise TypeError(
        "dp_linear_regression(x, y, config, *, randomness=..., stream=...) takes no key any more "
        f"(got {type(config).__name__} as config): its noise and batches come from `randomness` "
        "(the OS CSPRNG by default; randomness.PrivateRandomness(secret_seed=...) to reproduce).")
  if np.ndim(x) != 2:
    raise ValueError(f"x must be (N, P); got shape {np.shape(x)} (a key as first argument? the "
                     "noise now comes from randomness=).")


def dp_linear_regression(x: np.ndarray, y: np.ndarray,
                         config: DPLinearConfig = DPLinearConfig(), *,
                         randomness: randomness_lib.PrivateRandomness = randomness_lib.SECURE,
                         stream: str = "dp linear regression") -> DPLinearFit:
  """Fits y ~ x @ w + b by DP-SGD from w = 0, b = 0.

  Args:
    x, y: (N, P) features and (N,) targets (host arrays; copied to the device once).
    config: see `DPLinearConfig`.
    randomness: the source of the noise and of the Poisson batches (OS CSPRNG by default).
    stream: the name of this fit's randomness; give every fit of a sweep its own.

  Returns:
    A `DPLinearFit`; its epsilon is the ledger's for the steps run, at its delta.

  Raises:
    ValueError: on bad shapes, non-finite data or settings; FloatingPointError when the
      loss diverges (lower the learning rate).
  """
  _refuse_old_arguments(x, config)
  config.validate()
  x = np.asarray(x, dtype=np.float32)
  y = np.asarray(y, dtype=np.float32)
  if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
    raise ValueError(f"x must be (N, P) and y (N,) with N >= 1; got x {x.shape}, y {y.shape}.")
  engine.check_finite_data({"x": x, "y": y})
  num_samples, num_features = x.shape
  sampler, steps, noise_multiplier, clip_norm, delta = resolve_privacy(
      config, num_samples, num_features)
  # The same draws as `engine.train` makes for a stream: secret batches and a secret noise key.
  sampler = dataclasses.replace(sampler, secret_seed=randomness.sampling_seed(stream))
  noise_key = randomness.key(stream, "noise")
  ledger = accounting.PrivacyLedger()
  ledger.begin(sampler.privacy_phase(noise_multiplier))

  params = {"w": jnp.zeros(num_features, jnp.float32)}
  if config.fit_intercept:
    params["b"] = jnp.zeros((), jnp.float32)
  expected_batch_size = sampler.expected_batch_size
  privacy = (float(noise_multiplier), float(clip_norm), expected_batch_size)
  run = _compiled_run(steps, config.learning_rate, config.ridge, config.clip_method,
                      privacy if config.clip_method == "vmap" else None)
  noise_std = noise_multiplier * clip_norm if noise_multiplier else 0.0
  traced_privacy = tuple(jnp.asarray(v, jnp.float32)
                         for v in (noise_std, clip_norm, expected_batch_size))
  masks = _step_masks(sampler, steps)
  params, (loss, clipped_fraction, nonfinite) = run(
      params, jnp.asarray(x), jnp.asarray(y), None if masks is None else jnp.asarray(masks),
      noise_key, traced_privacy)
  ledger.record(steps)
  loss, coef = np.asarray(loss), np.asarray(params["w"], np.float64)
  nonfinite = np.asarray(nonfinite)
  if not (np.isfinite(loss[-1]) and np.all(np.isfinite(coef)) and not nonfinite[-1]):
    raise FloatingPointError(
        "DP-SGD linear regression diverged (non-finite training loss or coefficients); lower "
        f"learning_rate={config.learning_rate} or standardise the features.")
  epsilon = ledger.epsilon(delta, config.accountant) if noise_multiplier > 0 else math.inf
  return DPLinearFit(
      coef=coef,
      intercept=float(params["b"]) if config.fit_intercept else 0.0,
      epsilon=epsilon, delta=delta, noise_multiplier=float(noise_multiplier),
      clip_norm=float(clip_norm), steps=steps, accountant=config.accountant, ledger=ledger,
      private_diagnostics={"loss": loss, "clipped_fraction": np.asarray(clipped_fraction),
                           "num_nonfinite": nonfinite})


def summary(fit: DPLinearFit) -> dict[str, Any]:
  """The public scalars of a fit (privacy parameters), for logs and tables."""
  return {"epsilon": fit.epsilon, "delta": fit.delta, "noise_multiplier": fit.noise_multiplier,
          "clip_norm": fit.clip_norm, "steps": fit.steps}


def private_summary(fit: DPLinearFit) -> dict[str, Any]:
  """The final unnoised training statistics of a fit: for `<workdir>/private/` only."""
  diagnostics = fit.private_diagnostics
  return {"final_loss": float(diagnostics["loss"][-1]),
          "final_clipped_fraction": float(diagnostics["clipped_fraction"][-1]),
          "final_num_nonfinite": int(diagnostics["num_nonfinite"][-1])}
