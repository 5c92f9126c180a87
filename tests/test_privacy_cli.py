"""The privacy calculator, run as users run it."""

import json
import subprocess
import sys

import pytest

from dpjax import accounting
from dpjax import privacy
from dpjax import sampling


def run_cli(*flags):
  return subprocess.run([sys.executable, "-m", "dpjax.privacy", *flags],
                        capture_output=True, text=True, timeout=120)


def test_json_output_matches_the_accountant():
  proc = run_cli("--dataset_size=60000", "--batch_size=256", "--noise_multiplier=1.1",
                 "--epochs=60", "--delta=1e-5", "--json")
  assert proc.returncode == 0, proc.stderr
  result = json.loads(proc.stdout)
  assert {"epsilon", "delta", "noise_multiplier", "steps", "sampling_probability",
          "accountant"} <= set(result)
  phase = accounting.PrivacyPhase(1.1, 60000, 256, steps=result["steps"])
  assert result["steps"] == 14063
  assert result["epsilon"] == pytest.approx(accounting.compute_epsilon([phase], 1e-5))
  assert result["epsilon"] == pytest.approx(2.60, abs=0.01)


def test_epochs_become_steps_by_the_one_rule_of_the_training_loops():
  """ceil(epochs * N / B): 5 epochs of 1000 examples at batch 180 are 27.8 passes' worth -> 28."""
  proc = run_cli("--dataset_size=1000", "--batch_size=180", "--noise_multiplier=1.0",
                 "--epochs=5", "--json")
  assert proc.returncode == 0, proc.stderr
  steps = json.loads(proc.stdout)["steps"]
  assert steps == sampling.steps_for_epochs(5, 1000, 180) == 28
  assert steps == sampling.BatchSampler(1000, 180).steps_for_epochs(5)


def test_target_epsilon_prints_a_calibrated_noise_multiplier():
  result = privacy.compute(10000, 100, None, 2.0, 5, None, 1e-5, "pld", "poisson", "gaussian")
  assert 0.99 * 2.0 <= result["epsilon"] <= 2.0
  assert result["noise_multiplier"] > 0


@pytest.mark.parametrize("flags,named", [
    (["--dataset_size=100", "--batch_size=256", "--noise_multiplier=1", "--epochs=1"], "--batch_size"),
    (["--dataset_size=100", "--batch_size=10", "--noise_multiplier=1", "--epochs=1", "--delta=1"], "--delta"),
    (["--dataset_size=100", "--batch_size=10", "--noise_multiplier=0", "--epochs=1"], "--noise_multiplier"),
    (["--dataset_size=100", "--batch_size=10", "--target_epsilon=-1", "--epochs=1"], "--target_epsilon"),
    (["--dataset_size=100", "--batch_size=10", "--noise_multiplier=1"], "--epochs"),
])
def test_bad_values_exit_nonzero_naming_the_flag(flags, named):
  proc = run_cli(*flags)
  assert proc.returncode != 0
  assert named in proc.stderr


def test_unreachable_target_names_the_flag():
  with pytest.raises(privacy.UsageError, match="--target_epsilon.*unreachable"):
    privacy.compute(100, 100, None, 1e-4, None, 100000, 1e-10, "rdp", "full", "gaussian")
