"""`python -m experiments.audit` end to end on its tiny preset."""

import json
import math

import pytest

from dpjax import accounting
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


def test_bad_config_values_name_the_flag():
  with pytest.raises(ValueError, match=r"--num_models=2 must be >= 3"):
    audit_experiment.make_config("tiny", num_models=2)
  with pytest.raises(ValueError, match=r"--epsilons\[0\]=-1"):
    audit_experiment.make_config("tiny", epsilons=(-1.0,))
