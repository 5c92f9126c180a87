"""The GAN study on configs/quick.py:tiny: outputs, their content, and what stays private.

The end-to-end runs (a whole config, a subprocess) are marked slow; the fast subset checks the
configs, the validation messages and the evaluation functions.
"""

import csv
import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from dpjax import accounting
from dpjax import randomness
from dpjax import sampling
from dpjax.data import trials
from experiments.gan import evaluation
from experiments.gan import experiment
from experiments.gan import settings
from experiments.gan.configs import benchmark
from experiments.gan.configs import btheb
from experiments.gan.configs import paper
from experiments.gan.configs import pbcseq
from experiments.gan.configs import quick

CONFIGS = {"quick": quick, "paper": paper, "pbcseq": pbcseq, "btheb": btheb,
           "benchmark": benchmark}

PRIVATE_KEYS = {"loss", "g_loss", "d_loss", "train_loss", "train_accuracy", "mean_grad_norm",
                "clipped_fraction", "batch_size", "num_nonfinite", "memorisation_final"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("gan"))
  config = quick.get_config("tiny")
  config.prefix = "t_"
  experiment.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "t_results.json")) as f:
    return settings.make_config(config), workdir, json.load(f)


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


@pytest.mark.slow
def test_results_hold_finite_scores_and_best_epochs_are_chosen_on_validation(run):
  config, _, results = run
  assert (results["num_train"] + results["num_validation"] + results["num_test"]
          == config.num_participants)
  _check_scores(results["trtr"]["test"])
  assert set(results["variants"]) == {"private", "nonprivate", "merf"}
  steps_per_epoch = results["num_train"] // config.batch_size
  for name, variant in results["variants"].items():
    if name == "merf":
      _check_scores(variant["final"])
      continue
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_trajectories_plots_and_tables(run):
  config, workdir, results = run
  assert results["real_trajectories_of"] == "held-out test participants"
  for arm in ("0", "1"):
    real = results["real_trajectories"][arm]
    assert len(real) == 12 and all(80 <= v <= 233 for v in real)  # SBP in mmHg
    for variant in results["variants"].values():
      for panel in variant["trajectories"]:
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_privacy_report_names_the_released_files(run):
  config, workdir, results = run
  with open(os.path.join(workdir, "privacy_report.json")) as f:
    privacy = json.load(f)
  assert privacy["unit"] == "participant" and privacy["secure_randomness"] is True
  private, nonprivate, merf_release, trtr = privacy["releases"]
  assert merf_release["epsilon"] == pytest.approx(results["variants"]["merf"]["epsilon"])
  # Both private generators are released: the report composes their ledgers.
  together = accounting.compute_epsilon(
      [accounting.PrivacyPhase(private["noise_multiplier"], results["num_train"],
                               config.batch_size, steps=private["steps"]),
       accounting.PrivacyPhase(merf_release["noise_multiplier"], results["num_train"],
                               results["num_train"], sampling="full", steps=1)], config.delta)
  assert any(f"cost epsilon {together:.4g}" in note for note in privacy["notes"])
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
  config = dataclasses.replace(settings.make_config(quick.get_config("tiny")), seed=1234,
                               reproducible_private_randomness=True)
  data = trials.simulate_sprint_like(1234, 10)
  secret = randomness.from_flag(True, 1234)
  describe = experiment._public_description  # pylint: disable=protected-access
  assert "1234" in data.description
  assert "1234" not in describe(data, config, secret)
  assert describe(data, config, randomness.SECURE) == data.description


def test_memorisation_check_flags_a_copy_of_the_training_data():
  rng = np.random.default_rng(0)
  train_x = rng.uniform(size=(200, 3, 12))
  heldout_x = rng.uniform(size=(50, 3, 12))
  copied = evaluation.memorisation_check(train_x[:100], train_x, heldout_x, seed=0)
  fresh = evaluation.memorisation_check(rng.uniform(size=(100, 3, 12)), train_x, heldout_x,
                                        seed=0)
  # Copies of training records sit on (a quarter of them on exactly) their reference records.
  assert copied["closer_to_train_fraction"] > 0.2 and copied["exact_copies_of_train"] > 0
  assert copied["median_ratio_train_over_heldout"] < fresh["median_ratio_train_over_heldout"]
  assert 0.3 < fresh["closer_to_train_fraction"] < 0.7


def test_bad_settings_name_the_config_field():
  with pytest.raises(ValueError, match="quick.py:huge"):
    quick.get_config("huge")
  with pytest.raises(ValueError, match="--config.dataset"):
    settings.Config(dataset="mimic")
  with pytest.raises(ValueError, match="--config.noise_multiplier"):
    settings.Config(noise_multiplier=0.0)
  with pytest.raises(ValueError, match="--config.validation_fraction"):
    settings.Config(validation_fraction=0.0)
  with pytest.raises(ValueError, match="--config.learning_rate"):
    settings.Config(learning_rate=-1.0)
  with pytest.raises(ValueError, match="--config.mode"):
    settings.Config(mode="sweeps")
  with pytest.raises(ValueError, match=r"unknown config field\(s\) \['lr'\]; valid fields"):
    settings.make_config({**quick.get_config().to_dict(), "lr": 2e-4})
  config = quick.get_config()
  config.lock()
  with pytest.raises(AttributeError):
    config.clip_value = 1e-4  # the old name: refused by the locked ConfigDict


@pytest.mark.parametrize("name,args", [("quick", (None, "tiny")), ("paper", (None, "quick")),
                                       ("pbcseq", (None, "tiny")), ("btheb", (None, "tiny")),
                                       ("benchmark", (None, "paper", "tiny"))])
def test_every_config_file_makes_a_valid_config(name, args):
  for arg in args:
    config = settings.make_config(CONFIGS[name].get_config(arg))
    assert config.name == (name if arg is None else f"{name}:{arg}")
  with pytest.raises(ValueError, match=f"{name}.py:nonsense"):
    CONFIGS[name].get_config("nonsense")


def test_the_quick_config_is_the_old_quick_preset():
  """The settings the README's quick results were measured with."""
  config = settings.make_config(quick.get_config())
  assert (config.dataset, config.num_participants, config.epochs, config.batch_size,
          config.learning_rate, config.clip_norm, config.target_epsilon, config.delta,
          config.eval_every, config.generator_conv_channels, config.discriminator_width,
          config.num_synthetic) == ("sprint_sim", 1000, 20, 32, 2e-4, 1e-4, 2.0, 1e-5, 4, 64,
                                    64, 1000)
  assert settings.make_config(paper.get_config()) == settings.Config()


@pytest.mark.slow
def test_the_command_line_reports_a_bad_field_without_a_traceback(tmp_path):
  process = subprocess.run(
      [sys.executable, "-m", "experiments.gan", "--config=experiments/gan/configs/quick.py:tiny",
       f"--workdir={tmp_path}", "--config.learning_rate=-1"],
      capture_output=True, text=True, timeout=300,
      cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  assert process.returncode == 1, process.stderr
  assert "gan: error: --config.learning_rate=-1.0 must be > 0" in process.stderr
  assert "Traceback" not in process.stderr


@pytest.mark.slow
def test_benchmark_mode_writes_the_throughput_of_each_batch_size(tmp_path):
  results = experiment.train_and_evaluate(benchmark.get_config("tiny"), str(tmp_path))
  with open(tmp_path / "benchmark.json") as f:
    written = json.load(f)
  assert [row["batch_size"] for row in written["rows"]] == [1, 4]
  assert all(row["examples_per_sec"] > 0 for row in written["rows"])
  assert "examples_per_sec" in experiment.summarize(results)
  assert not (tmp_path / "privacy_report.json").exists()  # no participant was read


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pbcseq", "btheb"])
def test_the_real_trials_run_end_to_end(name, shared_data_dir, tmp_path):
  config = CONFIGS[name].get_config("tiny")
  config.data_dir = str(shared_data_dir)
  # The real data through the released generators (the private GAN and DP-MERF); the
  # non-private GAN (a step of its own to compile) is checked by `run` on simulated data.
  config.nonprivate_baseline = False
  results = experiment.train_and_evaluate(config, str(tmp_path))
  assert results["dataset"] == name
  assert set(results["variants"]) == {"private", "merf"}
  _check_scores(results["variants"]["private"]["final"])
  assert results["epsilon"] <= config.target_epsilon
  assert os.path.exists(tmp_path / "privacy_report.json")
