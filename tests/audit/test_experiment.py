"""`python -m experiments.audit` end to end on its tiny config, its figures and its config."""

import json
import math

import numpy as np
import pytest

from dpjax import accounting
from dpjax import auditing
from experiments.audit import experiment
from experiments.audit import figures
from experiments.audit.configs import full
from experiments.audit.configs import quick
from experiments.audit.configs import tiny
from experiments.common import outputs as outputs_lib


def tiny_config(**overrides) -> experiment.Config:
  config = tiny.get_config()
  config.update(overrides)
  return experiment.Config.from_config(config)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("audit")
  # The broken no-clip run is covered by test_canary.py; each run costs a compile here.
  config = tiny.get_config()
  config.target_epsilons = (1.0,)
  config.include_no_clip = False
  results = experiment.train_and_evaluate(config, str(workdir))
  return experiment.Config.from_config(config), workdir, results


@pytest.mark.slow
def test_results_cover_every_setting_with_consistent_numbers(outputs):
  config, workdir, results = outputs
  on_disk = json.loads((workdir / "results.json").read_text())
  rows = {row["setting"]: row for row in on_disk["rows"]}
  assert list(rows) == ["nonprivate", "eps=1"]
  assert len(results["rows"]) == 2
  for row in rows.values():
    for attack in ("loss", "lira_online", "lira_offline"):
      metrics = row["membership_inference"][attack]
      assert 0 <= metrics["auc"] <= 1 and 0 <= metrics["tpr_at_fpr_0.001"] <= metrics["tpr_at_fpr_0.01"] <= 1
      assert metrics["num_members"] == config.num_models * config.mia_examples // 2
  assert "canary" not in rows["nonprivate"]
  # Non-finite floats are written as strings ("inf"), so that results.json is valid JSON.
  assert math.isinf(float(rows["nonprivate"]["membership_inference"]["accountant_epsilon"]))

  canary = rows["eps=1"]["canary"]
  assert canary["num_canaries"] == config.num_canaries and canary["num_steps"] == config.canary_steps
  # The reported accountant epsilon is the ledger's, recomputed independently here.
  phase = accounting.PrivacyPhase(canary["noise_multiplier"], canary["dataset_size"],
                                  config.canary_batch_size, steps=config.canary_steps)
  assert canary["accountant_epsilon"] == pytest.approx(accounting.compute_epsilon([phase], 1e-5))
  assert canary["accountant_epsilon"] == pytest.approx(1.0, rel=0.03)
  assert canary["epsilon_lower_bound"] <= canary["accountant_epsilon"]
  assert rows["eps=1"]["membership_inference"]["accountant_epsilon"] == pytest.approx(1.0, rel=0.03)
  assert rows["eps=1"]["membership_inference"]["noise_multiplier"] > 0


@pytest.mark.slow
def test_markdown_table_has_a_row_per_setting(outputs):
  _, workdir, _ = outputs
  table = (workdir / "results.md").read_text().splitlines()
  assert len(table) == 2 + 2
  assert table[2].startswith("| nonprivate | inf |") and table[3].startswith("| eps=1 | 0.99")
  assert json.loads((workdir / "config.json").read_text())["target_epsilons"] == [1.0]


PNG_HEADER = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_figures_are_pngs_beside_the_tables_and_named_in_results(outputs):
  _, workdir, results = outputs
  names = ["roc_curves.png", "epsilon_lower_bound.png"]
  assert results["plots"] == names
  assert json.loads((workdir / "results.json").read_text())["plots"] == names
  for name in names:
    data = (workdir / name).read_bytes()
    assert data[:8] == PNG_HEADER and len(data) > 5000


@pytest.mark.slow
def test_results_json_holds_no_per_example_membership_scores(outputs):
  config, workdir, _ = outputs
  def longest_list(value):
    if isinstance(value, dict):
      return max((longest_list(v) for v in value.values()), default=0)
    if isinstance(value, list):
      return max([len(value)] + [longest_list(v) for v in value])
    return 0
  assert longest_list(json.loads((workdir / "results.json").read_text())) < config.mia_examples


# "loss" is not here: it names the loss-threshold attack in the tables.
UNNOISED_STATISTICS = ("train_accuracy", "train_loss", "mean_grad_norm", "clipped_fraction",
                       "batch_size", "num_nonfinite")


def all_keys(value) -> set:
  if isinstance(value, dict):
    return set(value).union(*(all_keys(v) for v in value.values()))
  if isinstance(value, list):
    return set().union(*(all_keys(v) for v in value))
  return set()


@pytest.mark.slow
def test_results_hold_no_unnoised_training_statistic(outputs):
  _, workdir, results = outputs
  for name in ("results.json", "config.json"):
    assert not all_keys(json.loads((workdir / name).read_text())) & set(UNNOISED_STATISTICS), name
  table = (workdir / "results.md").read_text()
  assert not any(key in table or key.replace("_", " ") in table for key in UNNOISED_STATISTICS)
  for row in results["rows"]:
    assert "heldout_accuracy" in row["membership_inference"]
  private = json.loads((workdir / "private" / "diagnostics.json").read_text())
  shadows = private["shadow_models_on_their_training_examples"]
  assert set(shadows) == {"nonprivate", "eps=1"}
  assert all(0 <= entry["train_accuracy"] <= 1 for entry in shadows.values())


@pytest.mark.slow
def test_privacy_report_names_every_audited_training_and_the_released_files(outputs):
  config, workdir, results = outputs
  report = json.loads((workdir / "privacy_report.json").read_text())
  assert report["secure_randomness"] is True
  names = [r["name"] for r in report["releases"]]
  assert names == ["nonprivate: 4 membership-inference models (parameters not released)",
                   "eps=1: 1 canary-audit model (parameters not released)",
                   "eps=1: 4 membership-inference models (parameters not released)"]
  by_name = dict(zip(names, report["releases"]))
  assert by_name[names[0]]["epsilon"] == "inf"
  assert by_name[names[1]]["epsilon"] == pytest.approx(results["rows"][1]["canary"]["accountant_epsilon"])
  assert (by_name[names[1]]["steps"], by_name[names[2]]["steps"]) == (config.canary_steps,
                                                                      config.mia_steps)
  assert by_name[names[2]]["clip_norm"] == 1.0 and by_name[names[2]]["noise_multiplier"] > 0
  for release in report["releases"]:
    assert set(release["files"]) == {"results.json", "results.md", *results["plots"]}
    assert all((workdir / name).exists() for name in release["files"])
  assert any("not DP outputs" in item for item in report["not_covered"])
  assert (workdir / "privacy_report.md").exists()
  assert not (workdir / "private" / "secret_seed.json").exists()
  assert json.loads((workdir / "config.json").read_text())["reproducible_private_randomness"] is False


@pytest.mark.slow
def test_the_studys_canary_audit_fires_on_its_planted_bug_and_not_on_correct_dp_sgd():
  """Both directions on one tiny config claiming epsilon 1: a correct run stays at or below
  the claim, the no-clip run (noise calibrated to clip norm 1, clipping at 1e6) exceeds it.
  100 steps so that nearly every included canary is sampled at least once. The private draws
  are reproducible (seed 0): with fresh OS randomness the broken run's lower bound varies from
  run to run and once fell 0.01 short of the 0.3 margin (CI, session 5)."""
  config = tiny_config(canary_steps=100, reproducible_private_randomness=True)
  correct = experiment.run_canary_audit(config, 1.0, "none", "eps=1")
  broken = experiment.run_canary_audit(config, 1.0, "no_clip", "no_clip")
  for result in (correct, broken):
    assert result["accountant_epsilon"] == pytest.approx(1.0, rel=0.03)
  assert correct["epsilon_lower_bound"] <= correct["accountant_epsilon"]
  assert not correct["exceeds_accountant"]
  assert broken["epsilon_lower_bound"] > broken["accountant_epsilon"] + 0.3
  assert broken["exceeds_accountant"]


def test_roc_figure_is_log_log_with_the_diagonal_and_zeros_floored():
  rng = np.random.default_rng(0)
  is_member = rng.random(200) < 0.5
  scores = rng.normal(size=200) + is_member
  fpr, tpr = auditing.roc_curve(scores, is_member)
  floor = 1 / 200
  figure = figures.roc_figure(
      {"a": [("loss", fpr, tpr)], "b": [("loss", fpr, tpr), ("lira", fpr, tpr ** 2)]}, floor)
  axes = figure.axes
  assert len(axes) == 2
  for axis in axes:
    assert axis.get_xscale() == "log" and axis.get_yscale() == "log"
    assert axis.get_xlim() == pytest.approx((floor, 1)) and axis.get_ylim() == pytest.approx((floor, 1))
    diagonal = axis.get_lines()[0]
    assert diagonal.get_label() == "random guess"
    np.testing.assert_allclose(diagonal.get_xdata(), diagonal.get_ydata())
    curves = [line for line in axis.get_lines()[1:] if not line.get_label().startswith("_")]
    for line in curves:  # the zeros of fpr and tpr sit on the floor, inside the log axes
      assert np.min(line.get_xdata()) == floor and np.min(line.get_ydata()) == floor
  assert [t.get_text() for t in axes[1].get_legend().get_texts()] == ["random guess", "loss", "lira"]
  outputs_lib.pyplot().close(figure)


def test_epsilon_figure_has_the_claim_line_and_draws_an_infinite_bound_on_top(tmp_path):
  figure = figures.epsilon_figure(
      ["eps=1", "eps=4", "no_clip"], np.array([1.0, 4.0, 1.0]), np.array([0.0, 0.5, np.inf]),
      np.array([False, False, True]), 0.95)
  axis = figure.axes[0]
  top = axis.get_ylim()[1]
  assert axis.get_xlim() == (0, top) and top == pytest.approx(1.15 * 4.0)
  claim = axis.get_lines()[0]
  np.testing.assert_allclose(claim.get_xdata(), claim.get_ydata())
  correct, bug = axis.collections[1:]  # after the shaded "exceeds the claim" region
  np.testing.assert_allclose(correct.get_offsets(), [[1.0, 0.0], [4.0, 0.5]])
  np.testing.assert_allclose(bug.get_offsets(), [[1.0, top]])
  assert "no_clip: inf" in [t.get_text() for t in axis.texts]
  name = figures.save(figure, str(tmp_path), "eps.png")
  assert (tmp_path / name).read_bytes()[:8] == PNG_HEADER


def test_reproducible_private_randomness_hides_the_seed_in_the_released_config():
  config = tiny_config(seed=7, reproducible_private_randomness=True)
  assert config.randomness().secret_seed == 7
  public = config.public_dict()
  assert public["seed"] != 7 and public["reproducible_private_randomness"] is True
  assert tiny_config(seed=7).randomness().secure


def test_bad_config_values_name_the_field():
  with pytest.raises(ValueError, match=r"--config.num_models=2 must be >= 3"):
    tiny_config(num_models=2)
  with pytest.raises(ValueError, match=r"--config.target_epsilons\[0\]=-1"):
    tiny_config(target_epsilons=(-1.0,))
  with pytest.raises(ValueError, match=r"--config.mia_examples=5000: digits has only 1797"):
    tiny_config(mia_examples=5000)
  with pytest.raises(ValueError, match=r"--config.accountant='moments' is unknown; valid: "):
    tiny_config(accountant="moments")


def test_unknown_or_missing_fields_are_refused_with_the_valid_ones():
  values = tiny.get_config().to_dict()
  with pytest.raises(ValueError, match=r"unknown config field\(s\) \['epsilons'\].*valid fields: target_epsilons, "):
    experiment.Config.from_config({**values, "epsilons": (1.0,)})
  del values["num_models"]
  with pytest.raises(ValueError, match=r"missing: \['num_models'\]"):
    experiment.Config.from_config(values)
  with pytest.raises(AttributeError):  # the config files are locked by the command line
    tiny.get_config().lock().epsilons = (1.0,)


@pytest.mark.parametrize("config_file", [quick, tiny, full])
def test_every_config_file_makes_a_valid_config(config_file):
  experiment.Config.from_config(config_file.get_config())


@pytest.mark.parametrize("config_file", [quick, full])
def test_the_tiny_argument_shrinks_a_config_to_the_tiny_sizes(config_file):
  shrunk, small = config_file.get_config("tiny"), tiny.get_config()
  assert shrunk.to_dict() == small.to_dict()
  with pytest.raises(ValueError, match="unknown argument; valid: tiny"):
    config_file.get_config("huge")
