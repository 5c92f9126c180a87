"""Closed-form linear regression baselines: OLS/ridge, R2, and AdaSSP (DP).

Host-side NumPy, float64. These are the references the DP-SGD regression is judged by.

Privacy analysis of AdaSSP (Wang 2018, "Revisiting differentially private linear
regression: optimal and adaptive prediction & estimation in unbounded domain", Alg. 2)
------------------------------------------------------------------------------------
Neighbouring data sets differ by adding or removing one sample (x_i, y_i).

1. Public bounds. Each row is scaled down to ||x_i||_2 <= x_bound and each target
   clipped to |y_i| <= y_bound. The bounds must be chosen without looking at the data.
   With an intercept a constant feature 1 is appended after clipping, so the rows of the
   design satisfy ||x_i|| <= B = sqrt(x_bound^2 + 1) (B = x_bound without intercept).
2. Three releases, each a Gaussian mechanism with L2 sensitivity Delta_k:
   * lambda_min(X^T X): adding a row adds x x^T (PSD, operator norm ||x||^2), so by
     Weyl's inequality lambda_min moves by at most B^2.  Delta = B^2.
   * X^T X, released as its d(d+1)/2 upper-triangle entries (the noise is symmetric):
     they change by those of x x^T, whose L2 norm is at most ||x x^T||_F = ||x||^2.
     Delta = B^2.
   * X^T y: changes by y x, of norm at most B y_bound.  Delta = B y_bound.
3. Calibration. The noise standard deviation is sigma_k = Delta_k * s, with s the exact
   smallest noise of the analytic Gaussian mechanism (Balle & Wang 2018, computed by
   `dp_accounting.get_sigma_gaussian`, rounded up by the root finder's tolerance):
   * budget_split="thirds" (Wang's algorithm): s = s(eps/3, delta/3) for each release;
     basic composition gives (eps, delta)-DP.
   * budget_split="joint": s_k = sqrt(3) s(eps, delta). Gaussian mechanisms compose
     exactly as one Gaussian with ratio sqrt(sum_k (Delta_k / sigma_k)^2) (Gaussian DP,
     Dong, Roth & Su 2022) = 1 / s(eps, delta), so the three releases together are exactly
     (eps, delta)-DP, with about half the noise of "thirds" at eps = 1, delta = 1e-5.
4. Everything else is post-processing of the noisy releases and public numbers: the
   ridge lambda = max(0, sigma_XX sqrt(d log(2 d^2 / rho)) - lambda_min_private), with
   lambda_min_private = max(0, lambda_min + sigma_lambda (Z - sqrt(log(6 / delta)))),
   and theta = (noisy X^T X + lambda I)^-1 noisy X^T y. With Wang's calibration these are
   exactly his formulas; written in terms of sigma they keep their meaning (noisy
   X^T X + lambda I is positive definite with probability >= 1 - rho, and
   lambda_min_private <= lambda_min with high probability) under any calibration.

Secret randomness. The noise comes from a `randomness.PrivateRandomness` (the OS CSPRNG by
default) under a named stream: `adassp_fit` takes no key or seed, since anyone holding a
public seed could regenerate the noise and subtract it. `private_sufficient_statistics`
takes a NumPy Generator that must itself be secret (`randomness.numpy_rng(stream)`).

Not covered by the guarantee: how the features were standardised (see
dpjax/data/eqtl.py), the choice of bounds if it looked at the data, and floating-point
attacks on Gaussian sampling (ignored here as in most research code). Under replace-one
adjacency a replacement is a removal plus an addition: the guarantee is that of a group
of two.
"""

import dataclasses
import math
from typing import Any, Literal
import warnings

from absl import logging
import dp_accounting
import numpy as np
import scipy.linalg

from dpjax import randomness as randomness_lib
from dpjax import report

BudgetSplit = Literal["thirds", "joint"]
_SIGMA_TOLERANCE = 1e-12


@dataclasses.dataclass(frozen=True)
class LinearFit:
  """A fitted linear model y ~ x @ coef + intercept.

  Attributes:
    coef: (p,) coefficients.
    intercept: the constant term (0.0 when not fitted).
    underdetermined: True when OLS had fewer independent directions than features and
      returned the minimum-norm solution.
    warning: a sentence for logs and reports, or None.
    details: method-specific numbers (ridge lambda, noise stds, privacy parameters).
  """
  coef: np.ndarray
  intercept: float
  underdetermined: bool = False
  warning: str | None = None
  details: dict[str, Any] = dataclasses.field(default_factory=dict)

  def predict(self, x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64) @ self.coef + self.intercept


def _as_float_arrays(x, y, what: str) -> tuple[np.ndarray, np.ndarray]:
  """x as (n, p) and y as (n,) float64, finite, with matching n."""
  x = np.asarray(x, dtype=np.float64)
  y = np.asarray(y, dtype=np.float64)
  if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
    raise ValueError(f"{what}: x must be (n, p) and y (n,) with the same n; got x {x.shape}, "
                     f"y {y.shape}.")
  if x.shape[0] == 0:
    raise ValueError(f"{what}: no samples.")
  if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
    raise ValueError(f"{what}: x or y has NaN/inf values; impute or drop them first.")
  return x, y


# ----------------------------------------------------------------------------
# Non-private regression and metrics


def _solve_well_conditioned(gram: np.ndarray, rhs: np.ndarray,
                            min_rcond: float = 1e-10) -> np.ndarray | None:
  """Cholesky solve of gram @ coef = rhs, or None when gram is singular or ill-conditioned.

  The normal equations are ~20x faster than an SVD least-squares at N=4000, P=3000, but
  square the condition number; below `min_rcond` (cond(X) above ~1e5) the caller falls
  back to lstsq.
  """
  try:
    factor, lower = scipy.linalg.cho_factor(gram, lower=True, check_finite=False)
  except np.linalg.LinAlgError:
    return None
  rcond, info = scipy.linalg.lapack.dpocon(factor, np.linalg.norm(gram, 1), uplo="L")
  if info != 0 or not rcond > min_rcond:
    return None
  return scipy.linalg.cho_solve((factor, lower), rhs, check_finite=False)


def ols_fit(x: np.ndarray, y: np.ndarray, fit_intercept: bool = True,
            ridge: float = 0.0) -> LinearFit:
  """Least squares (ridge > 0: ridge regression), closed form, intercept not penalised.

  With an intercept, x and y are centred first (as scikit-learn does). A well-conditioned
  system is solved through the normal equations (Cholesky); otherwise `lstsq`, so a
  rank-deficient design (P >= N, collinear SNPs) does not crash: it returns the
  minimum-norm solution with `underdetermined=True` and a warning sentence.
  """
  x, y = _as_float_arrays(x, y, "ols_fit")
  if ridge < 0:
    raise ValueError(f"ridge={ridge} must be >= 0.")
  n, p = x.shape
  x_mean = x.mean(axis=0) if fit_intercept else np.zeros(p)
  y_mean = y.mean() if fit_intercept else 0.0
  x_centred, y_centred = x - x_mean, y - y_mean
  warning = None
  coef = None
  if ridge > 0 or n > p:
    coef = _solve_well_conditioned(
        x_centred.T @ x_centred + ridge * np.eye(p), x_centred.T @ y_centred)
    rank = p
  if coef is None:
    coef, _, rank, _ = np.linalg.lstsq(x_centred, y_centred, rcond=None)
  if rank < p:
    warning = (
        f"OLS is under-determined: the {'centred ' if fit_intercept else ''}design has rank "
        f"{rank} < p={p} features (n={n} samples); returned the minimum-norm least-squares "
        "solution, which fits the training data exactly when rank = n - 1. Use ridge > 0 or "
        "fewer SNPs for a meaningful fit.")
    logging.warning(warning)
  return LinearFit(coef=coef, intercept=float(y_mean - x_mean @ coef),
                   underdetermined=rank < p, warning=warning,
                   details={"rank": int(rank), "ridge": ridge})


def r2_score(y: np.ndarray, y_pred: np.ndarray) -> float:
  """1 - SS_res / SS_tot; NaN when y is constant (SS_tot = 0, R2 undefined)."""
  y = np.asarray(y, dtype=np.float64)
  y_pred = np.asarray(y_pred, dtype=np.float64)
  if y.shape != y_pred.shape:
    raise ValueError(f"r2_score: y {y.shape} and y_pred {y_pred.shape} differ in shape.")
  total = np.sum((y - y.mean()) ** 2)
  if total == 0:
    return float("nan")
  return float(1.0 - np.sum((y - y_pred) ** 2) / total)


def adjusted_r2_undefined_reason(n: int, p: int) -> str | None:
  """Why adjusted R2 is undefined for n samples and p features, or None when defined."""
  if n - p - 1 <= 0:
    return f"adjusted R2 needs n - p - 1 > 0; n={n}, p={p} gives {n - p - 1}"
  return None


def adjusted_r2(r2: float, n: int, p: int) -> float:
  """1 - (1 - R2)(n - 1) / (n - p - 1), n the samples R2 was measured on, p the features.

  NaN when n - p - 1 <= 0 (the correction would divide by zero or flip sign);
  `adjusted_r2_undefined_reason` gives the sentence to report.
  """
  if adjusted_r2_undefined_reason(n, p) is not None:
    return float("nan")
  return float(1.0 - (1.0 - r2) * (n - 1) / (n - p - 1))


# ----------------------------------------------------------------------------
# Gaussian mechanism and clipping


def gaussian_noise_std(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
  """Smallest noise std making one Gaussian release (epsilon, delta)-DP (analytic, exact).

  The Balle & Wang (2018) condition
    delta >= Phi(D/(2s) - eps s/D) - e^eps Phi(-D/(2s) - eps s/D),  D = sensitivity,
  solved by dp_accounting, then rounded up by the solver's tolerance so that the result
  is never on the wrong side. Valid for every epsilon > 0 (the classical
  sqrt(2 ln(1.25/delta)) / eps bound needs eps < 1). Returns 0 for epsilon = inf.
  """
  if not epsilon > 0:
    raise ValueError(f"epsilon={epsilon} must be > 0 (inf for no privacy).")
  if not 0 < delta < 1:
    raise ValueError(f"delta={delta} must be in (0, 1).")
  if not sensitivity > 0:
    raise ValueError(f"sensitivity={sensitivity} must be > 0.")
  if math.isinf(epsilon):
    return 0.0
  ratio = dp_accounting.get_sigma_gaussian(epsilon, delta, tol=_SIGMA_TOLERANCE)
  return sensitivity * (ratio * (1 + 1e-12) + 2 * _SIGMA_TOLERANCE)


def clip_rows(x: np.ndarray, bound: float) -> np.ndarray:
  """Scales each row down to L2 norm <= bound; shorter rows are unchanged."""
  if not bound > 0:
    raise ValueError(f"row bound={bound} must be > 0.")
  x = np.asarray(x, dtype=np.float64)
  norms = np.linalg.norm(x, axis=1, keepdims=True)
  return x * np.minimum(1.0, bound / np.maximum(norms, np.finfo(np.float64).tiny))


def clip_targets(y: np.ndarray, bound: float) -> np.ndarray:
  """Clips each target to [-bound, bound]."""
  if not bound > 0:
    raise ValueError(f"target bound={bound} must be > 0.")
  return np.clip(np.asarray(y, dtype=np.float64), -bound, bound)


# ----------------------------------------------------------------------------
# AdaSSP


def adassp_sensitivities(row_bound: float, y_bound: float) -> dict[str, float]:
  """Add/remove-one L2 sensitivities of the three AdaSSP releases (module docstring)."""
  return {"lambda_min": row_bound**2, "xtx": row_bound**2, "xty": row_bound * y_bound}


def adassp_noise_stds(epsilon: float, delta: float, row_bound: float, y_bound: float,
                      budget_split: BudgetSplit = "thirds") -> dict[str, float]:
  """Noise std of each AdaSSP release for an (epsilon, delta) total budget."""
  sensitivities = adassp_sensitivities(row_bound, y_bound)
  if budget_split == "thirds":
    per_unit = gaussian_noise_std(epsilon / 3, delta / 3)
  elif budget_split == "joint":
    per_unit = math.sqrt(len(sensitivities)) * gaussian_noise_std(epsilon, delta)
  else:
    raise ValueError(f"budget_split={budget_split!r} must be 'thirds' or 'joint'.")
  return {name: per_unit * value for name, value in sensitivities.items()}


@dataclasses.dataclass(frozen=True)
class PrivateStatistics:
  """The noisy releases of AdaSSP and the ridge lambda derived from them."""
  xtx: np.ndarray
  xty: np.ndarray
  lambda_min: float
  ridge_lambda: float


def _smallest_eigenvalue_of_gram(gram: np.ndarray, num_rows: int) -> float:
  """lambda_min of X^T X, exactly (LAPACK), since the Weyl sensitivity bound is for it.

  With fewer rows than columns X^T X is singular, so 0 without the O(d^3) solve. An
  eigensolver can return -1e-13 for a PSD matrix; the true value is >= 0.
  """
  if num_rows < gram.shape[0]:
    return 0.0
  smallest = scipy.linalg.eigh(gram, eigvals_only=True, subset_by_index=[0, 0],
                              check_finite=False)[0]
  return max(float(smallest), 0.0)


def private_sufficient_statistics(
    rng: np.random.Generator,
    x: np.ndarray,
    y: np.ndarray,
    noise_stds: dict[str, float],
    delta: float,
    rho: float = 0.05,
) -> PrivateStatistics:
  """AdaSSP steps 1-5 on an already clipped design x (n, d) and targets y (n,).

  `rng` draws the noise: it must be secret (`randomness.numpy_rng(stream)`), never seeded
  with a released number.
  """
  d = x.shape[1]
  xtx, xty = x.T @ x, x.T @ y
  lambda_min = _smallest_eigenvalue_of_gram(xtx, num_rows=x.shape[0])
  # Shift by a high-probability bound of the noise so the released value rarely exceeds
  # the truth: an over-estimate would under-regularise an ill-conditioned system.
  lambda_noise = noise_stds["lambda_min"] * (rng.standard_normal() - math.sqrt(math.log(6 / delta)))
  lambda_min_private = max(lambda_min + lambda_noise, 0.0)
  ridge_lambda = max(
      0.0, noise_stds["xtx"] * math.sqrt(d * math.log(2 * d**2 / rho)) - lambda_min_private)
  upper = np.triu(rng.standard_normal((d, d)))
  symmetric_noise = upper + np.triu(upper, 1).T
  xty_noise = rng.standard_normal(d)
  return PrivateStatistics(
      xtx=xtx + noise_stds["xtx"] * symmetric_noise,
      xty=xty + noise_stds["xty"] * xty_noise,
      lambda_min=lambda_min_private,
      ridge_lambda=ridge_lambda)


def _solve_symmetric(matrix: np.ndarray, rhs: np.ndarray) -> np.ndarray:
  """Solves a symmetric system (LDL^T); lstsq when singular or ill-conditioned.

  At epsilon = inf with P >= N the system is singular and lstsq's minimum-norm
  solution is the OLS one; otherwise LDL^T is ~10x faster than lstsq's SVD at P = 6000.
  """
  with warnings.catch_warnings():
    warnings.simplefilter("error", scipy.linalg.LinAlgWarning)
    try:
      return scipy.linalg.solve(matrix, rhs, assume_a="sym", check_finite=False)
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgWarning):
      return np.linalg.lstsq(matrix, rhs, rcond=None)[0]


def _refuse_public_rng(x) -> None:
  """A clear error for the former `adassp_fit(key_or_rng, x, y, ...)` calls."""
  dtype = str(getattr(x, "dtype", ""))
  looks_like_key = "key" in dtype or (dtype == "uint32" and np.shape(x) == (2,))
  if isinstance(x, (np.random.Generator, int, np.integer)) or looks_like_key:
    raise TypeError(
        "adassp_fit(x, y, epsilon, delta, x_bound, y_bound, *, randomness=..., stream=...) takes "
        "no key, seed or rng any more: its noise comes from `randomness` (the OS CSPRNG by "
        "default; randomness.PrivateRandomness(secret_seed=...) to reproduce).")


def adassp_fit(
    x: np.ndarray,
    y: np.ndarray,
    epsilon: float,
    delta: float,
    x_bound: float,
    y_bound: float,
    *,
    randomness: randomness_lib.PrivateRandomness = randomness_lib.SECURE,
    stream: str = "adassp",
    fit_intercept: bool = True,
    rho: float = 0.05,
    budget_split: BudgetSplit = "thirds",
) -> LinearFit:
  """(epsilon, delta)-DP linear regression by adaptive sufficient statistics perturbation.

  Args:
    x, y: (n, p) features and (n,) targets.
    epsilon, delta: the total budget; epsilon = inf gives the non-private fit.
    x_bound, y_bound: public bounds; rows are clipped to ||x|| <= x_bound, |y| <= y_bound.
    randomness: the source of the noise (OS CSPRNG by default); with a secret seed the same
      (seed, stream) gives the same fit.
    stream: the name of this fit's randomness; give every fit of a sweep its own.
    fit_intercept: append a constant 1 feature after clipping (its coefficient is the
      intercept and, unlike in ols_fit, is regularised by the ridge lambda too).
    rho: failure probability of the positive-definiteness bound that sets lambda.
    budget_split: "thirds" (Wang's eps/3, delta/3 per release) or "joint" (exact joint
      calibration, less noise for the same guarantee); see the module docstring.

  Returns:
    A LinearFit whose `details` hold the ridge lambda, released lambda_min, noise stds,
    sensitivities and the budget. Clipping counts are not reported: they are not private.
  """
  _refuse_public_rng(x)
  x, y = _as_float_arrays(x, y, "adassp_fit")
  if not 0 < rho < 1:
    raise ValueError(f"rho={rho} must be in (0, 1).")
  rng = randomness.numpy_rng(stream)
  design = clip_rows(x, x_bound)
  row_bound = x_bound
  if fit_intercept:
    design = np.hstack([design, np.ones((design.shape[0], 1))])
    row_bound = math.sqrt(x_bound**2 + 1.0)
  targets = clip_targets(y, y_bound)
  noise_stds = adassp_noise_stds(epsilon, delta, row_bound, y_bound, budget_split)
  stats = private_sufficient_statistics(rng, design, targets, noise_stds, delta, rho)
  d = design.shape[1]
  theta = _solve_symmetric(stats.xtx + stats.ridge_lambda * np.eye(d), stats.xty)
  coef, intercept = (theta[:-1], float(theta[-1])) if fit_intercept else (theta, 0.0)
  return LinearFit(coef=coef, intercept=intercept, details={
      "method": "adassp", "epsilon": epsilon, "delta": delta, "x_bound": x_bound,
      "y_bound": y_bound, "budget_split": budget_split, "rho": rho,
      "ridge_lambda": stats.ridge_lambda, "lambda_min_private": stats.lambda_min,
      "noise_stds": noise_stds, "sensitivities": adassp_sensitivities(row_bound, y_bound)})


def adassp_release(fit: LinearFit, name: str, files: list[str]) -> dict:
  """The privacy-report entry of an output computed from an `adassp_fit` (`dpjax.report`)."""
  d = fit.details
  if d.get("method") != "adassp":
    raise ValueError("adassp_release needs a fit returned by adassp_fit.")
  epsilon = d["epsilon"]
  mechanism = ("none (non-private: epsilon = inf)" if math.isinf(epsilon) else
               f"AdaSSP: Gaussian noise on lambda_min, X^T X and X^T y ({d['budget_split']} "
               "budget split)")
  return report.release(name, files, epsilon=epsilon, delta=d["delta"], mechanism=mechanism,
                        noise_stds=dict(d["noise_stds"]),
                        sensitivities=dict(d["sensitivities"]), x_bound=d["x_bound"],
                        y_bound=d["y_bound"], rho=d["rho"])
