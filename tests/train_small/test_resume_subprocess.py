"""Crash safety through the real command line: SIGKILL mid-run, resume, privacy changes, budgets;
and what train_small releases (the adversary's view of its workdir).

End to end (subprocesses, each importing JAX and compiling): marked slow."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dpjax import accounting
from experiments.train_small import experiment
from experiments.train_small.configs import default

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG = "experiments/train_small/configs/default.py"
STEPS, EVERY = 60, 10
# Bit-for-bit equality after a resume needs the opt-in: secure runs are not reproducible by design.
REPRODUCIBLE = "--config.reproducible_private_randomness=True"
UNNOISED_STATISTICS = ("loss", "train_accuracy", "accuracy", "mean_grad_norm", "clipped_fraction",
                       "batch_size", "num_nonfinite")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  # A shared persistent compilation cache: later subprocesses skip the ~5 s compile.
  cache = tmp_path_factory.mktemp("jax_cache")
  return {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}


def command(workdir, *flags):
  return [sys.executable, "-m", "experiments.train_small", f"--config={CONFIG}",
          f"--workdir={workdir}", f"--config.num_steps={STEPS}",
          f"--config.checkpoint_every={EVERY}", *flags]


def run(env, workdir, *flags, check=True):
  proc = subprocess.run(command(workdir, *flags), cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120)
  if check and proc.returncode != 0:
    raise AssertionError(f"train_small failed:\n{proc.stderr[-3000:]}")
  return proc


def results(workdir):
  return json.loads((pathlib.Path(workdir) / "results.json").read_text())


def checkpointed_step(workdir) -> int:
  """The last step logged to private/metrics.jsonl (a checkpoint is written right after each 10th)."""
  lines = (pathlib.Path(workdir) / "private" / "metrics.jsonl").read_text().splitlines()
  return max((json.loads(line)["step"] for line in lines if line.strip()), default=0)


@pytest.fixture(scope="module")
def uninterrupted(env, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  run(env, workdir, REPRODUCIBLE)
  return workdir


def kill_after_two_checkpoints(env, workdir, *flags) -> int:
  """Starts a slowed run, SIGKILLs it once a checkpoint past step 2 * EVERY exists; returns the
  last logged step."""
  proc = subprocess.Popen(command(workdir, "--config.sleep_per_step=0.1", *flags), cwd=REPO,
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt = workdir / "private" / "checkpoint.msgpack"
  deadline = time.time() + 90
  try:
    while not (ckpt.exists() and (workdir / "private" / "metrics.jsonl").exists()
               and checkpointed_step(workdir) >= 2 * EVERY):
      assert proc.poll() is None, "the run ended before it could be killed"
      assert time.time() < deadline, "no checkpoint within 90 s"
      time.sleep(0.05)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert not (workdir / "results.json").exists()
  killed_at = checkpointed_step(workdir)
  assert EVERY <= killed_at < STEPS
  return killed_at


def test_sigkill_then_resume_matches_an_uninterrupted_run(env, uninterrupted, tmp_path):
  workdir = tmp_path / "killed"
  kill_after_two_checkpoints(env, workdir, REPRODUCIBLE)
  resumed = run(env, workdir, REPRODUCIBLE)
  assert "resumed from" in resumed.stderr
  a, b = results(uninterrupted), results(workdir)
  assert b["steps"] == a["steps"] == STEPS
  assert b["epsilon"] == a["epsilon"]
  assert b["ledger"] == a["ledger"]  # one phase of STEPS steps: no step counted twice
  assert b["params_sha256"] == a["params_sha256"]
  with np.load(uninterrupted / "params.npz") as pa, np.load(workdir / "params.npz") as pb:
    for key in pa.files:
      np.testing.assert_array_equal(pa[key], pb[key])


def test_secure_sigkill_then_resume_keeps_the_ledger_of_an_uninterrupted_run(env, uninterrupted,
                                                                            tmp_path):
  """Secure batches and noise are fresh after a resume (so the parameters differ from any other
  run's), but every step is counted once: the same ledger and epsilon as without the kill."""
  workdir = tmp_path / "killed_secure"
  kill_after_two_checkpoints(env, workdir)
  resumed = run(env, workdir)
  assert "resumed from" in resumed.stderr
  a, b = results(uninterrupted), results(workdir)
  assert b["steps"] == a["steps"] == STEPS
  assert b["ledger"] == a["ledger"] and b["epsilon"] == a["epsilon"]
  assert b["params_sha256"] != a["params_sha256"]


def test_resuming_with_another_source_of_randomness_is_refused(env, uninterrupted, tmp_path):
  workdir = tmp_path / "switched"
  (workdir / "private").mkdir(parents=True)
  (workdir / "private" / "checkpoint.msgpack").write_bytes(
      (uninterrupted / "private" / "checkpoint.msgpack").read_bytes())
  proc = run(env, workdir, f"--config.num_steps={STEPS + 10}", check=False)  # without the opt-in
  assert proc.returncode != 0 and "reproducible_private_randomness" in proc.stderr


def test_changed_privacy_is_refused_then_composed_when_allowed(env, uninterrupted, tmp_path):
  workdir = tmp_path / "changed"
  # Copy the finished run's checkpoint, then ask for 20 more steps with twice the noise.
  (workdir / "private").mkdir(parents=True)
  (workdir / "private" / "checkpoint.msgpack").write_bytes(
      (uninterrupted / "private" / "checkpoint.msgpack").read_bytes())
  more = f"--config.num_steps={STEPS + 20}"
  refused = run(env, workdir, more, "--config.noise_multiplier=2.0", REPRODUCIBLE, check=False)
  assert refused.returncode != 0
  assert "allow_privacy_change" in refused.stderr and "noise_multiplier=2.0" in refused.stderr

  run(env, workdir, more, "--config.noise_multiplier=2.0", "--config.allow_privacy_change=True",
      REPRODUCIBLE)
  ledger = results(workdir)["ledger"]["phases"]
  assert [(p["noise_multiplier"], p["steps"]) for p in ledger] == [(1.0, STEPS), (2.0, 20)]
  phases = [accounting.PrivacyPhase(1.0, 1797, 64, steps=STEPS),
            accounting.PrivacyPhase(2.0, 1797, 64, steps=20)]
  expected = accounting.compute_epsilon(phases, 1e-5)
  assert results(workdir)["epsilon"] == pytest.approx(expected, rel=1e-9)
  assert expected > results(uninterrupted)["epsilon"]


def test_max_epsilon_stops_before_the_budget_is_exceeded(uninterrupted, tmp_path, caplog):
  # In-process (the same config the command line overrides) to spare a subprocess.
  budget = 2.0  # the full run reaches about 2.5
  assert results(uninterrupted)["epsilon"] > budget
  config = default.get_config()
  config.update(num_steps=STEPS, checkpoint_every=EVERY, max_epsilon=budget)
  with caplog.at_level("WARNING"):
    out = experiment.train_and_evaluate(config, str(tmp_path))
  assert out["stopped_by_budget"] and out["steps"] < STEPS
  assert out["epsilon"] <= budget < accounting.compute_epsilon(
      [accounting.PrivacyPhase(1.0, 1797, 64, steps=out["steps"] + 1)], 1e-5)
  # Logged steps count from 1: after `steps` steps, step `steps + 1` is the one refused.
  assert f"stopping before step {out['steps'] + 1}:" in caplog.text and "max_epsilon=2" in caplog.text


# ----------------------------------------------------------------------------- released vs private


def test_results_hold_no_unnoised_training_statistic(uninterrupted):
  # (The ledger's and config's "batch_size" is the configured expected size: public.)
  released = [results(uninterrupted)] + [
      json.loads(line) for line in (uninterrupted / "progress.jsonl").read_text().splitlines()]
  assert len(released) > STEPS // EVERY
  for entry in released:
    assert not set(entry) & set(UNNOISED_STATISTICS), entry
  private = uninterrupted / "private"
  diagnostics = json.loads((private / "diagnostics.json").read_text())
  assert 0 <= diagnostics["train_accuracy"] <= 1
  logged = [json.loads(line) for line in (private / "metrics.jsonl").read_text().splitlines()]
  assert {"loss", "clipped_fraction", "mean_grad_norm", "batch_size"} <= set(logged[-1])
  assert (private / "checkpoint.msgpack").exists() and not (uninterrupted / "checkpoint.msgpack").exists()


def test_the_secret_seed_is_kept_out_of_released_files(uninterrupted):
  """With --reproducible_private_randomness the seed keys the noise: only private/ holds it."""
  config = json.loads((uninterrupted / "config.json").read_text())
  assert config["reproducible_private_randomness"] is True and config["seed"] != 0
  assert json.loads((uninterrupted / "private" / "secret_seed.json").read_text())["secret_seed"] == 0


def test_privacy_report_names_the_released_files(uninterrupted):
  report = json.loads((uninterrupted / "privacy_report.json").read_text())
  assert set(report["files"]) == {"params.npz", "results.json", "progress.jsonl", "config.json"}
  assert all((uninterrupted / name).exists() for name in report["files"])
  assert report["epsilon"] == pytest.approx(results(uninterrupted)["epsilon"])
  assert report["steps"] == STEPS and report["secure_randomness"] is False
  assert "secret seed" in report["condition"]
  assert (uninterrupted / "privacy_report.md").read_text().startswith("# Privacy report")
