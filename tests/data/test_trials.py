"""Tests for dpjax.data.trials: SPRINT loader, simulator, pbcseq and BtheB, splits."""

import numpy as np
import pandas as pd
import pytest

from dpjax.data import trials

VISITS = trials.SPRINT_VISITS


def _participant_rows(maskid, sbp, dbp, drugs, visits=VISITS):
  return [dict(MASKID=maskid, VISITCODE=v, SBP=s, DBP=d, N_BPCLASSES=n)
          for v, s, d, n in zip(visits, sbp, dbp, drugs)]


@pytest.fixture
def sprint_dir(tmp_path):
  """A tiny SPRINT Challenge export: bp.csv (long) and baseline.csv, in the real column layout."""
  rng = np.random.default_rng(0)
  complete = {  # MASKID -> (SBP, DBP, N_BPCLASSES) per visit, all observed.
      "S00010": (rng.integers(110, 170, 12), rng.integers(60, 95, 12), rng.integers(0, 5, 12)),
      "S00007": (rng.integers(110, 170, 12), rng.integers(60, 95, 12), rng.integers(0, 5, 12)),
  }
  rows = []
  for maskid, (sbp, dbp, drugs) in complete.items():
    rows += _participant_rows(maskid, sbp, dbp, drugs)
  # Visits beyond 27M exist in the real file and must be ignored.
  rows += _participant_rows("S00007", [150], [90], [3], visits=["30M"])

  # DBP missing at 6M and RZ; N_BPCLASSES missing at 27M: filled from neighbours.
  gappy_sbp = np.arange(130, 142)
  gappy_dbp = np.arange(70, 82).astype(float)
  gappy_drugs = np.array([1, 1, 2, 2, 2, 3, 3, 3, 3, 3, 3, 4], dtype=float)
  gappy_dbp[[0, 4]] = np.nan
  gappy_drugs[11] = np.nan
  rows += _participant_rows("S00022", gappy_sbp, gappy_dbp, gappy_drugs)

  # Dropped: an SBP value missing (NaN) at 9M, and the 15M row absent altogether.
  sbp_nan = np.full(12, 140.0)
  sbp_nan[5] = np.nan
  rows += _participant_rows("S00038", sbp_nan, np.full(12, 80), np.full(12, 2))
  rows += [r for r in _participant_rows("S00045", np.full(12, 140), np.full(12, 80),
                                        np.full(12, 2)) if r["VISITCODE"] != "15M"]
  # Dropped: complete BP but no baseline row, so no arm.
  rows += _participant_rows("S00099", np.full(12, 140), np.full(12, 80), np.full(12, 2))

  bp = pd.DataFrame(rows).sample(frac=1.0, random_state=1)  # The real file is not in visit order.
  bp.to_csv(tmp_path / "bp.csv", index=False)
  baseline = pd.DataFrame(dict(
      MASKID=["S00045", "S00022", "S00010", "S00038", "S00007"],
      INTENSIVE=[1, 1, 0, 0, 1],
      NEWSITEID=[1, 2, 3, 4, 5],
      SBP=[140, 130, 150, 140, 145]))
  baseline.to_csv(tmp_path / "baseline.csv", index=False)

  expected_x = {
      "S00007": np.stack(complete["S00007"]).astype(float),
      "S00010": np.stack(complete["S00010"]).astype(float),
      "S00022": np.stack([
          gappy_sbp,
          np.concatenate([[71], [71, 72, 73], [73], np.arange(75, 82)]),  # RZ <- 1M, 6M <- 3M.
          np.concatenate([gappy_drugs[:11], [3]]),  # 27M <- 24M.
      ]).astype(float),
  }
  return tmp_path, expected_x


def test_load_sprint_reproduces_the_study_preprocessing(sprint_dir):
  data_dir, expected_x = sprint_dir
  data = trials.load_sprint(str(data_dir))

  assert data.ids == ("S00007", "S00010", "S00022")
  assert data.x.shape == (3, 3, 12) and data.x.dtype == np.float32
  assert data.arm.dtype == np.int32
  np.testing.assert_array_equal(data.arm, [1, 0, 1])
  scale = np.array([233.0, 137.0, 7.0])
  for row, maskid in enumerate(data.ids):
    np.testing.assert_allclose(data.x[row], expected_x[maskid] / scale[:, None], rtol=1e-6)
  assert data.visit_names == VISITS
  assert data.feature_names == ("SBP", "DBP", "N_BPCLASSES")
  assert data.not_covered == (trials.SPRINT_SCALE_NOTE,)


def test_load_sprint_clips_to_the_fixed_scale(sprint_dir):
  data_dir, _ = sprint_dir
  bp = pd.read_csv(data_dir / "bp.csv", dtype={"MASKID": str})
  bp.loc[(bp["MASKID"] == "S00010") & (bp["VISITCODE"] == "1M"), "SBP"] = 260
  bp.to_csv(data_dir / "bp.csv", index=False)
  data = trials.load_sprint(str(data_dir))
  assert data.x.max() <= 1.0
  assert data.x[data.ids.index("S00010"), 0, VISITS.index("1M")] == 1.0


def test_load_sprint_finds_files_in_a_sprint_subfolder(sprint_dir, tmp_path_factory):
  data_dir, _ = sprint_dir
  parent = tmp_path_factory.mktemp("root")
  (parent / "sprint").mkdir()
  for name in ("bp.csv", "baseline.csv"):
    (parent / "sprint" / name).write_bytes((data_dir / name).read_bytes())
  assert trials.load_sprint(str(parent)).x.shape == (3, 3, 12)


def test_load_sprint_missing_files_explain_controlled_access(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"baseline\.csv.*controlled-access.*BioLINCC"):
    trials.load_sprint(str(tmp_path))


def test_load_sprint_names_missing_columns(sprint_dir):
  data_dir, _ = sprint_dir
  pd.read_csv(data_dir / "bp.csv").drop(columns=["DBP"]).to_csv(data_dir / "bp.csv", index=False)
  with pytest.raises(ValueError, match=r"bp\.csv lacks columns \['DBP'\]"):
    trials.load_sprint(str(data_dir))


@pytest.fixture(scope="module")
def simulated():
  return trials.simulate_sprint_like(seed=0, n=4000)


def test_simulator_layout_and_range(simulated):
  assert simulated.x.shape == (4000, 3, 12) and simulated.x.dtype == np.float32
  assert simulated.arm.dtype == np.int32 and set(np.unique(simulated.arm)) == {0, 1}
  assert 0.0 <= simulated.x.min() and simulated.x.max() <= 1.0
  np.testing.assert_array_equal(simulated.scale, [233.0, 137.0, 7.0])
  assert simulated.not_covered == ()


def test_simulator_reproduces_sprint_arm_separation(simulated):
  mmhg = trials.to_original_units(simulated.x, simulated)
  intensive, standard = mmhg[simulated.arm == 1], mmhg[simulated.arm == 0]
  month12 = VISITS.index("12M")
  # Randomisation: arms alike at RZ (NEJM Table 1: 139.7 mmHg, 1.8 drug classes).
  for arm_data in (intensive, standard):
    assert abs(arm_data[:, 0, 0].mean() - 139.7) < 1.5
    assert abs(arm_data[:, 2, 0].mean() - 1.8) < 0.1
  # One year: 121.4 vs 136.2 mmHg, 2.8 vs 1.8 drug classes.
  assert abs(intensive[:, 0, month12].mean() - 121.4) < 1.5
  assert abs(standard[:, 0, month12].mean() - 136.2) < 1.5
  assert abs(intensive[:, 2, month12].mean() - 2.8) < 0.15
  assert abs(standard[:, 2, month12].mean() - 1.8) < 0.15
  assert intensive[:, 1, month12].mean() < standard[:, 1, month12].mean() - 5
  # Medians through the helper agree with numpy on the unscaled values.
  np.testing.assert_allclose(
      trials.median_trajectory(simulated.x[simulated.arm == 1], 0, simulated.scale),
      np.median(intensive[:, 0, :], axis=0), atol=1e-3)


def test_simulator_same_seed_same_data():
  first, again = trials.simulate_sprint_like(7, n=50), trials.simulate_sprint_like(7, n=50)
  other = trials.simulate_sprint_like(8, n=50)
  np.testing.assert_array_equal(first.x, again.x)
  np.testing.assert_array_equal(first.arm, again.arm)
  assert not np.array_equal(first.x, other.x)


def test_median_trajectory_matches_numpy_with_scalar_and_vector_scale():
  x = np.random.default_rng(0).uniform(size=(9, 2, 4))
  expected = np.median(x[:, 1, :] * 5.0, axis=0)
  np.testing.assert_allclose(trials.median_trajectory(x, 1, 5.0), expected)
  np.testing.assert_allclose(trials.median_trajectory(x, 1, np.array([3.0, 5.0])), expected)
  np.testing.assert_allclose(trials.median_trajectory(x, 1, 5.0, log1p=True),
                             np.median(np.expm1(x[:, 1, :] * 5.0), axis=0))


def test_fill_forward_then_backward():
  values = np.array([[np.nan, 1.0, np.nan, np.nan, 4.0], [np.nan] * 5])
  filled = trials._fill_forward_then_backward(values)
  np.testing.assert_array_equal(filled[0], [1.0, 1.0, 1.0, 1.0, 4.0])
  assert np.isnan(filled[1]).all()


def test_train_test_split_is_disjoint_stratified_and_reproducible(simulated):
  train, test = trials.train_test_split(simulated, 0.25, seed=3)
  assert train.num_participants + test.num_participants == simulated.num_participants
  assert abs(test.num_participants - 1000) <= 1
  # Rows are whole participants, none shared: match them back by content.
  rows = lambda d: {r.tobytes() for r in d.x}
  assert rows(train) | rows(test) == rows(simulated)
  assert not rows(train) & rows(test)
  assert abs(train.arm.mean() - simulated.arm.mean()) < 0.01
  assert abs(test.arm.mean() - simulated.arm.mean()) < 0.01
  again, _ = trials.train_test_split(simulated, 0.25, seed=3)
  np.testing.assert_array_equal(train.x, again.x)


def test_train_test_split_rejects_bad_fraction(simulated):
  with pytest.raises(ValueError, match="test_fraction"):
    trials.train_test_split(simulated, 1.5, seed=0)


def test_load_trial_dataset_names():
  data = trials.load_trial_dataset("sprint_sim", seed=1)
  assert data.x.shape == (trials.SPRINT_NUM_PARTICIPANTS, 3, 12)
  with pytest.raises(ValueError, match=r"'mnist'.*sprint_sim.*pbcseq"):
    trials.load_trial_dataset("mnist")


def test_trial_data_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="arm has shape"):
    trials.TrialData(x=np.zeros((3, 1, 2), np.float32), arm=np.zeros(2, np.int32),
                     feature_names=("a",), visit_names=("v0", "v1"), scale=np.ones(1),
                     description="")


def test_load_pbcseq_against_raw_rows(shared_data_dir):
  data = trials.load_pbcseq(str(shared_data_dir))
  assert data.x.shape == (212, 6, 4) and data.x.dtype == np.float32
  assert not np.isnan(data.x).any()
  assert 0.0 <= data.x.min() and data.x.max() <= 1.0
  assert 80 < data.arm.sum() < 130
  assert data.not_covered == ()  # public clinical bounds by default

  raw = pd.read_csv(shared_data_dir / "trials" / "survival_pbcseq.csv")
  original = trials.to_original_units(data.x, data)
  for row, patient in enumerate(data.ids):
    rows = raw[raw["id"] == int(patient)]
    first_visit = rows[rows["day"] == 0].iloc[0]
    # Baseline comes straight from the day-0 row where that lab was measured.
    for feature, name in enumerate(data.feature_names):
      if not np.isnan(first_visit[name]):
        expected = min(first_visit[name], trials.PBCSEQ_CLINICAL_BOUNDS[name])  # clipped
        assert original[row, feature, 0] == pytest.approx(expected, rel=1e-5)
    # 1 = D-penicillamine; this export codes it 1 (placebo 0).
    assert data.arm[row] == first_visit["trt"]
    assert rows["day"].max() >= 730 - 90


def test_load_pbcseq_data_max_scaling_is_flagged_not_covered(shared_data_dir):
  data = trials.load_pbcseq(str(shared_data_dir), scaling="data_max")
  assert data.x.max() == pytest.approx(1.0)
  assert data.not_covered == (trials.PBCSEQ_DATA_MAX_NOT_COVERED,)
  assert "NOT covered" in data.not_covered[0] and "NOT private" in data.description
  # Subsets (the train / test split) carry the flag along.
  assert trials.train_test_split(data, 0.25, seed=0)[0].not_covered == data.not_covered


def _write_pbcseq(directory, bili_of_patient_3=2.0):
  """A tiny survival_pbcseq.csv: four patients seen at days 0, 182, 365, 730."""
  rows = []
  for patient in (1, 2, 3, 4):
    for visit, day in enumerate(trials.PBCSEQ_VISIT_DAYS):
      rows.append({"id": patient, "trt": 1 + patient % 2, "day": day,
                   "bili": bili_of_patient_3 if patient == 3 else 1.0 + visit,
                   "albumin": 3.5 + 0.1 * patient, "alk.phos": 500.0 * patient,
                   "ast": 50.0 + visit, "platelet": 200.0 + 10 * patient, "protime": 11.0})
  (directory / "trials").mkdir(parents=True, exist_ok=True)
  pd.DataFrame(rows).to_csv(directory / "trials" / trials.PBCSEQ_FILE, index=False)
  return str(directory)


def test_pbcseq_clinical_scale_is_public_and_one_record_changes_only_its_row(tmp_path):
  bounds = np.array([trials.PBCSEQ_CLINICAL_BOUNDS[f] for f in trials.PBCSEQ_FEATURES])
  log1p = np.isin(trials.PBCSEQ_FEATURES, trials.PBCSEQ_LOG1P_FEATURES)
  base = trials.load_pbcseq(_write_pbcseq(tmp_path / "a"))
  changed = trials.load_pbcseq(_write_pbcseq(tmp_path / "b", bili_of_patient_3=400.0))
  np.testing.assert_array_equal(base.scale, np.where(log1p, np.log1p(bounds), bounds))
  np.testing.assert_array_equal(changed.scale, base.scale)  # independent of the data
  assert base.not_covered == () and changed.not_covered == ()
  assert 0.0 <= changed.x.min() and changed.x.max() <= 1.0
  patient_3 = base.ids.index("3")
  others = [i for i in range(base.num_participants) if i != patient_3]
  np.testing.assert_array_equal(changed.x[others], base.x[others])
  # 400 mg/dL is clipped to the bound, which maps to exactly 1.
  np.testing.assert_allclose(changed.x[patient_3, 0], 1.0)
  np.testing.assert_allclose(trials.to_original_units(changed.x, changed)[patient_3, 0], 50.0,
                             rtol=1e-5)
  # The data-dependent option moves every patient's row when one patient changes.
  base_max = trials.load_pbcseq(str(tmp_path / "a"), scaling="data_max")
  changed_max = trials.load_pbcseq(str(tmp_path / "b"), scaling="data_max")
  assert not np.array_equal(changed_max.scale, base_max.scale)
  assert not np.array_equal(changed_max.x[others], base_max.x[others])
  assert changed_max.not_covered == (trials.PBCSEQ_DATA_MAX_NOT_COVERED,)
  with pytest.raises(ValueError, match="scaling"):
    trials.load_pbcseq(str(tmp_path / "a"), scaling="train_max")


def test_pbcseq_clinical_bounds_cover_normal_ranges():
  bounds = trials.PBCSEQ_CLINICAL_BOUNDS
  assert set(bounds) == set(trials.PBCSEQ_FEATURES)
  # Each bound lies well above the upper limit of the normal adult range.
  upper_normal = {"bili": 1.2, "albumin": 5.4, "alk.phos": 130.0, "ast": 40.0,
                  "platelet": 450.0, "protime": 13.0}
  assert all(bounds[f] > upper_normal[f] for f in bounds)


def test_load_pbcseq_missing_file_names_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="survival_pbcseq.csv"):
    trials.load_pbcseq(str(tmp_path))


def test_load_btheb(shared_data_dir):
  data = trials.load_btheb(str(shared_data_dir))
  assert data.x.shape == (97, 1, 5)
  raw = pd.read_csv(shared_data_dir / "trials" / "HSAUR_BtheB.csv")
  first = raw.set_index("rownames").loc[int(data.ids[0])]
  assert data.x[0, 0, 0] * 63 == pytest.approx(first["bdi.pre"], rel=1e-5)
  assert data.arm[0] == (first["treatment"] == "BtheB")
  assert data.not_covered == () and 0.0 <= data.x.min() and data.x.max() <= 1.0
  np.testing.assert_array_equal(data.scale, [63.0])  # the instrument's ceiling, public


def test_pbcseq_arm_accepts_r_coding_and_the_export_coding(tmp_path):
  r_coding = trials._pbcseq_arm(pd.Series([1, 2, 2, 1]), tmp_path)
  export_coding = trials._pbcseq_arm(pd.Series([1, 0, 0, 1]), tmp_path)
  np.testing.assert_array_equal(r_coding, [1, 0, 0, 1])
  np.testing.assert_array_equal(export_coding, [1, 0, 0, 1])
  with pytest.raises(ValueError, match="trt must be coded"):
    trials._pbcseq_arm(pd.Series([1, 3]), tmp_path)
