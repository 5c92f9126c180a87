"""experiments.interpret end to end on a tiny config (the tables' content, not just the files),
its config files, and how a bad config value is named."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from dpjax import accounting
from experiments.interpret import experiment
from experiments.interpret import settings
from experiments.interpret.configs import catsdogs, medical, quick, tiny

INF = math.inf
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tiny(**overrides):
  config = tiny.get_config()
  config.model_kwargs.channels = (4,)
  config.max_per_class = 10
  config.epochs = 0.5
  config.update(overrides)
  return config


@pytest.mark.slow
def test_tiny_run_writes_consistent_tables(tmp_path):
  config = _tiny(clip_norms=(), ldp_epsilons=(), certify_radii=(0.0, 0.01, 0.05))
  results = experiment.train_and_evaluate(config, str(tmp_path))

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
  config.epsilons = (1.0,)
  again = experiment.train_and_evaluate(config, str(tmp_path))
  assert again["tables"]["gaussian"]["1"] == results["tables"]["gaussian"]["1"]


@pytest.mark.slow
def test_local_dp_models_are_released_with_their_label_guarantee(tmp_path):
  config = _tiny(epsilons=(INF,), clip_norms=(), ldp_epsilons=(1.0,), num_explain=4,
                 certify_radii=(0.0,), reproducible_private_randomness=True)
  experiment.train_and_evaluate(config, str(tmp_path))
  privacy = json.loads((tmp_path / "privacy_report.json").read_text())
  local = next(r for r in privacy["releases"] if r["name"] == "ldp_eps1")
  assert local["epsilon"] == pytest.approx(64.0) and "global_vs_local.md" in local["files"]
  assert any("labels released in clear" in item for item in privacy["not_covered"])
  # The opt-in makes the seed a secret: redacted from config.json, kept under private/.
  assert json.loads((tmp_path / "config.json").read_text())["seed"] != config.seed
  assert (tmp_path / "private" / "secret_seed.json").exists()
  assert privacy["secure_randomness"] is False


def test_bad_config_is_named():
  for field, value in (("laplace_accounting", "zcdp"), ("smoothing_sigma", 0.0),
                       ("epsilons", ("(1.0, inf)",)), ("cost_samples", (8.5,)),
                       ("cpu_devices", "two")):
    config = tiny.get_config()
    config[field] = value
    with pytest.raises(ValueError, match=f"--config.{field}="):
      settings.from_config_dict(config)
  with pytest.raises(ValueError, match="unknown config field.*valid: dataset"):
    settings.from_config_dict({"dataset": "digits", "lr": 0.1})


def test_config_files_are_the_old_presets():
  assert settings.from_config_dict(quick.get_config()) == settings.Config()
  assert settings.from_config_dict(medical.get_config()) == settings.Config(
      epochs=10.0, num_explain=256, num_robust=16, num_samples=2048, num_grid=3)
  assert settings.from_config_dict(catsdogs.get_config()) == settings.Config(
      dataset="catsdogs", model="vgg16", model_kwargs=(), epochs=10.0, learning_rate=0.05,
      batch_size=32, num_explain=256, num_robust=8, num_samples=512)
  assert settings.from_config_dict(tiny.get_config()) == settings.Config(
      dataset="digits", model_kwargs=(("channels", (4, 8)),), max_per_class=20, epochs=1.0,
      epsilons=(1.0, INF), clip_norms=(1.0,), ldp_epsilons=(1.0,), num_explain=8, num_grid=1,
      robust_epsilons=(INF,), num_robust=1, num_samples=16, attack_steps=2, eot_samples=1,
      cost_samples=(8,), certify_radii=(0.0, 0.01))
  # `:tiny` shrinks the numbers of any preset and keeps its data and model.
  shrunk = settings.from_config_dict(medical.get_config("tiny"))
  assert shrunk.dataset == "pneumoniamnist" and shrunk.num_samples == 16
  assert settings.from_config_dict(catsdogs.get_config("tiny")).model_kwargs == ()
  with pytest.raises(ValueError, match="valid: tiny"):
    quick.get_config("huge")
  # An infinite epsilon may be written 'inf'.
  config = tiny.get_config()
  config.epsilons = (1.0, "inf")
  assert settings.from_config_dict(config).epsilons == (1.0, INF)


def test_command_line_names_a_bad_value(tmp_path):
  run = subprocess.run(
      [sys.executable, "-m", "experiments.interpret",
       "--config=experiments/interpret/configs/tiny.py", f"--workdir={tmp_path}",
       "--config.smoothing_sigma=-1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert run.returncode == 1
  assert "interpret: error: --config.smoothing_sigma=-1.0: must be > 0" in run.stderr
  assert "Traceback" not in run.stderr


def test_pure_laplace_calibration_inverts_the_accountant():
  noise = experiment.laplace_pure_noise_multiplier(1.0, 50, 0.1)
  phase = accounting.PrivacyPhase(noise_multiplier=noise, dataset_size=1000, batch_size=100,
                                  sampling="poisson", mechanism="laplace", steps=50)
  assert accounting.pure_epsilon([phase]) == pytest.approx(1.0, rel=1e-9)
