"""The eQTL study: DP linear regression of a gene's expression on P SNP genotypes.

  python -m experiments.eqtl --workdir=runs/eqtl_quick --preset=quick

For each (N, P) row: non-private OLS (closed form), non-private SGD (the same 700 steps
without clipping or noise), DP-SGD (`dpjax.dp_linear`) and AdaSSP (`dpjax.linear`) at the
epsilon and delta the DP-SGD run spent. Every R2 is measured on held-out test samples;
adjusted R2 uses the test size n_test and P (NaN, with the reason in `note`, when
n_test <= P + 1).

Presets:
  quick  a few small rows with the study's privacy settings (seconds).
  paper  the study's 27 (N, P) rows, N = 100..10000, P = 10..6000, with its settings: full
         batch, 700 steps, lr 0.025, noise multiplier 0.5, delta 1e-6 (h2 = 0.99).
  sweep  R2 of DP-SGD and AdaSSP against epsilon in {0.5, 1, 2, 4, 8, inf} at N=10000,
         P=100 (delta 1e-5, 3 repeats), with a PNG plot.
Flags override a preset; --n/--p replace its rows by one row.

Outputs in --workdir: config.json, results.json (a list of rows), results.csv, results.md,
and for the sweep sweep.png.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
import pandas as pd

from dpjax import accounting
from dpjax import dp_linear
from dpjax import linear
from dpjax.data import eqtl

PRESETS = ("quick", "paper", "sweep")
SOURCES = ("simulated", "plink_simulated", "plink_expression")

# The study's table, in its order (N = 100 and P = 10 appears twice).
PAPER_ROWS = (
    (100, 10), (10000, 10), (100, 10), (1000, 10),
    (9000, 50), (8000, 50), (1000, 50), (6000, 50), (2000, 50), (7000, 50), (3000, 50),
    (5000, 50), (4000, 50),
    (2000, 100), (5000, 100), (1000, 100),
    (1000, 200), (2000, 200), (5000, 200), (10000, 200),
    (10000, 300), (10000, 400), (10000, 1000), (10000, 1500), (10000, 2000),
    (10000, 5500), (10000, 6000),
)
QUICK_ROWS = ((200, 10), (1000, 50), (2000, 100), (100, 200))
SWEEP_EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0, math.inf)
# An epsilon above this is reported with a warning: it bounds nothing in practice.
MEANINGFUL_EPSILON = 10.0

TABLE_COLUMNS = ("row", "N", "P", "R2", "R2_DP", "R2_adj", "R2_adj_DP", "epsilon",
                 "R2_AdaSSP", "R2_adj_AdaSSP", "R2_SGD")


@dataclasses.dataclass(frozen=True)
class Config:
  """One experiment; `PRESETS` fill it, flags override single fields."""
  preset: str = "quick"
  source: str = "simulated"
  rows: tuple[tuple[int | None, int], ...] = QUICK_ROWS
  h2: float = 0.9
  num_causal: int = 10
  standardization: str = "auto"  # public_freq for simulated data, else train_freq
  test_fraction: float = 0.2
  # DP-SGD (the study's defaults).
  steps: int = 700
  learning_rate: float = 0.025
  sampling: str = "full"
  batch_size: int | None = None
  noise_multiplier: float = 0.5
  target_epsilon: float | None = None
  epsilons: tuple[float, ...] = ()  # non-empty: the privacy-utility sweep over these
  delta: float | None = 1e-6
  clip_norm: float | None = None  # None: sqrt(P + 1)
  ridge: float = 0.0
  accountant: str = "rdp"
  # AdaSSP public bounds: ||x|| <= x_bound (None: sqrt(P), since E||x||^2 = P), |y| <= y_bound.
  adassp: bool = True
  adassp_x_bound: float | None = None
  adassp_y_bound: float = 3.0
  adassp_budget_split: str = "joint"
  repeats: int = 1
  # Real data.
  plink_prefix: str | None = None
  expression_path: str | None = None
  gene_id: str | None = None
  snp_start: int = 0
  missing: str = "impute"
  data_dir: str | None = None
  seed: int = 0

  def validate(self) -> None:
    """Raises ValueError naming the flag of the first bad setting."""
    if self.preset not in PRESETS:
      raise ValueError(f"--preset={self.preset!r} is unknown; use one of {PRESETS}.")
    if self.source not in SOURCES:
      raise ValueError(f"--source={self.source!r} is unknown; use one of {SOURCES}.")
    if not self.rows:
      raise ValueError("no (N, P) rows to run.")
    for n, p in self.rows:
      if not (isinstance(p, int) and p >= 1):
        raise ValueError(f"--p={p}: the number of SNPs must be an integer >= 1.")
      if n is not None and not (isinstance(n, int) and n >= 3):
        raise ValueError(f"--n={n}: the number of samples must be an integer >= 3.")
    if not 0.0 <= self.h2 <= 1.0:
      raise ValueError(f"--h2={self.h2} must be in [0, 1].")
    if self.num_causal < 1:
      raise ValueError(f"--num_causal={self.num_causal} must be >= 1.")
    if self.delta is not None and not 0.0 < self.delta < 1.0:
      raise ValueError(f"--delta={self.delta} must be in (0, 1) (and well below 1/N).")
    if self.target_epsilon is not None and not self.target_epsilon > 0:
      raise ValueError(f"--target_epsilon={self.target_epsilon} must be > 0.")
    if any(not e > 0 for e in self.epsilons):
      raise ValueError(f"epsilons={self.epsilons} must all be > 0 (inf: no noise).")
    if self.noise_multiplier < 0:
      raise ValueError(f"--noise_multiplier={self.noise_multiplier} must be >= 0.")
    if self.clip_norm is not None and not self.clip_norm > 0:
      raise ValueError(f"--clip_norm={self.clip_norm} must be > 0.")
    if self.steps < 1:
      raise ValueError(f"--steps={self.steps} must be >= 1.")
    if not self.learning_rate > 0:
      raise ValueError(f"--learning_rate={self.learning_rate} must be > 0.")
    if self.sampling not in dp_linear.SAMPLINGS:
      raise ValueError(f"--sampling={self.sampling!r} must be one of {dp_linear.SAMPLINGS}.")
    if self.sampling == "poisson" and not (self.batch_size and self.batch_size >= 1):
      raise ValueError("--sampling=poisson needs --batch_size >= 1 (the expected batch size).")
    if self.ridge < 0:
      raise ValueError(f"--ridge={self.ridge} must be >= 0.")
    if self.repeats < 1:
      raise ValueError(f"--repeats={self.repeats} must be >= 1.")
    if not 0.0 < self.test_fraction < 1.0:
      raise ValueError(f"--test_fraction={self.test_fraction} must be in (0, 1).")
    if self.adassp_x_bound is not None and not self.adassp_x_bound > 0:
      raise ValueError(f"--adassp_x_bound={self.adassp_x_bound} must be > 0.")
    if not self.adassp_y_bound > 0:
      raise ValueError(f"--adassp_y_bound={self.adassp_y_bound} must be > 0.")
    if self.source == "plink_expression" and not self.gene_id:
      raise ValueError("--source=plink_expression needs --gene_id (e.g. ENSG00000100031).")


def preset_config(preset: str) -> Config:
  """The Config of a named preset."""
  if preset == "quick":
    return Config(preset="quick", rows=QUICK_ROWS, h2=0.9)
  if preset == "paper":
    return Config(preset="paper", rows=PAPER_ROWS, h2=0.99)
  if preset == "sweep":
    return Config(preset="sweep", rows=((10000, 100),), h2=0.9, epsilons=SWEEP_EPSILONS,
                  delta=1e-5, repeats=3)
  raise ValueError(f"--preset={preset!r} is unknown; use one of {PRESETS}.")


# ----------------------------------------------------------------------------
# One row


def _standardization(config: Config) -> str:
  if config.standardization != "auto":
    return config.standardization
  return "public_freq" if config.source == "simulated" else "train_freq"


def load_row_data(config: Config, n: int | None, p: int, seed: int) -> eqtl.EqtlData:
  """The data of one row; the same (config, n, p, seed) gives the same arrays."""
  return eqtl.make_eqtl_data(
      config.source, n=n, p=p, h2=config.h2, num_causal=min(config.num_causal, p), seed=seed,
      test_fraction=config.test_fraction, standardization=_standardization(config),
      plink_prefix=config.plink_prefix, expression_path=config.expression_path,
      gene_id=config.gene_id, snp_start=config.snp_start, missing=config.missing,
      data_dir=config.data_dir)


def _dp_config(config: Config, target_epsilon: float | None, delta: float
               ) -> dp_linear.DPLinearConfig:
  return dp_linear.DPLinearConfig(
      steps=config.steps, learning_rate=config.learning_rate, sampling=config.sampling,
      batch_size=config.batch_size, noise_multiplier=config.noise_multiplier,
      target_epsilon=target_epsilon, delta=delta, clip_norm=config.clip_norm,
      ridge=config.ridge, accountant=config.accountant)


def _test_scores(fit, data: eqtl.EqtlData) -> tuple[float, float]:
  """(R2, adjusted R2) on the held-out samples."""
  r2 = linear.r2_score(data.y_test, fit.predict(data.x_test))
  return r2, linear.adjusted_r2(r2, data.y_test.size, data.x_test.shape[1])


def evaluate(data: eqtl.EqtlData, config: Config, key: jax.Array, *,
             target_epsilon: float | None, baselines: dict | None = None
             ) -> tuple[dict[str, Any], dict]:
  """OLS, non-private SGD, DP-SGD and AdaSSP on one data set; a result row.

  `baselines` caches the non-private numbers across the epsilons of a sweep.
  """
  n_train, p = data.x_train.shape
  n_test = data.x_test.shape[0]
  delta = dp_linear.default_delta(n_train) if config.delta is None else config.delta
  notes = []
  if baselines is None:
    # DP-SGD penalises its mean loss by (ridge/2)||w||^2; the same objective for the
    # closed form (a sum of squares) has penalty ridge * n_train.
    clock = time.perf_counter()
    ols = linear.ols_fit(data.x_train, data.y_train, ridge=config.ridge * n_train)
    ols_seconds = time.perf_counter() - clock
    if ols.warning:
      notes.append(f"OLS under-determined (rank {ols.details['rank']} < P={p})")
    sgd_config = dataclasses.replace(_dp_config(config, None, delta), noise_multiplier=0.0,
                                     clip_norm=math.inf)
    sgd = dp_linear.dp_linear_regression(key, data.x_train, data.y_train, sgd_config)
    r2, r2_adj = _test_scores(ols, data)
    baselines = {"R2": r2, "R2_adj": r2_adj, "R2_SGD": _test_scores(sgd, data)[0],
                 "notes": notes, "seconds_ols": ols_seconds}
  notes = list(baselines["notes"])
  reason = linear.adjusted_r2_undefined_reason(n_test, p)
  if reason:
    notes.append(reason.replace("n=", "n_test="))

  noise_key, adassp_key = jax.random.split(key)
  clock = time.perf_counter()
  dp_fit = dp_linear.dp_linear_regression(
      noise_key, data.x_train, data.y_train, _dp_config(config, target_epsilon, delta),
      seed=config.seed)
  r2_dp, r2_adj_dp = _test_scores(dp_fit, data)
  dp_seconds, clock = time.perf_counter() - clock, time.perf_counter()
  row = {"N": n_train + n_test, "P": p, "n_train": n_train, "n_test": n_test,
         "R2": baselines["R2"], "R2_DP": r2_dp, "R2_adj": baselines["R2_adj"],
         "R2_adj_DP": r2_adj_dp, "epsilon": dp_fit.epsilon, "delta": dp_fit.delta,
         "target_epsilon": math.nan if target_epsilon is None else target_epsilon,
         "noise_multiplier": dp_fit.noise_multiplier, "clip_norm": dp_fit.clip_norm,
         "clipped_fraction": float(dp_fit.clipped_fraction[-1]),
         "R2_SGD": baselines["R2_SGD"], "R2_AdaSSP": math.nan, "R2_adj_AdaSSP": math.nan}
  if config.adassp:
    x_bound = config.adassp_x_bound or math.sqrt(p)
    adassp = linear.adassp_fit(adassp_key, data.x_train, data.y_train, dp_fit.epsilon,
                               dp_fit.delta, x_bound, config.adassp_y_bound,
                               budget_split=config.adassp_budget_split)
    row["R2_AdaSSP"], row["R2_adj_AdaSSP"] = _test_scores(adassp, data)
  row.update(seconds_ols=baselines["seconds_ols"], seconds_dp=dp_seconds,
             seconds_adassp=time.perf_counter() - clock)
  row["note"] = "; ".join(notes)
  return row, baselines


# ----------------------------------------------------------------------------
# Tables and plots


def _json_value(value):
  if isinstance(value, (float, np.floating)):
    value = float(value)
    if math.isnan(value):
      return None
    if math.isinf(value):
      return "inf" if value > 0 else "-inf"
  if isinstance(value, np.integer):
    return int(value)
  return value


def _format(value) -> str:
  if isinstance(value, (float, np.floating)):
    if math.isnan(value):
      return "n/a"
    if math.isinf(value):
      return "inf"
    return f"{value:.4g}"
  return str(value)


def markdown_table(rows: list[dict], columns) -> str:
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(_format(r.get(c, "")) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


def sweep_summary(rows: list[dict]) -> list[dict]:
  """Mean and sd over repeats of each method's R2, per target epsilon."""
  frame = pd.DataFrame(rows)
  summary = []
  for target, group in frame.groupby("target_epsilon", sort=True):
    entry = {"target_epsilon": target, "epsilon": group["epsilon"].max(),
             "noise_multiplier": group["noise_multiplier"].iloc[0], "repeats": len(group)}
    for column in ("R2", "R2_SGD", "R2_DP", "R2_AdaSSP"):
      entry[column] = group[column].mean()
      entry[column + "_sd"] = group[column].std(ddof=1) if len(group) > 1 else math.nan
    summary.append(entry)
  return summary


def plot_sweep(summary: list[dict], path: str, title: str) -> None:
  """R2 against epsilon (log axis; epsilon = inf drawn at the right edge)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel

  finite = [s["target_epsilon"] for s in summary if math.isfinite(s["target_epsilon"])]
  inf_position = max(finite) * 4 if finite else 1.0
  xs = [s["target_epsilon"] if math.isfinite(s["target_epsilon"]) else inf_position
        for s in summary]
  fig, ax = plt.subplots(figsize=(6, 4))
  for column, label, marker in (("R2_DP", "DP-SGD (700 steps, full batch)", "o"),
                                ("R2_AdaSSP", "AdaSSP", "s")):
    means = np.array([s[column] for s in summary])
    sds = np.nan_to_num(np.array([s[column + "_sd"] for s in summary]))
    ax.errorbar(xs, means, yerr=sds, marker=marker, capsize=3, label=label)
  ax.axhline(summary[0]["R2"], color="k", linestyle="--", label="OLS (non-private)")
  ax.axhline(0.0, color="grey", linewidth=0.8, label="predicting the mean (R2 = 0)")
  lowest = min(min(s["R2_DP"], s["R2_AdaSSP"]) for s in summary)
  if lowest < -1:  # a few catastrophic points would squash the informative range
    ax.set_ylim(bottom=-1.0, top=1.0)
    ax.text(0.02, 0.02, f"lowest mean R2 {lowest:.3g} is below the axis", fontsize=7,
            transform=ax.transAxes)
  ax.set_xscale("log")
  ticks = xs
  ax.set_xticks(ticks)
  ax.set_xticklabels([_format(s["target_epsilon"]) for s in summary])
  ax.set_xlabel("epsilon")
  ax.set_ylabel("held-out R2")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def tf_privacy_epsilon(noise_multiplier: float, steps: int, delta: float) -> float:
  """Full-batch epsilon as TF Privacy's compute_dp_sgd_privacy (2019) reported it.

  Its RDP orders were 1.1, 1.2, ..., 10.9, 12, ..., 63 and its conversion
  eps = RDP(alpha) + log(1 / delta) / (alpha - 1); with q = 1 the Gaussian mechanism's RDP
  is alpha / (2 sigma^2) per step. This reproduces the study's 1678.16.
  """
  orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
  return min(steps * a / (2 * noise_multiplier**2) + math.log(1 / delta) / (a - 1)
             for a in orders)


def _study_epsilon_sentence(config: Config) -> str:
  """What the study's privacy settings imply, from the accountant."""
  study = accounting.compute_epsilon(
      [accounting.PrivacyPhase(0.5, 1000, 1000, "full", steps=700)], 1e-6, "rdp")
  return (f"The study's settings (full batch, 700 steps, noise multiplier 0.5, delta 1e-6) give "
          f"epsilon = {study:.2f} with dp_accounting's RDP accountant for every N "
          f"({tf_privacy_epsilon(0.5, 700, 1e-6):.2f} with the RDP orders of the TF Privacy "
          "version the study used, its reported 1678.16): with full batches epsilon depends "
          "only on the noise multiplier, the steps and delta. Such an epsilon bounds nothing "
          "in practice.")


def write_outputs(workdir: str, config: Config, rows: list[dict]) -> dict:
  os.makedirs(workdir, exist_ok=True)
  json_rows = [{k: _json_value(v) for k, v in r.items()} for r in rows]
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(json_rows, f, indent=1)
  pd.DataFrame(rows).to_csv(os.path.join(workdir, "results.csv"), index=False)
  outputs = {"results_json": os.path.join(workdir, "results.json"),
             "results_csv": os.path.join(workdir, "results.csv"),
             "results_md": os.path.join(workdir, "results.md")}
  lines = [f"# eQTL: DP linear regression ({config.preset} preset, source={config.source})", "",
           f"Held-out R2 of OLS (R2), DP-SGD (R2_DP, {config.steps} steps, lr "
           f"{config.learning_rate}, {config.sampling} batch), AdaSSP at the same (epsilon, delta) "
           "(R2_AdaSSP) and non-private SGD with the same steps (R2_SGD). Adjusted R2 uses the "
           "test size n_test and P (n/a when n_test <= P + 1). epsilon is the accountant's "
           f"({config.accountant}) at the delta column.", ""]
  summary = None
  if config.epsilons:
    summary = sweep_summary(rows)
    columns = ["target_epsilon", "epsilon", "noise_multiplier", "repeats", "R2", "R2_SGD",
               "R2_DP", "R2_DP_sd", "R2_AdaSSP", "R2_AdaSSP_sd"]
    lines += [f"Mean (sd) over {config.repeats} repeats:", "", markdown_table(summary, columns),
              "", "All runs:", ""]
    plot_path = os.path.join(workdir, "sweep.png")
    first = rows[0]
    plot_sweep(summary, plot_path, f"{config.source}, N={first['N']}, P={first['P']}, "
               f"h2={config.h2}, delta={first['delta']:g}")
    outputs["plot"] = plot_path
  columns = list(TABLE_COLUMNS) + ["delta", "noise_multiplier", "clip_norm", "note"]
  if config.epsilons:
    columns.insert(columns.index("epsilon"), "target_epsilon")
  lines += [markdown_table(rows, columns), "", _study_epsilon_sentence(config), ""]
  with open(outputs["results_md"], "w") as f:
    f.write("\n".join(lines))
  return {"outputs": outputs, "summary": summary}


# ----------------------------------------------------------------------------
# The experiment


def train_and_evaluate(config: Config, workdir: str) -> dict:
  """Runs every row (and every epsilon of a sweep) and writes the outputs; returns them."""
  config.validate()
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({k: _json_value(v) for k, v in dataclasses.asdict(config).items()}, f, indent=1)
  targets = config.epsilons or (config.target_epsilon,)
  jobs = [(i, n, p, r) for i, (n, p) in enumerate(config.rows) for r in range(config.repeats)]
  rows, warned = [], False
  start = time.perf_counter()
  for job, (i, n, p, repeat) in enumerate(jobs):
    seed = config.seed + i + 1000 * repeat
    data = load_row_data(config, n, p, seed)
    if job == 0:
      logging.info("data: %s", data.description)
    baselines = None
    for target in targets:
      row_start = time.perf_counter()
      key = jax.random.fold_in(jax.random.key(config.seed), job)
      row, baselines = evaluate(data, config, key, target_epsilon=target, baselines=baselines)
      row = {"row": i, "repeat": repeat, "seed": seed, **row,
             "seconds": time.perf_counter() - row_start}
      rows.append(row)
      logging.info(
          "row %d/%d%s N=%d P=%d: R2=%.4f R2_DP=%.4f R2_AdaSSP=%.4f R2_SGD=%.4f epsilon=%s "
          "(sigma=%.3g, delta=%g) %.1fs%s", i + 1, len(config.rows),
          f" repeat {repeat + 1}/{config.repeats}" if config.repeats > 1 else "",
          row["N"], row["P"], row["R2"], row["R2_DP"], row["R2_AdaSSP"], row["R2_SGD"],
          _format(row["epsilon"]), row["noise_multiplier"], row["delta"], row["seconds"],
          f" [{row['note']}]" if row["note"] else "")
      if not warned and row["epsilon"] > MEANINGFUL_EPSILON:
        warned = True
        logging.warning(
            "epsilon=%s gives no meaningful privacy guarantee; pass e.g. --target_epsilon=1 "
            "(or --preset=sweep) for a real one.", _format(row["epsilon"]))
  written = write_outputs(workdir, config, rows)
  logging.info("wrote %s in %.1fs", ", ".join(written["outputs"].values()),
               time.perf_counter() - start)
  return {"rows": rows, **written}


# ----------------------------------------------------------------------------
# Command line


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "Output directory (created).")
  flags.DEFINE_string("preset", "quick", f"One of {PRESETS}.")
  flags.DEFINE_string("source", None, f"Data source, one of {SOURCES} (default simulated).")
  flags.DEFINE_integer("n", None, "Samples (with --p: one row instead of the preset's). "
                       "PLINK sources: default all samples.")
  flags.DEFINE_integer("p", None, "SNPs (with --n: one row instead of the preset's).")
  flags.DEFINE_float("h2", None, "Heritability of simulated expression.")
  flags.DEFINE_integer("num_causal", None, "Causal SNPs of simulated expression (capped at P).")
  flags.DEFINE_string("standardization", None,
                      "auto, train_freq, public_freq or centered (see dpjax/data/eqtl.py).")
  flags.DEFINE_float("test_fraction", None, "Share of samples held out for R2.")
  flags.DEFINE_float("target_epsilon", None, "Calibrate the noise to spend this epsilon.")
  flags.DEFINE_float("noise_multiplier", None, "Noise std / clip norm (without --target_epsilon).")
  flags.DEFINE_list("epsilons", None, "Sweep these target epsilons ('inf' allowed).")
  flags.DEFINE_float("delta", None, "Target delta (paper/quick 1e-6, sweep 1e-5).")
  flags.DEFINE_float("clip_norm", None, "Per-example clip norm (default sqrt(P + 1)).")
  flags.DEFINE_integer("steps", None, "DP-SGD iterations (study: 700).")
  flags.DEFINE_float("learning_rate", None, "SGD learning rate (study: 0.025).")
  flags.DEFINE_string("sampling", None, "full (study) or poisson (needs --batch_size).")
  flags.DEFINE_integer("batch_size", None, "Expected Poisson batch size.")
  flags.DEFINE_float("ridge", None, "L2 penalty (ridge/2)||w||^2 on the mean loss of OLS and "
                     "DP-SGD (added after the noise: no privacy cost).")
  flags.DEFINE_integer("repeats", None, "Repeats per row with different seeds.")
  flags.DEFINE_float("adassp_x_bound", None, "AdaSSP public bound on ||x|| (default sqrt(P)).")
  flags.DEFINE_float("adassp_y_bound", None, "AdaSSP public bound on |y| (default 3).")
  flags.DEFINE_string("plink_prefix", None, "PLINK prefix (default HapMap YRI or OneK1K "
                      "under --data_dir).")
  flags.DEFINE_string("expression_path", None, "Expression BED (default OneK1K CD14 TMM).")
  flags.DEFINE_string("gene_id", None, "Gene of --source=plink_expression.")
  flags.DEFINE_integer("snp_start", None, "First SNP index for PLINK sources.")
  flags.DEFINE_string("missing", None, "Missing genotype calls: impute or error.")
  flags.DEFINE_string("data_dir", None, "Real data directory (default $DPJAX_DATA_DIR or "
                      "../shared/data).")
  flags.DEFINE_integer("seed", None, "Seed of data, split and noise.")


_OVERRIDES = ("source", "h2", "num_causal", "standardization", "test_fraction", "target_epsilon",
              "noise_multiplier", "delta", "clip_norm", "steps", "learning_rate", "sampling",
              "batch_size", "ridge", "repeats", "adassp_x_bound", "adassp_y_bound",
              "plink_prefix", "expression_path", "gene_id", "snp_start", "missing", "data_dir",
              "seed")


def config_from_flags(values: dict) -> Config:
  """A preset's Config with the flags that were set (not None) applied."""
  config = preset_config(values["preset"])
  overrides = {k: values[k] for k in _OVERRIDES if values.get(k) is not None}
  if values.get("epsilons") is not None:
    overrides["epsilons"] = tuple(float(e) for e in values["epsilons"])
  source = overrides.get("source", config.source)
  n, p = values.get("n"), values.get("p")
  if n is not None or p is not None or source != "simulated":
    default_n = config.rows[0][0] if source == "simulated" else None
    overrides["rows"] = ((default_n if n is None else n, 100 if p is None else p),)
  return dataclasses.replace(config, **overrides)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS.workdir:
    raise app.UsageError("--workdir is required.")
  values = {name: flags.FLAGS[name].value for name in flags.FLAGS}
  try:
    config = config_from_flags(values)
    config.validate()
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  try:
    result = train_and_evaluate(config, flags.FLAGS.workdir)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"eqtl: error: {e}")
  with open(result["outputs"]["results_md"]) as f:
    print(f.read())


if __name__ == "__main__":
  define_flags()
  app.run(main)
