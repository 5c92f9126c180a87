"""Crash safety through the real command line: SIGKILL mid-run, resume, privacy changes, budgets."""

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

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS, EVERY = 60, 10


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  # A shared persistent compilation cache: later subprocesses skip the ~5 s compile.
  cache = tmp_path_factory.mktemp("jax_cache")
  return {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}


def command(workdir, *flags):
  return [sys.executable, "-m", "experiments.train_small", f"--workdir={workdir}",
          f"--num_steps={STEPS}", f"--checkpoint_every={EVERY}", *flags]


def run(env, workdir, *flags, check=True):
  proc = subprocess.run(command(workdir, *flags), cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120)
  if check and proc.returncode != 0:
    raise AssertionError(f"train_small failed:\n{proc.stderr[-3000:]}")
  return proc


def results(workdir):
  return json.loads((pathlib.Path(workdir) / "results.json").read_text())


def checkpointed_step(workdir) -> int:
  """The last step logged to metrics.jsonl (a checkpoint is written right after each 10th)."""
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return max((json.loads(line)["step"] for line in lines if line.strip()), default=0)


@pytest.fixture(scope="module")
def uninterrupted(env, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  run(env, workdir)
  return workdir


def test_sigkill_then_resume_matches_an_uninterrupted_run(env, uninterrupted, tmp_path):
  workdir = tmp_path / "killed"
  proc = subprocess.Popen(command(workdir, "--sleep_per_step=0.1"), cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt = workdir / "checkpoint.msgpack"
  deadline = time.time() + 90
  try:
    while not (ckpt.exists() and (workdir / "metrics.jsonl").exists()
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

  resumed = run(env, workdir)
  assert "resumed from" in resumed.stderr
  a, b = results(uninterrupted), results(workdir)
  assert b["steps"] == a["steps"] == STEPS
  assert b["epsilon"] == a["epsilon"]
  assert b["ledger"] == a["ledger"]  # one phase of STEPS steps: no step counted twice
  assert b["params_sha256"] == a["params_sha256"]
  with np.load(uninterrupted / "params.npz") as pa, np.load(workdir / "params.npz") as pb:
    for key in pa.files:
      np.testing.assert_array_equal(pa[key], pb[key])


def test_changed_privacy_is_refused_then_composed_when_allowed(env, uninterrupted, tmp_path):
  workdir = tmp_path / "changed"
  # Copy the finished run's checkpoint, then ask for 20 more steps with twice the noise.
  workdir.mkdir()
  (workdir / "checkpoint.msgpack").write_bytes((uninterrupted / "checkpoint.msgpack").read_bytes())
  more = f"--num_steps={STEPS + 20}"
  refused = run(env, workdir, more, "--noise_multiplier=2.0", check=False)
  assert refused.returncode != 0
  assert "--allow_privacy_change" in refused.stderr and "noise_multiplier=2.0" in refused.stderr

  run(env, workdir, more, "--noise_multiplier=2.0", "--allow_privacy_change")
  ledger = results(workdir)["ledger"]["phases"]
  assert [(p["noise_multiplier"], p["steps"]) for p in ledger] == [(1.0, STEPS), (2.0, 20)]
  phases = [accounting.PrivacyPhase(1.0, 1797, 64, steps=STEPS),
            accounting.PrivacyPhase(2.0, 1797, 64, steps=20)]
  expected = accounting.compute_epsilon(phases, 1e-5)
  assert results(workdir)["epsilon"] == pytest.approx(expected, rel=1e-9)
  assert expected > results(uninterrupted)["epsilon"]


def test_max_epsilon_stops_before_the_budget_is_exceeded(uninterrupted, tmp_path, caplog):
  # In-process (the flags map one-to-one onto the Config) to spare a subprocess.
  from experiments import train_small  # pylint: disable=import-outside-toplevel
  budget = 2.0  # the full run reaches about 2.5
  assert results(uninterrupted)["epsilon"] > budget
  config = train_small.Config(num_steps=STEPS, checkpoint_every=EVERY, max_epsilon=budget)
  with caplog.at_level("WARNING"):
    out = train_small.train_and_evaluate(config, str(tmp_path))
  assert out["stopped_by_budget"] and out["steps"] < STEPS
  assert out["epsilon"] <= budget < accounting.compute_epsilon(
      [accounting.PrivacyPhase(1.0, 1797, 64, steps=out["steps"] + 1)], 1e-5)
  # Logged steps count from 1: after `steps` steps, step `steps + 1` is the one refused.
  assert f"stopping before step {out['steps'] + 1}:" in caplog.text and "--max_epsilon=2" in caplog.text
