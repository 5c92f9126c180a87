"""Tests for experiments/eqtl.py on tiny configurations."""

import dataclasses
import json
import logging
import math

from bed_reader import to_bed
import numpy as np
import pandas as pd
import pytest
from sklearn import linear_model

from dpjax import accounting
from experiments import eqtl

TINY = dataclasses.replace(eqtl.preset_config("quick"), rows=((120, 5), (90, 40)), steps=60,
                           learning_rate=0.1)


def _write_plink(prefix, genotypes, sample_ids):
  n, p = genotypes.shape
  to_bed(f"{prefix}.bed", genotypes, properties={
      "iid": list(sample_ids), "chromosome": ["22"] * p,
      "bp_position": [1000 * (j + 1) for j in range(p)], "sid": [f"rs{j}" for j in range(p)]})
  return prefix


def test_quick_config_writes_the_tables_with_the_right_columns_and_values(tmp_path):
  result = eqtl.train_and_evaluate(TINY, str(tmp_path))
  rows = json.loads((tmp_path / "results.json").read_text())
  csv = pd.read_csv(tmp_path / "results.csv")
  markdown = (tmp_path / "results.md").read_text()
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["steps"] == 60 and config["rows"] == [[120, 5], [90, 40]]
  assert len(rows) == len(csv) == 2
  for column in eqtl.TABLE_COLUMNS:
    assert column in rows[0] and column in csv.columns and f" {column} |" in markdown
  first = rows[0]
  for column in ("R2", "R2_DP", "R2_adj", "R2_adj_DP", "epsilon", "R2_AdaSSP",
                 "R2_adj_AdaSSP", "R2_SGD"):
    assert math.isfinite(first[column]), column
  # R2 is OLS on the held-out samples: scikit-learn on the same data gives the same number.
  data = eqtl.load_row_data(TINY, 120, 5, first["seed"])
  reference = linear_model.LinearRegression().fit(data.x_train, data.y_train)
  assert first["R2"] == pytest.approx(reference.score(data.x_test, data.y_test), abs=1e-6)
  assert first["n_test"] == data.y_test.size == 24
  assert first["R2_adj"] == pytest.approx(1 - (1 - first["R2"]) * 23 / (24 - 5 - 1))
  # The epsilon column is the accountant's for full batches, sigma 0.5, 60 steps, delta 1e-6.
  phase = accounting.PrivacyPhase(0.5, data.y_train.size, data.y_train.size, "full", steps=60)
  assert first["epsilon"] == pytest.approx(accounting.compute_epsilon([phase], 1e-6))
  # P = 40 with 18 test samples: adjusted R2 is undefined, reported as such, not a number.
  second = rows[1]
  assert second["R2_adj"] is None and "n_test=18" in second["note"]
  assert result["rows"][1]["R2_DP"] == pytest.approx(second["R2_DP"])


def test_same_seed_same_table(tmp_path):
  config = dataclasses.replace(TINY, rows=((80, 4),), steps=20)
  a = eqtl.train_and_evaluate(config, str(tmp_path / "a"))["rows"]
  b = eqtl.train_and_evaluate(config, str(tmp_path / "b"))["rows"]
  for key in ("R2", "R2_DP", "R2_AdaSSP", "epsilon"):
    assert a[0][key] == b[0][key]


def test_sweep_writes_summary_and_plot(tmp_path):
  config = dataclasses.replace(TINY, rows=((100, 4),), steps=30, epsilons=(1.0, math.inf),
                               delta=1e-4, repeats=2)
  result = eqtl.train_and_evaluate(config, str(tmp_path))
  rows = json.loads((tmp_path / "results.json").read_text())
  assert len(rows) == 4  # 2 repeats x 2 epsilons
  finite = [r for r in rows if r["target_epsilon"] == 1.0]
  assert all(0.98 <= r["epsilon"] <= 1.0 for r in finite)
  assert all(r["epsilon"] == "inf" and r["noise_multiplier"] == 0
             for r in rows if r["target_epsilon"] == "inf")
  assert [s["repeats"] for s in result["summary"]] == [2, 2]
  png = (tmp_path / "sweep.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
  assert "Mean (sd) over 2 repeats" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("values,message", [
    ({"preset": "huge"}, "--preset='huge' is unknown"),
    ({"preset": "quick", "p": 0}, "--p=0"),
    ({"preset": "quick", "n": 1000, "p": -3}, "--p=-3"),
    ({"preset": "quick", "delta": 1.0}, "--delta=1.0"),
    ({"preset": "quick", "source": "vcf"}, "--source='vcf'"),
    ({"preset": "quick", "sampling": "poisson"}, "--batch_size"),
    ({"preset": "quick", "source": "plink_expression"}, "--gene_id"),
])
def test_bad_flags_are_named(values, message):
  with pytest.raises(ValueError, match=message):
    eqtl.config_from_flags(values).validate()


def test_flags_override_the_preset():
  config = eqtl.config_from_flags({"preset": "paper", "n": 500, "p": 20, "target_epsilon": 2.0,
                                   "epsilons": ["1", "inf"]})
  assert config.rows == ((500, 20),) and config.target_epsilon == 2.0
  assert config.epsilons == (1.0, math.inf) and config.delta == 1e-6
  assert eqtl.config_from_flags({"preset": "paper"}).rows == eqtl.PAPER_ROWS
  assert len(eqtl.PAPER_ROWS) == 27
  plink = eqtl.config_from_flags({"preset": "sweep", "source": "plink_simulated"})
  assert plink.rows == ((None, 100),)  # all samples of the file


def test_missing_genotype_calls_pass_through_the_experiment(tmp_path, caplog):
  rng = np.random.default_rng(0)
  genotypes = rng.integers(0, 3, size=(40, 6)).astype(np.float32)
  genotypes[3, 1] = np.nan
  prefix = _write_plink(tmp_path / "gaps", genotypes, [f"s{i}" for i in range(40)])
  config = dataclasses.replace(TINY, source="plink_simulated", rows=((None, 6),),
                               plink_prefix=str(prefix), num_causal=2, steps=10,
                               missing="error")
  with pytest.raises(ValueError, match=r"gaps\.bed.*1 missing genotype calls"):
    eqtl.train_and_evaluate(config, str(tmp_path / "refused"))
  with caplog.at_level(logging.INFO, logger="absl"):
    result = eqtl.train_and_evaluate(dataclasses.replace(config, missing="impute"),
                                     str(tmp_path / "imputed"))
  assert "mean-imputed 1 missing genotype calls" in caplog.text
  assert result["rows"][0]["N"] == 40 and math.isfinite(result["rows"][0]["R2_DP"])


def test_mismatched_sample_ids_name_both_files(tmp_path):
  prefix = _write_plink(tmp_path / "geno", np.ones((6, 3), np.float32), list("abcdef"))
  expression = tmp_path / "expr.bed"
  pd.DataFrame([{"#Chr": 22, "start": 1, "end": 2, "phenotype_id": "G1",
                 **{f"x{i}": float(i) for i in range(6)}}]).to_csv(expression, sep="\t",
                                                                   index=False)
  config = dataclasses.replace(TINY, source="plink_expression", rows=((None, 3),),
                               plink_prefix=str(prefix), expression_path=str(expression),
                               gene_id="G1", steps=5)
  with pytest.raises(ValueError) as error:
    eqtl.train_and_evaluate(config, str(tmp_path / "out"))
  assert "geno.bed" in str(error.value) and "expr.bed" in str(error.value)


def test_the_studys_epsilon_is_tf_privacy_rdp_for_its_settings():
  # The study reports 1678.16 for every row; dp_accounting's finer RDP orders give a bit less.
  assert eqtl.tf_privacy_epsilon(0.5, 700, 1e-6) == pytest.approx(1678.16, abs=0.005)
  ours = accounting.compute_epsilon([accounting.PrivacyPhase(0.5, 10, 10, "full", steps=700)],
                                    1e-6)
  assert 1600 < ours <= 1678.16
