"""experiments/gan.py on the "tiny" preset: outputs, their content, and what stays private."""

import csv
import dataclasses
import json
import math
import os

import numpy as np
import pytest

from dpjax import accounting
from dpjax import randomness
from dpjax import sampling
from dpjax.data import trials
from experiments import gan as gan_experiment

PRIVATE_KEYS = {"loss", "g_loss", "d_loss", "train_loss", "train_accuracy", "mean_grad_norm",
                "clipped_fraction", "batch_size", "num_nonfinite", "memorisation_final"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("gan"))
  config = dataclasses.replace(gan_experiment.preset("tiny"), prefix="t_")
  gan_experiment.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "t_results.json")) as f:
    return config, workdir, json.load(f)


def _check_scores(scores):
  for clf in ("lr", "rf"):
    for metric in ("accuracy", "auc"):
      assert 0.0 <= scores[clf][metric] <= 1.0, (clf, metric, scores)


def _keys(value):
  if isinstance(value, dict):
    for k, v in value.items():
      yield k
      yield from _keys(v)
  elif isinstance(value, list):
    for v in value:
      yield from _keys(v)


def test_results_hold_finite_scores_and_best_epochs_are_chosen_on_validation(run):
  config, _, results = run
  assert (results["num_train"] + results["num_validation"] + results["num_test"]
          == config.num_participants)
  _check_scores(results["trtr"]["test"])
  assert set(results["variants"]) == {"private", "nonprivate"}
  steps_per_epoch = results["num_train"] // config.batch_size
  for variant in results["variants"].values():
    for which in ("final", "best_lr", "best_rf"):
      _check_scores(variant[which])
      _check_scores(variant[which]["validation"])
    assert variant["final"]["epoch"] == config.epochs
    # The best step by validation AUC really is the best of the evaluated ones, and what the
    # table reports for it are its TEST scores.
    best = max(variant["history"], key=lambda h: h["validation_lr_auc"])
    assert variant["best_lr"]["validation"]["lr"]["auc"] == best["validation_lr_auc"]
    assert variant["best_lr"]["lr"]["auc"] == next(
        h["test_lr_auc"] for h in variant["history"] if h["step"] == variant["best_lr"]["step"])
    assert [h["step"] for h in variant["history"]] == [
        steps_per_epoch * e for e in range(1, config.epochs + 1)]
    assert [h["epoch"] for h in variant["history"]] == list(range(1, config.epochs + 1))
  assert results["variants"]["nonprivate"]["epsilon"] == "inf"


def test_epsilon_equals_the_accountants_for_the_runs_steps(run):
  config, _, results = run
  private = results["variants"]["private"]
  steps = private["discriminator_steps"]
  assert steps == sampling.steps_for_epochs(config.epochs, results["num_train"], config.batch_size)
  phase = accounting.PrivacyPhase(private["noise_multiplier"], results["num_train"],
                                  config.batch_size, steps=steps)
  expected = accounting.compute_epsilon([phase], config.delta)
  assert results["epsilon"] == pytest.approx(expected, rel=1e-9)
  assert results["delta"] == config.delta
  # Calibrated to the target: within the calibration's 1% below it, never above.
  assert config.target_epsilon * 0.98 <= results["epsilon"] <= config.target_epsilon


def test_trajectories_plots_and_tables(run):
  config, workdir, results = run
  assert results["real_trajectories_of"] == "held-out test participants"
  for arm in ("0", "1"):
    real = results["real_trajectories"][arm]
    assert len(real) == 12 and all(80 <= v <= 233 for v in real)  # SBP in mmHg
    for variant in results["variants"].values():
      for panel in ("final", "best_lr", "best_rf", "top_k"):
        values = variant["trajectories"][panel][arm]
        assert len(values) == 12 and all(0 <= v <= 233 for v in values)
  assert len(results["plots"]) == 4
  for path in results["plots"]:
    with open(path, "rb") as f:
      head = f.read(8)
    assert head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 5000
    assert os.path.basename(path).startswith("t_figure2")
  with open(os.path.join(workdir, "t_summary.md")) as f:
    table = f.read()
  assert "trained on real (TRTR)" in table and "private GAN, final (TSTR)" in table
  with open(os.path.join(workdir, "t_summary.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  assert [r["model"] for r in rows][:2] == ["trained on real (TRTR)", "private GAN, final (TSTR)"]
  assert all(len(r) == len(rows[0]) and None not in r for r in rows)  # commas quoted
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["epochs"] == config.epochs


def test_results_and_tables_hold_no_training_statistics(run):
  _, workdir, results = run
  assert not PRIVATE_KEYS & set(_keys(results))
  for name in ("t_summary.md", "t_summary.csv"):
    with open(os.path.join(workdir, name)) as f:
      text = f.read()
    assert "loss" not in text and "clipped" not in text
  # They are kept, under private/.
  with open(os.path.join(workdir, "dp_gan", "private", "metrics.jsonl")) as f:
    assert {"loss", "g_loss", "clipped_fraction"} <= set(json.loads(f.readline()))
  with open(os.path.join(workdir, "private", "t_diagnostics.json")) as f:
    memo = json.load(f)["private"]["memorisation_final"]
  assert 0.0 <= memo["closer_to_train_fraction"] <= 1.0
  assert math.isfinite(memo["median_ratio_train_over_heldout"])
  assert os.path.exists(os.path.join(workdir, "dp_gan", "private", "checkpoint.msgpack"))


def test_privacy_report_names_the_released_files(run):
  config, workdir, results = run
  with open(os.path.join(workdir, "privacy_report.json")) as f:
    privacy = json.load(f)
  assert privacy["unit"] == "participant" and privacy["secure_randomness"] is True
  private, nonprivate, trtr = privacy["releases"]
  assert private["epsilon"] == pytest.approx(results["epsilon"])
  synthetic = results["variants"]["private"]["synthetic_files"]
  assert len(synthetic) == config.epochs
  for name in synthetic + ["t_results.json", "t_summary.csv", "t_figure2A_final.png"]:
    assert name in private["files"]
  for release in privacy["releases"]:
    for name in release["files"]:
      assert os.path.exists(os.path.join(workdir, name)), name
      assert "private/" not in name and not name.startswith("private")
  assert set(private["epsilon_at_step"]) == set(synthetic)
  assert max(private["epsilon_at_step"].values()) == pytest.approx(private["epsilon"])
  assert nonprivate["epsilon"] == "inf" and trtr["epsilon"] == "inf"
  # The non-private GAN's synthetic participants are not released.
  assert os.listdir(os.path.join(workdir, "nonprivate_gan", "private", "synthetic"))
  assert not os.path.exists(os.path.join(workdir, "nonprivate_gan", "synthetic"))
  text = " ".join(privacy["not_covered"])
  assert "best-epoch selection" in text and "VALIDATION" in text and "held-out" in text
  with open(os.path.join(workdir, "privacy_report.md")) as f:
    assert "Not covered" in f.read()


def test_a_secret_seed_stays_out_of_released_text():
  config = dataclasses.replace(gan_experiment.preset("tiny"), seed=1234,
                               reproducible_private_randomness=True)
  data = trials.simulate_sprint_like(1234, 10)
  secret = randomness.from_flag(True, 1234)
  describe = gan_experiment._public_description  # pylint: disable=protected-access
  assert "1234" in data.description
  assert "1234" not in describe(data, config, secret)
  assert describe(data, config, randomness.SECURE) == data.description


def test_memorisation_check_flags_a_copy_of_the_training_data():
  rng = np.random.default_rng(0)
  train_x = rng.uniform(size=(200, 3, 12))
  heldout_x = rng.uniform(size=(50, 3, 12))
  copied = gan_experiment.memorisation_check(train_x[:100], train_x, heldout_x, seed=0)
  fresh = gan_experiment.memorisation_check(rng.uniform(size=(100, 3, 12)), train_x, heldout_x,
                                            seed=0)
  # Copies of training records sit on (a quarter of them on exactly) their reference records.
  assert copied["closer_to_train_fraction"] > 0.2 and copied["exact_copies_of_train"] > 0
  assert copied["median_ratio_train_over_heldout"] < fresh["median_ratio_train_over_heldout"]
  assert 0.3 < fresh["closer_to_train_fraction"] < 0.7


def test_bad_settings_name_the_flag():
  with pytest.raises(ValueError, match="--preset"):
    gan_experiment.preset("huge")
  with pytest.raises(ValueError, match="--dataset"):
    gan_experiment.GanExperimentConfig(dataset="mimic")
  with pytest.raises(ValueError, match="--noise"):
    gan_experiment.GanExperimentConfig(noise=0.0)
  with pytest.raises(ValueError, match="--validation_fraction"):
    gan_experiment.GanExperimentConfig(validation_fraction=0.0)
