"""experiments/gan.py on the "tiny" preset: outputs and their content."""

import dataclasses
import json
import math
import os

import numpy as np
import pytest

from dpjax import accounting
from experiments import gan as gan_experiment


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


def test_results_hold_finite_scores_for_real_private_and_nonprivate(run):
  config, _, results = run
  assert results["num_train"] + results["num_test"] == config.num_participants
  _check_scores(results["trtr"])
  assert set(results["variants"]) == {"private", "nonprivate"}
  for variant in results["variants"].values():
    for which in ("final", "best_lr", "best_rf"):
      _check_scores(variant[which])
    assert variant["final"]["epoch"] == config.epochs
    # The best epoch by AUC really is the best of the evaluated ones.
    best_auc = max(h["tstr_lr_auc"] for h in variant["history"])
    assert variant["best_lr"]["lr"]["auc"] == best_auc
    assert [h["epoch"] for h in variant["history"]] == list(range(1, config.epochs + 1))
  assert results["variants"]["nonprivate"]["epsilon"] == "inf"


def test_epsilon_equals_the_accountants_for_the_runs_steps(run):
  config, _, results = run
  private = results["variants"]["private"]
  steps = private["discriminator_steps"]
  assert steps == config.epochs * round(results["num_train"] / config.batch_size)
  phase = accounting.PrivacyPhase(private["noise_multiplier"], results["num_train"],
                                  config.batch_size, steps=steps)
  expected = accounting.compute_epsilon([phase], config.delta)
  assert results["epsilon"] == pytest.approx(expected, rel=1e-9)
  assert results["delta"] == config.delta
  # Calibrated to the target: within the calibration's 1% below it, never above.
  assert config.target_epsilon * 0.98 <= results["epsilon"] <= config.target_epsilon


def test_trajectories_plots_tables_and_memorisation(run):
  config, workdir, results = run
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
  memo = results["variants"]["private"]["memorisation_final"]
  assert 0.0 <= memo["closer_to_train_fraction"] <= 1.0
  assert math.isfinite(memo["median_ratio_train_over_heldout"])
  assert memo["spread_ratio_synthetic_over_train"] >= 0
  with open(os.path.join(workdir, "t_summary.md")) as f:
    table = f.read()
  assert "trained on real (TRTR)" in table and "private GAN, final (TSTR)" in table
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["epochs"] == config.epochs


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
