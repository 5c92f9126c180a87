"""The eQTL study: DP linear regression of a gene's expression on P SNP genotypes.

  python -m experiments.eqtl --config=experiments/eqtl/configs/quick.py --workdir=runs/eqtl_quick

For each (N, P) row: DP-SGD (`dp_linear`) and AdaSSP (`linear`) at the epsilon and delta the
DP-SGD run spent, beside two NON-PRIVATE reference columns computed on the same training
samples without clipping or noise: OLS (closed form, `R2_OLS_nonprivate`) and SGD with the same
steps (`R2_SGD_nonprivate`); `--config.nonprivate_baselines=false` drops them. Every R2 is
measured on held-out test samples; adjusted R2 uses the test size n_test and P (nan, with the
reason in `note`, when n_test <= P + 1).

Privacy. Every DP fit (each row, repeat and target epsilon; DP-SGD and AdaSSP) draws its own
secret noise (and Poisson batches) from the OS CSPRNG under its own stream name;
`--config.seed` steers only the public choices (simulation, split).
`--config.reproducible_private_randomness=true` derives the private randomness from the seed
instead, which then becomes a secret: it is redacted from config.json and results and kept in
private/secret_seed.json.

The configs (experiments/eqtl/configs/) are the presets: quick (a few small rows), paper (the
study's 27 rows), sweep (R2 against epsilon) and hapmap (real HapMap genotypes); `--config.n`
and `--config.p` replace a config's rows by one row.

Outputs in the workdir: config.json, results.json (a list of rows), results.csv, results.md,
for a sweep sweep.png, and privacy_report.{json,md} (one release per DP fit and what the
guarantee does not cover). Unnoised training statistics (training loss, clipped fraction, the
OLS rank) go to private/diagnostics.json, never to a released file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Mapping

from absl import logging
from ml_collections import config_dict
import numpy as np
import pandas as pd

from dpjax import accounting
from dpjax import randomness as randomness_lib
from dpjax import report
from dpjax.data import eqtl
from experiments.common import configs
from experiments.common import outputs
from experiments.eqtl import dp_linear
from experiments.eqtl import linear

SOURCES = ("simulated", "plink_simulated", "plink_expression")
# An epsilon above this is reported with a warning: it bounds nothing in practice.
MEANINGFUL_EPSILON = 10.0

TABLE_COLUMNS = ("row", "N", "P", "R2_OLS_nonprivate", "R2_DP", "R2_adj_OLS_nonprivate",
                 "R2_adj_DP", "epsilon", "R2_AdaSSP", "R2_adj_AdaSSP", "R2_SGD_nonprivate")
NONPRIVATE_COLUMNS = ("R2_OLS_nonprivate", "R2_adj_OLS_nonprivate", "R2_SGD_nonprivate")
# What the released tables must never hold: unnoised statistics of the training samples.
PRIVATE_KEYS = ("loss", "final_loss", "clipped_fraction", "final_clipped_fraction",
                "mean_grad_norm", "num_nonfinite", "batch_size", "train_r2", "ols_rank")
RESULT_FILES = ("results.json", "results.csv", "results.md")
SWEEP_PLOT = "sweep.png"
# Config fields that are not Config attributes: with either set, one row (n, p) replaces `rows`.
ROW_FIELDS = ("n", "p")


@dataclasses.dataclass(frozen=True)
class Config:
  """One experiment, made from a config file (`make_config`); checked on creation."""
  name: str = "quick"  # the config's name, shown in results.md
  source: str = "simulated"
  rows: tuple[tuple[int | None, int], ...] = ((200, 10),)
  h2: float = 0.9
  num_causal: int = 10
  # Pre-processing (dpjax/data/eqtl.py): the defaults look at no sample; "train_freq",
  # missing="impute_mean" and expression_standardization="train" are data-dependent and are
  # then listed as not covered in the privacy report.
  standardization: str = "public"
  expression_standardization: str = "none"
  test_fraction: float = 0.2
  # DP-SGD (the study's defaults).
  steps: int = 700
  epochs: float | None = None  # instead of steps: sampling.steps_for_epochs
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
  # The non-private OLS and SGD reference columns (not covered by the guarantee).
  nonprivate_baselines: bool = True
  # Off: the DP noise and batches come from the OS CSPRNG. On: from `seed`, which then is a
  # secret (redacted from config.json and results, kept in private/secret_seed.json).
  reproducible_private_randomness: bool = False
  # Real data.
  plink_prefix: str | None = None
  expression_path: str | None = None
  gene_id: str | None = None
  snp_start: int = 0
  missing: str = "impute"
  data_dir: str | None = None
  seed: int = 0

  def __post_init__(self):
    self.validate()

  def validate(self) -> None:
    """Raises ValueError naming the field (as --config.<field>=<value>) of a bad setting."""
    if self.source not in SOURCES:
      raise ValueError(f"--config.source={self.source!r} is unknown; use one of {SOURCES}.")
    if not self.rows:
      raise ValueError("--config.rows=(): no (N, P) rows to run; give at least one.")
    for n, p in self.rows:
      if not (isinstance(p, int) and p >= 1):
        raise ValueError(f"--config.p={p}: the number of SNPs must be an integer >= 1.")
      if n is not None and not (isinstance(n, int) and n >= 3):
        raise ValueError(f"--config.n={n}: the number of samples must be an integer >= 3.")
    if not 0.0 <= self.h2 <= 1.0:
      raise ValueError(f"--config.h2={self.h2} must be in [0, 1].")
    if self.num_causal < 1:
      raise ValueError(f"--config.num_causal={self.num_causal} must be >= 1.")
    if self.delta is not None and not 0.0 < self.delta < 1.0:
      raise ValueError(f"--config.delta={self.delta} must be in (0, 1) (and well below 1/N).")
    if self.target_epsilon is not None and not self.target_epsilon > 0:
      raise ValueError(f"--config.target_epsilon={self.target_epsilon} must be > 0.")
    if any(not e > 0 for e in self.epsilons):
      raise ValueError(f"--config.epsilons={self.epsilons} must all be > 0 (inf: no noise).")
    if self.noise_multiplier < 0:
      raise ValueError(f"--config.noise_multiplier={self.noise_multiplier} must be >= 0.")
    if self.clip_norm is not None and not self.clip_norm > 0:
      raise ValueError(f"--config.clip_norm={self.clip_norm} must be > 0.")
    if self.steps < 1:
      raise ValueError(f"--config.steps={self.steps} must be >= 1.")
    if self.epochs is not None and not (math.isfinite(self.epochs) and self.epochs > 0):
      raise ValueError(f"--config.epochs={self.epochs} must be a finite number > 0.")
    if not self.learning_rate > 0:
      raise ValueError(f"--config.learning_rate={self.learning_rate} must be > 0.")
    if self.sampling not in dp_linear.SAMPLINGS:
      raise ValueError(f"--config.sampling={self.sampling!r} must be one of "
                       f"{dp_linear.SAMPLINGS}.")
    if self.sampling == "poisson" and not (self.batch_size and self.batch_size >= 1):
      raise ValueError("--config.sampling=poisson needs --config.batch_size >= 1 (the expected "
                       "batch size).")
    if self.ridge < 0:
      raise ValueError(f"--config.ridge={self.ridge} must be >= 0.")
    if self.repeats < 1:
      raise ValueError(f"--config.repeats={self.repeats} must be >= 1.")
    if not 0.0 < self.test_fraction < 1.0:
      raise ValueError(f"--config.test_fraction={self.test_fraction} must be in (0, 1).")
    if self.adassp_x_bound is not None and not self.adassp_x_bound > 0:
      raise ValueError(f"--config.adassp_x_bound={self.adassp_x_bound} must be > 0.")
    if not self.adassp_y_bound > 0:
      raise ValueError(f"--config.adassp_y_bound={self.adassp_y_bound} must be > 0.")
    if self.source == "plink_expression" and not self.gene_id:
      raise ValueError("--config.source=plink_expression needs --config.gene_id "
                       "(e.g. ENSG00000100031).")


def default_config() -> config_dict.ConfigDict:
  """Every field of `Config` (and `n`, `p`) at its default: what the config files start from.

  A field whose default is None is a typed placeholder, so that `--config.<field>=<value>`
  can still set it from the command line.
  """
  config = configs.config_dict_of(Config)
  for name in ROW_FIELDS:
    setattr(config, name, config_dict.placeholder(int))
  return config


def variant(config: config_dict.ConfigDict, arg: str | None, file: str, name: str,
            **changes: Any) -> config_dict.ConfigDict:
  """A config file's argument: none leaves `config`; `name` (e.g. "quick") sets `changes` and
  appends `:<name>` to the run's name; anything else is refused, naming the file."""
  if arg == name:
    config.name = f"{config.name}:{name}"
    config.update(changes)
  elif arg:
    raise ValueError(f"{file}:{arg}: unknown argument; use {file} or {file}:{name}.")
  return config


def make_config(config: Mapping[str, Any] | Any) -> Config:
  """The checked `Config` of a config file's ConfigDict (or a plain mapping of its fields).

  `n`/`p` (either set) replace `rows` by the one row (n, p), p defaulting to 100 and n to the
  first row's N. A PLINK source always runs one row, N = all samples of the file unless n.
  """
  if isinstance(config, Config):
    return config
  values = dict(config.to_dict() if hasattr(config, "to_dict") else config)
  valid = sorted({f.name for f in dataclasses.fields(Config)} | set(ROW_FIELDS))
  unknown = sorted(set(values) - set(valid))
  if unknown:
    raise ValueError(f"unknown config field(s) {unknown}; valid fields: {valid}.")
  n, p = (values.pop(name, None) for name in ROW_FIELDS)
  if p is not None and not (isinstance(p, int) and p >= 1):
    raise ValueError(f"--config.p={p}: the number of SNPs must be an integer >= 1.")
  rows = tuple(tuple(row) for row in values.get("rows", Config.rows))
  if n is not None or p is not None or values.get("source", Config.source) != "simulated":
    default_n = rows[0][0] if values.get("source", Config.source) == "simulated" else None
    rows = ((default_n if n is None else n, 100 if p is None else p),)
  values["rows"] = rows
  # A command line gives e.g. --config.epsilons=1 --config.epsilons=inf: strings to floats.
  try:
    values["epsilons"] = tuple(float(e) for e in values.get("epsilons", ()))
  except (TypeError, ValueError):
    raise ValueError(f"--config.epsilons={values['epsilons']!r}: expected numbers (inf "
                     "allowed), e.g. --config.epsilons=1 --config.epsilons=inf, or "
                     "--config.epsilons=\"(1, 8, 'inf')\".") from None
  return Config(**values)


# ----------------------------------------------------------------------------
# One row


def load_row_data(config: Config, n: int | None, p: int, seed: int) -> eqtl.EqtlData:
  """The data of one row; the same (config, n, p, seed) gives the same arrays."""
  return eqtl.make_eqtl_data(
      config.source, n=n, p=p, h2=config.h2, num_causal=min(config.num_causal, p), seed=seed,
      test_fraction=config.test_fraction, standardization=config.standardization,
      expression_standardization=config.expression_standardization,
      plink_prefix=config.plink_prefix, expression_path=config.expression_path,
      gene_id=config.gene_id, snp_start=config.snp_start, missing=config.missing,
      data_dir=config.data_dir)


def _dp_config(config: Config, target_epsilon: float | None, delta: float
               ) -> dp_linear.DPLinearConfig:
  return dp_linear.DPLinearConfig(
      steps=config.steps, epochs=config.epochs, learning_rate=config.learning_rate,
      sampling=config.sampling,
      batch_size=config.batch_size, noise_multiplier=config.noise_multiplier,
      target_epsilon=target_epsilon, delta=delta, clip_norm=config.clip_norm,
      ridge=config.ridge, accountant=config.accountant)


def _test_scores(fit, data: eqtl.EqtlData) -> tuple[float, float]:
  """(R2, adjusted R2) on the held-out samples."""
  r2 = linear.r2_score(data.y_test, fit.predict(data.x_test))
  return r2, linear.adjusted_r2(r2, data.y_test.size, data.x_test.shape[1])


def arm_stream(row: int, repeat: int, target_epsilon: float | None, method: str) -> str:
  """The name of one fit's private randomness: distinct for every row, repeat, epsilon, method."""
  # repr, not a rounded format: two close targets must never share randomness.
  target = "default" if target_epsilon is None else repr(float(target_epsilon))
  return f"eqtl row {row} repeat {repeat} target_epsilon {target} {method}"


@dataclasses.dataclass
class ArmResult:
  """One row of the table, the DP fits behind it, and its private diagnostics."""
  row: dict[str, Any]
  dp_fit: dp_linear.DPLinearFit
  adassp_fit: linear.LinearFit | None
  private: dict[str, Any]


def nonprivate_baselines(data: eqtl.EqtlData, config: Config, delta: float,
                         randomness: randomness_lib.PrivateRandomness, stream: str
                         ) -> tuple[dict, dict]:
  """(public columns, private diagnostics) of the NON-PRIVATE OLS and SGD references.

  Their held-out R2 is released only as a labelled non-private comparison (the privacy report
  lists it as not covered); the OLS rank and the SGD training loss stay private.
  """
  n_train, p = data.x_train.shape
  # DP-SGD penalises its mean loss by (ridge/2)||w||^2; the same objective for the
  # closed form (a sum of squares) has penalty ridge * n_train.
  clock = time.perf_counter()
  ols = linear.ols_fit(data.x_train, data.y_train, ridge=config.ridge * n_train)
  seconds = time.perf_counter() - clock
  sgd_config = dataclasses.replace(_dp_config(config, None, delta), noise_multiplier=0.0,
                                   clip_norm=math.inf)
  sgd = dp_linear.dp_linear_regression(data.x_train, data.y_train, sgd_config,
                                       randomness=randomness, stream=stream)
  r2, r2_adj = _test_scores(ols, data)
  public = {"R2_OLS_nonprivate": r2, "R2_adj_OLS_nonprivate": r2_adj,
            "R2_SGD_nonprivate": _test_scores(sgd, data)[0], "seconds_ols": seconds,
            "notes": ["non-private OLS under-determined"] if ols.warning else []}
  private = {"ols_rank": ols.details["rank"],
             "sgd_nonprivate": dp_linear.private_summary(sgd)}
  return public, private


def evaluate(data: eqtl.EqtlData, config: Config, randomness: randomness_lib.PrivateRandomness,
             *, row: int, repeat: int, target_epsilon: float | None,
             baselines: tuple[dict, dict] | None = None) -> tuple[ArmResult, tuple | None]:
  """DP-SGD and AdaSSP (and the non-private references) on one data set: one table row.

  Each DP fit draws its own secret randomness (`arm_stream`). `baselines` caches the
  non-private numbers across the epsilons of a sweep.
  """
  n_train, p = data.x_train.shape
  n_test = data.x_test.shape[0]
  delta = dp_linear.default_delta(n_train) if config.delta is None else config.delta
  if config.nonprivate_baselines and baselines is None:
    baselines = nonprivate_baselines(data, config, delta, randomness,
                                     arm_stream(row, repeat, None, "sgd (non-private)"))
  public_baselines, private_baselines = baselines or ({"notes": []}, {})
  notes = list(public_baselines["notes"])
  reason = linear.adjusted_r2_undefined_reason(n_test, p)
  if reason:
    notes.append(reason.replace("n=", "n_test="))

  clock = time.perf_counter()
  dp_fit = dp_linear.dp_linear_regression(
      data.x_train, data.y_train, _dp_config(config, target_epsilon, delta),
      randomness=randomness, stream=arm_stream(row, repeat, target_epsilon, "dp-sgd"))
  r2_dp, r2_adj_dp = _test_scores(dp_fit, data)
  dp_seconds, clock = time.perf_counter() - clock, time.perf_counter()
  result = {"N": n_train + n_test, "P": p, "n_train": n_train, "n_test": n_test,
            "R2_DP": r2_dp, "R2_adj_DP": r2_adj_dp, "epsilon": dp_fit.epsilon,
            "delta": dp_fit.delta,
            "target_epsilon": math.nan if target_epsilon is None else target_epsilon,
            "noise_multiplier": dp_fit.noise_multiplier, "clip_norm": dp_fit.clip_norm,
            "steps": dp_fit.steps, "R2_AdaSSP": math.nan, "R2_adj_AdaSSP": math.nan}
  if config.nonprivate_baselines:
    result.update({k: public_baselines[k] for k in NONPRIVATE_COLUMNS})
  adassp = None
  if config.adassp:
    x_bound = config.adassp_x_bound or math.sqrt(p)
    adassp = linear.adassp_fit(data.x_train, data.y_train, dp_fit.epsilon, dp_fit.delta,
                               x_bound, config.adassp_y_bound,
                               budget_split=config.adassp_budget_split, randomness=randomness,
                               stream=arm_stream(row, repeat, target_epsilon, "adassp"))
    result["R2_AdaSSP"], result["R2_adj_AdaSSP"] = _test_scores(adassp, data)
  result.update(seconds_ols=public_baselines.get("seconds_ols", math.nan),
                seconds_dp=dp_seconds, seconds_adassp=time.perf_counter() - clock)
  result["note"] = "; ".join(notes)
  private = {"dp_sgd": dp_linear.private_summary(dp_fit), **private_baselines}
  return ArmResult(row=result, dp_fit=dp_fit, adassp_fit=adassp, private=private), baselines


# ----------------------------------------------------------------------------
# Tables and plots


def _format(value) -> str:
  """A number for a log line or a sentence (4 significant digits; n/a, inf)."""
  if isinstance(value, (float, np.floating)):
    if math.isnan(value):
      return "n/a"
    if math.isinf(value):
      return "inf"
    return f"{value:.4g}"
  return str(value)


def sweep_summary(rows: list[dict]) -> list[dict]:
  """Mean and sd over repeats of each method's R2, per target epsilon."""
  frame = pd.DataFrame(rows)
  summary = []
  methods = [c for c in ("R2_OLS_nonprivate", "R2_SGD_nonprivate", "R2_DP", "R2_AdaSSP")
             if c in frame.columns]
  for target, group in frame.groupby("target_epsilon", sort=True):
    entry = {"target_epsilon": target, "epsilon": group["epsilon"].max(),
             "noise_multiplier": group["noise_multiplier"].iloc[0], "repeats": len(group)}
    for column in methods:
      entry[column] = group[column].mean()
      entry[column + "_sd"] = group[column].std(ddof=1) if len(group) > 1 else math.nan
    summary.append(entry)
  return summary


def plot_sweep(summary: list[dict], path: str, title: str) -> None:
  """R2 against epsilon (log axis; epsilon = inf drawn at the right edge)."""
  plt = outputs.pyplot()
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
  if "R2_OLS_nonprivate" in summary[0]:
    ax.axhline(summary[0]["R2_OLS_nonprivate"], color="k", linestyle="--",
               label="OLS (NON-PRIVATE reference)")
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
  outputs.save_figure(fig, path)


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


def _table_columns(config: Config) -> list[str]:
  columns = [c for c in TABLE_COLUMNS
             if config.nonprivate_baselines or c not in NONPRIVATE_COLUMNS]
  columns += ["delta", "noise_multiplier", "clip_norm", "note"]
  if config.epochs is not None:
    columns.insert(columns.index("delta"), "steps")
  if config.epsilons:
    columns.insert(columns.index("epsilon"), "target_epsilon")
  return columns


def _header(config: Config) -> list[str]:
  steps = (f"{config.steps} steps" if config.epochs is None
           else f"{_format(config.epochs)} epochs")
  text = (f"# eQTL: DP linear regression ({config.name} config, source={config.source})\n\n"
          f"Held-out R2 of DP-SGD (R2_DP, {steps}, lr {config.learning_rate}, {config.sampling} "
          "batch) and AdaSSP at the same (epsilon, delta) (R2_AdaSSP). ")
  if config.nonprivate_baselines:
    text += ("**NON-PRIVATE references**, not covered by any guarantee: OLS (R2_OLS_nonprivate, "
             "R2_adj_OLS_nonprivate) and SGD with the same steps without clipping or noise "
             "(R2_SGD_nonprivate), fitted on the same training samples. ")
  text += ("Adjusted R2 uses the test size n_test and P (nan when n_test <= P + 1). epsilon is "
           f"the accountant's ({config.accountant}) at the delta column; what each number "
           "costs and what is not covered: privacy_report.md.")
  return [text, ""]


def write_outputs(workdir: str, config: Config, rows: list[dict],
                  randomness: randomness_lib.PrivateRandomness = randomness_lib.SECURE) -> dict:
  """results.{json,csv,md} (and sweep.png): DP outputs, public numbers and held-out R2 only."""
  os.makedirs(workdir, exist_ok=True)
  if not randomness.secure:  # the data seeds are --seed + offsets: they would reveal the secret
    rows = [{k: v for k, v in r.items() if k != "seed"} for r in rows]
  leaked = sorted({k for r in rows for k in r if k in PRIVATE_KEYS})
  if leaked:
    raise ValueError(f"refusing to release unnoised training statistics {leaked} in results.")
  paths = {name.replace(".", "_"): os.path.join(workdir, name) for name in RESULT_FILES}
  outputs.write_json(paths["results_json"], rows, indent=1)
  outputs.write_csv(paths["results_csv"], rows)
  lines = _header(config)
  summary = None
  if config.epsilons:
    summary = sweep_summary(rows)
    columns = ["target_epsilon", "epsilon", "noise_multiplier", "repeats"]
    if config.nonprivate_baselines:
      columns += ["R2_OLS_nonprivate", "R2_SGD_nonprivate"]
    columns += ["R2_DP", "R2_DP_sd", "R2_AdaSSP", "R2_AdaSSP_sd"]
    lines += [f"Mean (sd) over {config.repeats} repeats:", "", outputs.markdown_table(summary, columns),
              "", "All runs:", ""]
    plot_path = os.path.join(workdir, SWEEP_PLOT)
    first = rows[0]
    plot_sweep(summary, plot_path, f"{config.source}, N={first['N']}, P={first['P']}, "
               f"h2={config.h2}, delta={first['delta']:g}")
    paths["plot"] = plot_path
  lines += [outputs.markdown_table(rows, _table_columns(config)), "", _study_epsilon_sentence(config), ""]
  outputs.atomic_write_text(paths["results_md"], "\n".join(lines))
  return {"outputs": paths, "summary": summary}


# ----------------------------------------------------------------------------
# The privacy report


def _arm_label(row: dict, config: Config) -> str:
  label = f"row {row['row']} (N={row['N']}, P={row['P']})"
  if config.repeats > 1:
    label += f" repeat {row['repeat'] + 1}"
  if config.epsilons or config.target_epsilon is not None:
    label += f" target epsilon {_format(row['target_epsilon'])}"
  return label


def released_files(config: Config) -> list[str]:
  return list(RESULT_FILES) + ([SWEEP_PLOT] if config.epsilons else [])


def privacy_releases(config: Config, arms: list[ArmResult]) -> list[dict]:
  """One report entry per DP fit: its held-out R2 is what the released files hold of it."""
  files = released_files(config)
  releases = []
  for arm in arms:
    label = _arm_label(arm.row, config)
    releases.append(arm.dp_fit.release(f"DP-SGD fit, {label}: held-out R2_DP, R2_adj_DP", files))
    if arm.adassp_fit is not None:
      releases.append(linear.adassp_release(
          arm.adassp_fit, f"AdaSSP fit, {label}: held-out R2_AdaSSP, R2_adj_AdaSSP", files))
  return releases


def not_covered(config: Config, data_not_covered: list[str], arms: list[ArmResult]) -> list[str]:
  """What the guarantee does not cover, in plain words, for privacy_report.json."""
  items = list(dict.fromkeys(data_not_covered))
  if config.nonprivate_baselines:
    items.append("the NON-PRIVATE OLS and SGD baseline columns (R2_OLS_nonprivate, "
                 "R2_adj_OLS_nonprivate, R2_SGD_nonprivate, the OLS line of sweep.png and the "
                 "'non-private OLS under-determined' note): fitted on the training samples "
                 "without clipping or noise, a labelled reference only; drop them with "
                 "--config.nonprivate_baselines=false")
  if any(not math.isfinite(a.dp_fit.epsilon) for a in arms):
    items.append("the epsilon = inf fits (no noise): R2_DP and R2_AdaSSP at epsilon inf are "
                 "non-private")
  items += [
      "the held-out test samples: every R2 is computed on them in the clear (the guarantee "
      "covers the training samples only)",
      "any tuning of learning_rate, steps/epochs, clip_norm or the AdaSSP bounds on "
      "these data (the defaults are the study's settings and depend only on P)",
      "floating-point side channels of Gaussian noise sampling",
  ]
  return items


def privacy_notes(config: Config, arms: list[ArmResult]) -> list[str]:
  """Composition across releases and what a huge epsilon means."""
  by_data: dict[tuple, list[float]] = {}
  for arm in arms:
    costs = [arm.dp_fit.epsilon] + ([arm.adassp_fit.details["epsilon"]] if arm.adassp_fit else [])
    # The epsilon = inf fits are listed as not covered; summing them would hide the others.
    by_data.setdefault((arm.row["row"], arm.row["repeat"]), []).extend(
        c for c in costs if math.isfinite(c))
  worst = max(sum(c) for c in by_data.values())
  notes = [f"Fits on the same training samples compose: within one row and repeat all DP-SGD "
           f"and AdaSSP fits (every target epsilon) use the same samples; by basic composition "
           f"their outputs together cost at most epsilon {_format(worst)} (the largest such "
           "sum over the finite-epsilon fits), with the deltas added."]
  if config.source == "simulated":
    notes.append("Simulated rows and repeats draw independent samples, so they do not compose.")
  else:
    total = sum(sum(c) for c in by_data.values())
    notes.append(f"Source {config.source}: rows and repeats re-use the same donors, so the "
                 f"whole table costs at most {_format(total)} by basic composition.")
  if any(math.isfinite(a.dp_fit.epsilon) and a.dp_fit.epsilon > MEANINGFUL_EPSILON for a in arms):
    notes.append(f"An epsilon above {MEANINGFUL_EPSILON:g} bounds nothing in practice. "
                 + _study_epsilon_sentence(config))
  return notes


# ----------------------------------------------------------------------------
# The experiment


def _write_config(workdir: str, config: Config,
                  randomness: randomness_lib.PrivateRandomness) -> None:
  values = outputs.json_safe(dataclasses.asdict(config))
  outputs.write_json(os.path.join(workdir, "config.json"), randomness_lib.redact(values, randomness))
  report.save_secret_seed(workdir, randomness)


def _write_private(workdir: str, arms: list[ArmResult]) -> str:
  entries = [{"row": a.row["row"], "repeat": a.row["repeat"], "seed": a.row["seed"],
              "target_epsilon": a.row["target_epsilon"], **a.private,
              "dp_sgd_loss_per_step": [float(v) for v in a.dp_fit.private_diagnostics["loss"]]}
             for a in arms]
  return outputs.write_json(os.path.join(report.private_dir(workdir), "diagnostics.json"),
                            entries)


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs every row (and every epsilon of a sweep) and writes the outputs; returns them.

  `config` is a config file's ConfigDict (or a `Config`); a bad field raises ValueError.
  """
  config = make_config(config)
  os.makedirs(workdir, exist_ok=True)
  randomness = randomness_lib.from_flag(config.reproducible_private_randomness, config.seed)
  _write_config(workdir, config, randomness)
  targets = config.epsilons or (config.target_epsilon,)
  jobs = [(i, n, p, r) for i, (n, p) in enumerate(config.rows) for r in range(config.repeats)]
  arms, data_not_covered, warned = [], [], False
  start = time.perf_counter()
  for job, (i, n, p, repeat) in enumerate(jobs):
    seed = config.seed + i + 1000 * repeat
    data = load_row_data(config, n, p, seed)
    data_not_covered += list(data.not_covered)
    if job == 0:
      logging.info("data: %s", data.description)
    baselines = None
    for target in targets:
      row_start = time.perf_counter()
      arm, baselines = evaluate(data, config, randomness, row=i, repeat=repeat,
                                target_epsilon=target, baselines=baselines)
      arm.row = {"row": i, "repeat": repeat, "seed": seed, **arm.row,
                 "seconds": time.perf_counter() - row_start}
      arms.append(arm)
      row = arm.row
      logging.info(
          "row %d/%d%s N=%d P=%d: R2_DP=%.4f R2_AdaSSP=%.4f%s epsilon=%s (sigma=%.3g, "
          "delta=%g) %.1fs%s", i + 1, len(config.rows),
          f" repeat {repeat + 1}/{config.repeats}" if config.repeats > 1 else "",
          row["N"], row["P"], row["R2_DP"], row["R2_AdaSSP"],
          (f" | non-private: R2_OLS={row['R2_OLS_nonprivate']:.4f} "
           f"R2_SGD={row['R2_SGD_nonprivate']:.4f}") if config.nonprivate_baselines else "",
          _format(row["epsilon"]), row["noise_multiplier"], row["delta"], row["seconds"],
          f" [{row['note']}]" if row["note"] else "")
      if not warned and row["epsilon"] > MEANINGFUL_EPSILON:
        warned = True
        logging.warning(
            "epsilon=%s gives no meaningful privacy guarantee; pass e.g. "
            "--config.target_epsilon=1 (or the sweep config) for a real one.",
            _format(row["epsilon"]))
  rows = [arm.row for arm in arms]
  written = write_outputs(workdir, config, rows, randomness)
  private_path = _write_private(workdir, arms)
  report_json, report_md = report.write_privacy_report(
      workdir, privacy_releases(config, arms), randomness,
      not_covered=not_covered(config, data_not_covered, arms),
      notes=privacy_notes(config, arms))
  written["outputs"].update(privacy_report_json=report_json, privacy_report_md=report_md)
  logging.info("wrote %s (private diagnostics: %s) in %.1fs",
               ", ".join(written["outputs"].values()), private_path,
               time.perf_counter() - start)
  return {"rows": rows, "arms": arms, **written}


def summarize(results: dict) -> str:
  """What `main` prints: the results.md table."""
  with open(results["outputs"]["results_md"]) as f:
    return f.read()
