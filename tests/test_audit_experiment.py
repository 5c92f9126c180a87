"""`python -m experiments.audit` end to end on its tiny preset."""

import json
import math

import numpy as np
import pytest

from dpjax import accounting
from dpjax import audit
from experiments import audit as audit_experiment


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("audit")
  # The broken no-clip run is covered by tests/test_audit.py; each run costs a compile here.
  config = audit_experiment.make_config("tiny", epsilons=(1.0,), include_no_clip=False)
  results = audit_experiment.train_and_evaluate(config, str(workdir))
  return config, workdir, results


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
  assert math.isinf(rows["nonprivate"]["membership_inference"]["accountant_epsilon"])

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


def test_markdown_table_has_a_row_per_setting(outputs):
  _, workdir, _ = outputs
  table = (workdir / "results.md").read_text().splitlines()
  assert len(table) == 2 + 2
  assert table[2].startswith("| nonprivate | inf |") and table[3].startswith("| eps=1 | 0.99")
  assert json.loads((workdir / "config.json").read_text())["epsilons"] == [1.0]


PNG_HEADER = b"\x89PNG\r\n\x1a\n"


def test_figures_are_pngs_beside_the_tables_and_named_in_results(outputs):
  _, workdir, results = outputs
  names = ["roc_curves.png", "epsilon_lower_bound.png"]
  assert results["plots"] == names
  assert json.loads((workdir / "results.json").read_text())["plots"] == names
  for name in names:
    data = (workdir / name).read_bytes()
    assert data[:8] == PNG_HEADER and len(data) > 5000


def test_results_json_holds_no_per_example_membership_scores(outputs):
  config, workdir, _ = outputs
  def longest_list(value):
    if isinstance(value, dict):
      return max((longest_list(v) for v in value.values()), default=0)
    if isinstance(value, list):
      return max([len(value)] + [longest_list(v) for v in value])
    return 0
  assert longest_list(json.loads((workdir / "results.json").read_text())) < config.mia_examples
  assert not (workdir / "private").exists()


def test_roc_figure_is_log_log_with_the_diagonal_and_zeros_floored():
  rng = np.random.default_rng(0)
  is_member = rng.random(200) < 0.5
  scores = rng.normal(size=200) + is_member
  fpr, tpr = audit.roc_curve(scores, is_member)
  floor = 1 / 200
  figure = audit_experiment.roc_figure(
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
  audit_experiment._pyplot().close(figure)  # pylint: disable=protected-access


def test_epsilon_figure_has_the_claim_line_and_draws_an_infinite_bound_on_top(tmp_path):
  figure = audit_experiment.epsilon_figure(
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
  name = audit_experiment._save(figure, str(tmp_path), "eps.png")  # pylint: disable=protected-access
  assert (tmp_path / name).read_bytes()[:8] == PNG_HEADER


def test_bad_config_values_name_the_flag():
  with pytest.raises(ValueError, match=r"--num_models=2 must be >= 3"):
    audit_experiment.make_config("tiny", num_models=2)
  with pytest.raises(ValueError, match=r"--epsilons\[0\]=-1"):
    audit_experiment.make_config("tiny", epsilons=(-1.0,))
