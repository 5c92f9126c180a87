"""Tests for experiments/eqtl/experiment.py on tiny configurations (configs/quick.py:tiny)."""

import json
import logging
import math
import subprocess
import sys

from bed_reader import to_bed
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from sklearn import linear_model

from dpjax import accounting
from dpjax import noise
from dpjax.data import eqtl as eqtl_data
from experiments.eqtl import dp_linear
from experiments.eqtl import experiment as eqtl
from experiments.eqtl import linear
from experiments.eqtl.configs import hapmap
from experiments.eqtl.configs import onek1k
from experiments.eqtl.configs import paper
from experiments.eqtl.configs import quick
from experiments.eqtl.configs import sweep

TINY = quick.get_config("tiny")  # rows (120, 5), (90, 40); 60 steps, lr 0.1


def tiny(**changes):
  """configs/quick.py:tiny with some fields changed (an unknown field raises)."""
  config = quick.get_config("tiny")
  config.lock()
  config.update(changes)
  return config


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
  for column in ("R2_OLS_nonprivate", "R2_DP", "R2_adj_OLS_nonprivate", "R2_adj_DP", "epsilon",
                 "R2_AdaSSP", "R2_adj_AdaSSP", "R2_SGD_nonprivate"):
    assert math.isfinite(first[column]), column
  # The OLS reference is OLS on the held-out samples: scikit-learn gives the same number.
  data = eqtl.load_row_data(eqtl.make_config(TINY), 120, 5, first["seed"])
  reference = linear_model.LinearRegression().fit(data.x_train, data.y_train)
  r2 = first["R2_OLS_nonprivate"]
  assert r2 == pytest.approx(reference.score(data.x_test, data.y_test), abs=1e-6)
  assert first["n_test"] == data.y_test.size == 24
  assert first["R2_adj_OLS_nonprivate"] == pytest.approx(1 - (1 - r2) * 23 / (24 - 5 - 1))
  # The epsilon column is the accountant's for full batches, sigma 0.5, 60 steps, delta 1e-6.
  phase = accounting.PrivacyPhase(0.5, data.y_train.size, data.y_train.size, "full", steps=60)
  assert first["epsilon"] == pytest.approx(accounting.compute_epsilon([phase], 1e-6))
  # P = 40 with 18 test samples: adjusted R2 is undefined, reported as such, not a number.
  second = rows[1]
  assert second["R2_adj_OLS_nonprivate"] == "nan" and "n_test=18" in second["note"]
  assert result["rows"][1]["R2_DP"] == pytest.approx(second["R2_DP"])


def test_same_seed_gives_different_dp_results_by_default_and_identical_with_opt_in(tmp_path):
  config = tiny(rows=((80, 4),), steps=20, target_epsilon=1.0, delta=1e-4)
  a = eqtl.train_and_evaluate(config, str(tmp_path / "a"))["rows"][0]
  b = eqtl.train_and_evaluate(config, str(tmp_path / "b"))["rows"][0]
  assert a["R2_DP"] != b["R2_DP"] and a["R2_AdaSSP"] != b["R2_AdaSSP"]  # fresh secret noise
  assert a["R2_OLS_nonprivate"] == b["R2_OLS_nonprivate"]  # --seed still fixes the data
  reproducible = tiny(rows=((80, 4),), steps=20, target_epsilon=1.0, delta=1e-4,
                      reproducible_private_randomness=True, seed=5)
  c = eqtl.train_and_evaluate(reproducible, str(tmp_path / "c"))["rows"][0]
  d = eqtl.train_and_evaluate(reproducible, str(tmp_path / "d"))["rows"][0]
  for key in ("R2_DP", "R2_AdaSSP", "R2_OLS_nonprivate"):
    assert c[key] == d[key], key
  assert a["epsilon"] == b["epsilon"] == c["epsilon"] == d["epsilon"]
  # The seed keys the private randomness now: out of every released file, kept under private/.
  released = json.loads((tmp_path / "c" / "config.json").read_text())
  assert released["seed"] != 5 and "secret" in released["seed"]
  assert "seed" not in json.loads((tmp_path / "c" / "results.json").read_text())[0]
  assert "seed" not in pd.read_csv(tmp_path / "c" / "results.csv").columns
  assert json.loads((tmp_path / "c" / "private" / "secret_seed.json").read_text())["secret_seed"] == 5
  assert not (tmp_path / "a" / "private" / "secret_seed.json").exists()
  report = json.loads((tmp_path / "c" / "privacy_report.json").read_text())
  assert report["secure_randomness"] is False and "5" not in json.dumps(report["releases"][0]
                                                                       ["name"])


def test_sweep_writes_summary_and_plot(tmp_path):
  config = tiny(rows=((100, 4),), steps=30, epsilons=(1.0, math.inf),
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


def _capture(monkeypatch):
  """Records every DP-SGD fit and every AdaSSP release of X^T y (with its noise std)."""
  fits, adassp = [], []
  original_fit = dp_linear.dp_linear_regression
  original_stats = linear.private_sufficient_statistics

  def fit(*args, **kwargs):
    result = original_fit(*args, **kwargs)
    if result.noise_multiplier > 0:
      fits.append((args[0], args[1], result))
    return result

  def stats(rng, x, y, noise_stds, *args, **kwargs):
    result = original_stats(rng, x, y, noise_stds, *args, **kwargs)
    adassp.append((x.T @ y, result.xty, noise_stds["xty"]))
    return result

  monkeypatch.setattr(dp_linear, "dp_linear_regression", fit)
  monkeypatch.setattr(linear, "private_sufficient_statistics", stats)
  return fits, adassp


def _one_step_gradient(fit):
  """One step of lr 1 from zero releases -(clipped sum + noise) / N: the noisy sum / N."""
  return -np.append(fit.coef, fit.intercept)


def _clipped_sum_over_n(x, y, clip_norm):
  zero = {"w": jnp.zeros(x.shape[1], jnp.float32), "b": jnp.zeros((), jnp.float32)}
  summed, _ = dp_linear.linear_clipped_grad_sum(zero, jnp.asarray(x), jnp.asarray(y),
                                                jnp.ones(x.shape[0], bool), clip_norm)
  return np.append(np.asarray(summed["w"]), float(summed["b"])) / x.shape[0]


def test_two_sweep_arms_noises_are_independent(tmp_path, monkeypatch):
  # With one key for every target epsilon, g_e = (S + sigma_e C Z) / N shares Z, and
  # (s2 g_a - s1 g_b) / (s2 - s1) is the noise-free S / N (to 1e-6); AdaSSP's X^T y likewise.
  fits, adassp = _capture(monkeypatch)
  config = tiny(rows=((100, 4),), steps=1, learning_rate=1.0,
                epsilons=(0.5, 2.0), delta=1e-4, nonprivate_baselines=False)
  eqtl.train_and_evaluate(config, str(tmp_path))
  (x, y, a), (_, _, b) = fits
  assert a.noise_multiplier > b.noise_multiplier
  s1, s2 = a.noise_multiplier, b.noise_multiplier
  combined = (s2 * _one_step_gradient(a) - s1 * _one_step_gradient(b)) / (s2 - s1)
  truth = _clipped_sum_over_n(x, y, a.clip_norm)
  noise_scale = a.clip_norm * s1 * s2 / (s1 - s2) / x.shape[0]
  assert np.max(np.abs(combined - truth)) > 0.05 * abs(noise_scale)
  (true_xty, xty_a, n1), (_, xty_b, n2) = adassp
  combined = (n1 * xty_b - n2 * xty_a) / (n1 - n2)
  assert np.max(np.abs(combined - true_xty)) > 0.05 * n2


def test_regenerating_the_noise_from_the_public_seed_does_not_recover_the_clipped_sum(
    tmp_path, monkeypatch):
  fits, _ = _capture(monkeypatch)
  config = tiny(rows=((100, 4),), steps=1, learning_rate=1.0,
                target_epsilon=1.0, delta=1e-4, adassp=False)
  eqtl.train_and_evaluate(config, str(tmp_path))
  (x, y, fit), = fits
  truth = _clipped_sum_over_n(x, y, fit.clip_norm)
  # The keys the former code derived from --seed=0: fold_in(key(seed), job), split, step 0.
  job_key = jax.random.fold_in(jax.random.key(config.seed), 0)
  candidates = [jax.random.key(0), jax.random.PRNGKey(0), job_key,
                jax.random.split(job_key)[0], jax.random.split(job_key)[1]]
  zero = {"w": jnp.zeros(4, jnp.float32), "b": jnp.zeros((), jnp.float32)}
  for key in candidates:
    regenerated = noise.privatize_sum(
        jax.random.fold_in(key, 0), zero, noise_multiplier=fit.noise_multiplier,
        sensitivity=fit.clip_norm, expected_batch_size=x.shape[0], mechanism="gaussian")
    regenerated = np.append(np.asarray(regenerated["w"]), float(regenerated["b"]))
    recovered = _one_step_gradient(fit) - regenerated
    assert np.max(np.abs(recovered - truth)) > 0.1 * fit.noise_multiplier * fit.clip_norm / 80


def test_privacy_report_names_each_dp_fit_and_what_is_not_covered(tmp_path):
  config = tiny(rows=((100, 4),), steps=20, epsilons=(1.0, math.inf),
                delta=1e-4)
  eqtl.train_and_evaluate(config, str(tmp_path))
  report = json.loads((tmp_path / "privacy_report.json").read_text())
  assert (tmp_path / "privacy_report.md").exists()
  releases = report["releases"]
  assert len(releases) == 4  # DP-SGD and AdaSSP at each of the two epsilons
  for entry in releases:
    assert set(entry["files"]) == {"results.json", "results.csv", "results.md", "sweep.png"}
  dp_sgd = [r for r in releases if r["name"].startswith("DP-SGD")]
  assert dp_sgd[0]["steps"] == 20 and dp_sgd[0]["noise_multiplier"] > 0
  assert 0.98 <= dp_sgd[0]["epsilon"] <= 1.0 and dp_sgd[0]["clip_norm"] == pytest.approx(5 ** 0.5)
  assert any("AdaSSP" in r["mechanism"] for r in releases)
  text = " ".join(report["not_covered"])
  assert "NON-PRIVATE OLS and SGD" in text and "epsilon = inf" in text
  assert "R2_OLS_nonprivate" in (tmp_path / "results.md").read_text()
  assert "NON-PRIVATE" in (tmp_path / "results.md").read_text()


def test_no_unnoised_training_statistic_in_the_released_files(tmp_path):
  config = tiny(rows=((100, 4),), steps=20)
  eqtl.train_and_evaluate(config, str(tmp_path))
  released = " ".join((tmp_path / name).read_text() for name in eqtl.RESULT_FILES)
  for key in ("loss", "clipped_fraction", "mean_grad_norm", "batch_size", "train_r2", "rank"):
    assert key not in released, key
  diagnostics = json.loads((tmp_path / "private" / "diagnostics.json").read_text())
  assert "final_clipped_fraction" in diagnostics[0]["dp_sgd"]
  assert len(diagnostics[0]["dp_sgd_loss_per_step"]) == 20 and "ols_rank" in diagnostics[0]


def test_without_nonprivate_baselines_every_released_number_is_covered(tmp_path):
  config = tiny(rows=((100, 4),), steps=20, nonprivate_baselines=False)
  eqtl.train_and_evaluate(config, str(tmp_path))
  rows = json.loads((tmp_path / "results.json").read_text())
  for column in eqtl.NONPRIVATE_COLUMNS:
    assert column not in rows[0] and column not in (tmp_path / "results.md").read_text()
  report = json.loads((tmp_path / "privacy_report.json").read_text())
  assert not any("NON-PRIVATE" in item for item in report["not_covered"])


def test_data_dependent_standardisation_is_listed_as_not_covered(tmp_path):
  config = tiny(rows=((100, 4),), steps=5, standardization="train_freq")
  eqtl.train_and_evaluate(config, str(tmp_path))
  report = json.loads((tmp_path / "privacy_report.json").read_text())
  assert eqtl_data.NOT_COVERED_TRAIN_FREQ in report["not_covered"]
  default = tmp_path / "default"
  eqtl.train_and_evaluate(tiny(rows=((100, 4),), steps=5), str(default))
  assert eqtl_data.NOT_COVERED_TRAIN_FREQ not in json.loads(
      (default / "privacy_report.json").read_text())["not_covered"]


@pytest.mark.parametrize("changes,message", [
    ({"p": 0}, "--config.p=0"),
    ({"n": 1000, "p": -3}, "--config.p=-3"),
    ({"rows": ((2, 10),)}, "--config.n=2"),
    ({"delta": 1.0}, "--config.delta=1.0"),
    ({"source": "vcf"}, "--config.source='vcf'"),
    ({"sampling": "poisson"}, "--config.batch_size"),
    ({"source": "plink_expression"}, "--config.gene_id"),
    ({"epsilons": ("1", "many")}, "--config.epsilons"),
])
def test_bad_config_fields_are_named(changes, message):
  with pytest.raises(ValueError, match=message):
    eqtl.make_config(tiny(**changes))


def test_unknown_fields_are_refused_with_the_valid_ones():
  with pytest.raises(ValueError, match=r"unknown config field\(s\) \['lr'\].*learning_rate"):
    eqtl.make_config({**TINY.to_dict(), "lr": 0.1})
  with pytest.raises(KeyError, match="learning_rate"):
    tiny(lr=0.1)  # a locked ConfigDict (what --config gives) refuses it already


def test_config_files_and_row_overrides():
  assert len(paper.ROWS) == 27
  assert eqtl.make_config(paper.get_config()).rows == paper.ROWS
  assert all(p <= 100 for _, p in eqtl.make_config(paper.get_config("quick")).rows)
  config = paper.get_config()
  config.update(n=500, p=20, target_epsilon=2.0, epsilons=("1", "inf"))  # as a command line
  config = eqtl.make_config(config)
  assert config.rows == ((500, 20),) and config.target_epsilon == 2.0
  assert config.epsilons == (1.0, math.inf) and config.delta == 1e-6
  swept = eqtl.make_config(sweep.get_config())
  assert swept.epsilons == sweep.EPSILONS and swept.repeats == 3 and swept.delta == 1e-5
  assert eqtl.make_config(sweep.get_config("quick")).repeats == 1
  plink = sweep.get_config()
  plink.source = "plink_simulated"
  assert eqtl.make_config(plink).rows == ((None, 100),)  # all samples of the file
  real = eqtl.make_config(hapmap.get_config())
  assert real.rows == ((None, 10),) and real.num_causal == 3 and real.repeats == 20
  assert eqtl.make_config(onek1k.get_config("G1")).gene_id == "G1"
  with pytest.raises(ValueError, match="--config.gene_id"):
    eqtl.make_config(onek1k.get_config())
  with pytest.raises(ValueError, match="quick.py:huge"):
    quick.get_config("huge")


@pytest.mark.slow
def test_command_line_runs_a_config_and_names_a_bad_field(tmp_path):
  command = [sys.executable, "-m", "experiments.eqtl",
             "--config=experiments/eqtl/configs/quick.py:tiny", f"--workdir={tmp_path}"]
  out = subprocess.run(command + ["--config.steps=5"], capture_output=True, text=True,
                       check=False)
  assert out.returncode == 0, out.stderr
  assert "| R2_DP |" in out.stdout and (tmp_path / "privacy_report.json").exists()
  out = subprocess.run(command + ["--config.delta=2.0"], capture_output=True, text=True,
                       check=False)
  assert out.returncode == 1 and "eqtl: error: --config.delta=2.0" in out.stderr
  assert "Traceback" not in out.stderr


def test_missing_genotype_calls_pass_through_the_experiment(tmp_path, caplog):
  rng = np.random.default_rng(0)
  genotypes = rng.integers(0, 3, size=(40, 6)).astype(np.float32)
  genotypes[3, 1] = np.nan
  prefix = _write_plink(tmp_path / "gaps", genotypes, [f"s{i}" for i in range(40)])
  config = tiny(source="plink_simulated", p=6, plink_prefix=str(prefix), num_causal=2,
                steps=10, missing="error")
  with pytest.raises(ValueError, match=r"gaps\.bed.*1 missing genotype calls"):
    eqtl.train_and_evaluate(config, str(tmp_path / "refused"))
  with caplog.at_level(logging.INFO, logger="absl"):
    config.missing = "impute"
    result = eqtl.train_and_evaluate(config, str(tmp_path / "imputed"))
  assert "imputed 1 missing genotype calls in 1 SNPs with a public dosage" in caplog.text
  assert result["rows"][0]["N"] == 40 and math.isfinite(result["rows"][0]["R2_DP"])
  not_covered = json.loads((tmp_path / "imputed" / "privacy_report.json").read_text())[
      "not_covered"]
  assert eqtl_data.NOT_COVERED_MEAN_IMPUTATION not in not_covered
  assert eqtl_data.NOT_COVERED_SEMI_SYNTHETIC in not_covered
  # The data-dependent option is allowed, and the privacy report says it is not covered.
  config.missing = "impute_mean"
  eqtl.train_and_evaluate(config, str(tmp_path / "mean"))
  assert eqtl_data.NOT_COVERED_MEAN_IMPUTATION in json.loads(
      (tmp_path / "mean" / "privacy_report.json").read_text())["not_covered"]


def test_mismatched_sample_ids_name_both_files(tmp_path):
  prefix = _write_plink(tmp_path / "geno", np.ones((6, 3), np.float32), list("abcdef"))
  expression = tmp_path / "expr.bed"
  pd.DataFrame([{"#Chr": 22, "start": 1, "end": 2, "phenotype_id": "G1",
                 **{f"x{i}": float(i) for i in range(6)}}]).to_csv(expression, sep="\t",
                                                                   index=False)
  config = tiny(source="plink_expression", p=3, plink_prefix=str(prefix),
                expression_path=str(expression), gene_id="G1", steps=5)
  with pytest.raises(ValueError) as error:
    eqtl.train_and_evaluate(config, str(tmp_path / "out"))
  assert "geno.bed" in str(error.value) and "expr.bed" in str(error.value)


def test_the_studys_epsilon_is_tf_privacy_rdp_for_its_settings():
  # The study reports 1678.16 for every row; dp_accounting's finer RDP orders give a bit less.
  assert eqtl.tf_privacy_epsilon(0.5, 700, 1e-6) == pytest.approx(1678.16, abs=0.005)
  ours = accounting.compute_epsilon([accounting.PrivacyPhase(0.5, 10, 10, "full", steps=700)],
                                    1e-6)
  assert 1600 < ours <= 1678.16
