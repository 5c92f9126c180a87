"""Scoring synthetic participants: TSTR/TRTR classifiers and the memorisation check.

TSTR (train on synthetic, test on real): logistic regression and a random forest fit on
synthetic participants to predict the arm, scored on held-out real participants. TRTR (train on
real, test on real) is the same with the real training participants: the ceiling.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.metrics import roc_auc_score

CLASSIFIERS = ("lr", "rf")
METRICS = ("accuracy", "auc")


def _flat(x: np.ndarray) -> np.ndarray:
  return np.asarray(x, np.float64).reshape(len(x), -1)


def classifier_scores(train_x, train_arm, eval_sets: dict, seed: int, rf_trees: int) -> dict:
  """{set name: {"lr"|"rf": {"accuracy", "auc"}}}: LR and RF fit once on (train_x, train_arm),
  scored on each (x, arm) of `eval_sets`."""
  models = {
      # Features are already scaled to [0, 1]. Standardising by the SYNTHETIC data's spread
      # would blow up real test values on features a generator made almost constant.
      "lr": LogisticRegression(max_iter=2000),
      "rf": RandomForestClassifier(n_estimators=rf_trees, random_state=seed, n_jobs=1),
  }
  # A generator that produced a single arm gives a constant classifier.
  single_arm = len(np.unique(train_arm)) < 2
  if not single_arm:
    for model in models.values():
      model.fit(_flat(train_x), train_arm)
  scores = {}
  for set_name, (x, arm) in eval_sets.items():
    scores[set_name] = {}
    for name, model in models.items():
      if single_arm:
        probability = np.full(len(arm), float(np.unique(train_arm)[0]))
      else:
        probability = model.predict_proba(_flat(x))[:, 1]
      auc = roc_auc_score(arm, probability) if len(np.unique(arm)) > 1 else math.nan
      scores[set_name][name] = {"accuracy": float(accuracy_score(arm, probability >= 0.5)),
                                "auc": float(auc)}
  return scores


def nearest_distances(queries: np.ndarray, references: np.ndarray,
                      chunk: int = 1024) -> np.ndarray:
  """Euclidean distance from each query to its nearest reference (flattened, scaled units)."""
  q, r = _flat(queries), _flat(references)
  r_sq = np.sum(r * r, axis=1)
  out = np.empty(len(q))
  for start in range(0, len(q), chunk):
    block = q[start:start + chunk]
    sq = np.sum(block * block, axis=1)[:, None] - 2 * block @ r.T + r_sq[None, :]
    out[start:start + chunk] = np.sqrt(np.maximum(sq.min(axis=1), 0.0))
  return out


def memorisation_check(synthetic: np.ndarray, train_x: np.ndarray, heldout_x: np.ndarray,
                       seed: int) -> dict:
  """Nearest-training vs nearest-held-out distances of synthetic records.

  It measures distances to TRAINING records: a private diagnostic (written under private/),
  not a released result.

  A random subset of the training records of the held-out set's size is the reference, so
  both references are equally dense: a generator that does not memorise puts its records as
  close to one as to the other (closer_to_train_fraction ~ 0.5, median ratio ~ 1).
  """
  rng = np.random.default_rng(seed)
  size = min(len(train_x), len(heldout_x))
  train_ref = train_x[rng.choice(len(train_x), size, replace=False)]
  heldout_ref = heldout_x[rng.choice(len(heldout_x), size, replace=False)]
  to_train = nearest_distances(synthetic, train_ref)
  to_heldout = nearest_distances(synthetic, heldout_ref)
  quantiles = lambda d: {f"q{int(100 * q)}": float(np.quantile(d, q))
                         for q in (0.05, 0.25, 0.5, 0.75)}
  return {
      "reference_size": int(size),
      "to_train": quantiles(to_train),
      "to_heldout": quantiles(to_heldout),
      "median_ratio_train_over_heldout": float(np.median(to_train)
                                               / max(np.median(to_heldout), 1e-12)),
      "closer_to_train_fraction": float(np.mean(to_train < to_heldout)),
      "exact_copies_of_train": int(np.sum(to_train < 1e-6)),
      # Collapsed or saturated output makes the fractions above degenerate (the same few
      # extreme reference records are nearest to everything):
      # the synthetic spread over the real one (<< 1 or >> 1) tells when.
      "spread_ratio_synthetic_over_train": float(
          np.mean(np.std(_flat(synthetic), axis=0))
          / max(np.mean(np.std(_flat(train_x), axis=0)), 1e-12)),
  }


def flat_scores(scores: dict) -> dict:
  """{"validation_lr_auc": ..., "test_rf_accuracy": ...}: one flat line of the public history."""
  return {f"{split}_{clf}_{metric}": scores[split][clf][metric]
          for split in scores for clf in CLASSIFIERS for metric in METRICS}


# ----- fidelity a clinical reader checks: per-visit medians, spread, visit-to-visit correlation --

def _quartiles(values: np.ndarray) -> np.ndarray:
  """(3, visits): the 25th, 50th and 75th percentiles of (N, visits) values."""
  return np.quantile(values, [0.25, 0.5, 0.75], axis=0)


def _visit_correlations(values: np.ndarray) -> np.ndarray:
  """Visit-by-visit Pearson correlation of (N, visits) values (0 where a visit is constant)."""
  with np.errstate(invalid="ignore", divide="ignore"):
    corr = np.corrcoef(values, rowvar=False)
  return np.nan_to_num(corr, nan=0.0)


def fidelity(synthetic: np.ndarray, synthetic_arm: np.ndarray, real: np.ndarray,
             real_arm: np.ndarray, to_units) -> dict:
  """How far synthetic participants are from real ones, visit by visit, per arm.

  `to_units` maps scaled (N, features, visits) grids to original units (e.g. mmHg). For the
  first feature (SBP for SPRINT), per arm: the synthetic minus real median and interquartile
  range at every visit, and their largest absolute value. For every feature: the mean absolute
  difference between the synthetic and real visit-to-visit correlation matrices (off-diagonal
  entries, both arms pooled), averaged over features. `real` should be held-out participants.
  """
  synthetic_units, real_units = to_units(synthetic), to_units(real)
  out = {"median_error": {}, "iqr_error": {}, "max_abs_median_error": {},
         "max_abs_iqr_error": {}}
  for a in (0, 1):
    s, r = synthetic_units[synthetic_arm == a, 0], real_units[real_arm == a, 0]
    if not len(s) or not len(r):
      continue
    qs, qr = _quartiles(s), _quartiles(r)
    median_error = qs[1] - qr[1]
    iqr_error = (qs[2] - qs[0]) - (qr[2] - qr[0])
    out["median_error"][str(a)] = median_error.tolist()
    out["iqr_error"][str(a)] = iqr_error.tolist()
    out["max_abs_median_error"][str(a)] = float(np.max(np.abs(median_error)))
    out["max_abs_iqr_error"][str(a)] = float(np.max(np.abs(iqr_error)))
  num_visits = real.shape[-1]
  off_diagonal = ~np.eye(num_visits, dtype=bool)
  errors = [np.mean(np.abs(_visit_correlations(synthetic_units[:, f])
                           - _visit_correlations(real_units[:, f]))[off_diagonal])
            for f in range(real.shape[1])] if num_visits > 1 else [0.0]
  out["correlation_error"] = float(np.mean(errors))
  return out


def fidelity_columns(f: dict) -> dict:
  """The summary table's fidelity cells: worst-visit median and IQR error per arm, corr error."""
  cell = lambda d, a: f"{d[a]:.1f}" if a in d else ""
  return {"median_err_arm0": cell(f["max_abs_median_error"], "0"),
          "median_err_arm1": cell(f["max_abs_median_error"], "1"),
          "iqr_err_arm0": cell(f["max_abs_iqr_error"], "0"),
          "iqr_err_arm1": cell(f["max_abs_iqr_error"], "1"),
          "corr_err": f"{f['correlation_error']:.3f}"}
