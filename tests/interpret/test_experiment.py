"""experiments.interpret end to end on a tiny config: the tables' content, not just the files."""

import dataclasses
import json
import math
import os

import numpy as np
import pytest

from experiments import interpret

INF = math.inf


def test_tiny_run_writes_consistent_tables(tmp_path):
  config = dataclasses.replace(
      interpret.PRESETS["tiny"], model_kwargs=(("channels", (4,)),), max_per_class=10,
      epochs=0.5, clip_norms=(), ldp_epsilons=(), certify_radii=(0.0, 0.01, 0.05))
  results = interpret.train_and_evaluate(config, str(tmp_path))

  for mechanism in ("gaussian", "laplace"):
    rows = results["tables"][mechanism]
    assert set(rows) == {"1", "inf"}
    for row in rows.values():
      assert 0 <= row["test_accuracy"] <= 100
      assert 0 <= row["gradcam_average_drop"] <= 100
      assert row["gradcam_increase_in_confidence"] in {100 * i / 8 for i in range(9)}
      assert 0 < row["gradcam_masked_score"] <= 100
    assert rows["1"]["epsilon"] <= 1.0 + 1e-6 and rows["1"]["noise_multiplier"] > 0
    assert math.isinf(rows["inf"]["epsilon"])
  # Laplace at "pure" accounting: its delta = 0 epsilon is the target.
  assert results["tables"]["laplace"]["1"]["pure_epsilon"] == pytest.approx(1.0, rel=1e-6)

  robust = results["robustness"]["nonprivate"]
  for row in robust["table"].values():
    assert 0 <= row["topk_intersection"] <= 1
    assert -1 <= row["cosine_min"] <= row["cosine"] <= 1
    assert row["cosine_min"] > -1  # non-negative maps: a -1 cosine would be a bug
  fractions = robust["certified_fraction"]
  # Monte Carlo error only removes certified pixels (ties at the top-k boundary also do).
  assert np.all(np.asarray(fractions["rdp_exact"]) >= np.asarray(fractions["rdp"]) - 1e-12)
  assert np.all(np.diff(fractions["rdp"]) <= 1e-12)
  assert np.all(np.asarray(fractions["gaussian"]) >= np.asarray(fractions["rdp"]) - 1e-12)
  assert results["cost"][0]["T"] == 8 and results["cost"][0]["sampling_seconds"] > 0

  with open(tmp_path / "results.json") as f:
    assert json.load(f)["tables"]["gaussian"]["1"]["steps"] >= 1
  table = (tmp_path / "table_gaussian.md").read_text()
  assert "eps=1" in table and "gradcam_average_drop" in table
  for name in ("gradcam_grid.png", "certified_fraction.png", "robustness.md",
               "global_vs_local.md", "cost.md", "config.json"):
    assert os.path.getsize(tmp_path / name) > 0

  # Every trained model is a release of the privacy report, naming files that exist.
  privacy = json.loads((tmp_path / "privacy_report.json").read_text())
  releases = {r["name"]: r for r in privacy["releases"]}
  assert set(releases) == {"gaussian_eps1", "laplace_eps1", "nonprivate"}
  for release in releases.values():
    assert release["files"] and all((tmp_path / f).exists() for f in release["files"])
  assert "table_gaussian.md" in releases["gaussian_eps1"]["files"]
  assert "robustness.md" in releases["nonprivate"]["files"]
  assert releases["gaussian_eps1"]["epsilon"] <= 1.0 + 1e-6
  assert releases["nonprivate"]["epsilon"] == "inf"
  assert any("hyperparameters (the DP recipe) chosen on test accuracy" in item
             for item in privacy["not_covered"])
  # What was measured on training data stays in each model's private/ folder.
  released = (tmp_path / "results.json").read_text()
  for key in ("train_accuracy", "train_loss", "clipped_fraction", "mean_grad_norm"):
    assert f'"{key}"' not in released, key
  assert (tmp_path / "models" / "gaussian_eps1" / "private" / "diagnostics.json").exists()

  # A second run reloads the finished models (no training) and gives the same numbers.
  again = interpret.train_and_evaluate(dataclasses.replace(config, laplace_accounting="pure",
                                                           epsilons=(1.0,)), str(tmp_path))
  assert again["tables"]["gaussian"]["1"] == results["tables"]["gaussian"]["1"]


def test_local_dp_models_are_released_with_their_label_guarantee(tmp_path):
  config = dataclasses.replace(
      interpret.PRESETS["tiny"], model_kwargs=(("channels", (4,)),), max_per_class=10,
      epochs=0.5, epsilons=(INF,), clip_norms=(), ldp_epsilons=(1.0,), num_explain=4,
      certify_radii=(0.0,), reproducible_private_randomness=True)
  interpret.train_and_evaluate(config, str(tmp_path))
  privacy = json.loads((tmp_path / "privacy_report.json").read_text())
  local = next(r for r in privacy["releases"] if r["name"] == "ldp_eps1")
  assert local["epsilon"] == pytest.approx(64.0) and "global_vs_local.md" in local["files"]
  assert any("labels released in clear" in item for item in privacy["not_covered"])
  # The opt-in makes the seed a secret: redacted from config.json, kept under private/.
  assert json.loads((tmp_path / "config.json").read_text())["seed"] != config.seed
  assert (tmp_path / "private" / "secret_seed.json").exists()
  assert privacy["secure_randomness"] is False


def test_bad_config_is_named():
  with pytest.raises(ValueError, match="laplace_accounting"):
    dataclasses.replace(interpret.PRESETS["tiny"], laplace_accounting="zcdp")
  with pytest.raises(ValueError, match="smoothing_sigma"):
    dataclasses.replace(interpret.PRESETS["tiny"], smoothing_sigma=0.0)


def test_pure_laplace_calibration_inverts_the_accountant():
  from dpjax import accounting
  noise = interpret.laplace_pure_noise_multiplier(1.0, 50, 0.1)
  phase = accounting.PrivacyPhase(noise_multiplier=noise, dataset_size=1000, batch_size=100,
                                  sampling="poisson", mechanism="laplace", steps=50)
  assert accounting.pure_epsilon([phase]) == pytest.approx(1.0, rel=1e-9)
