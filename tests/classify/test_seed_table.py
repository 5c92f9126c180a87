"""experiments.classify.seed_table: mean and spread of classify results over seeds."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments.classify import seed_table

REPO = pathlib.Path(__file__).resolve().parents[2]


def _write(workdir, rows):
  workdir.mkdir()
  (workdir / "results.json").write_text(json.dumps({"runs": rows}))
  return str(workdir)


def _row(name, test, epsilon):
  # results.json rows hold no training accuracy any more (a private diagnostic).
  return {"run": name, "test_accuracy": test, "epsilon": epsilon}


def test_mean_and_sample_sd_over_seeds(tmp_path):
  a = _write(tmp_path / "s0", [_row("d/original", 0.80, "inf"), _row("d/eps8", 0.70, 7.9)])
  b = _write(tmp_path / "s1", [_row("d/original", 0.90, "inf"), _row("d/eps8", 0.60, 8.0)])
  table = seed_table.seed_table([a, b])
  sd = 100 * np.std([0.8, 0.9], ddof=1)
  assert f"| d/original | 2 | 85.00 +- {sd:.2f} | 80.0, 90.0 | inf |" in table
  assert "| d/eps8 | 2 | 65.00 +- 7.07 | 70.0, 60.0 | 8.000 |" in table
  assert "train" not in table.split("\n\n")[0]  # no training-set column
  assert "compose" in table  # seeds trained on the same data: their costs add up


def test_missing_workdir_names_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="results.json not found"):
    seed_table.seed_table([str(tmp_path / "absent")])


@pytest.mark.slow
def test_runs_as_a_module(tmp_path):
  a = _write(tmp_path / "s0", [_row("d/original", 0.80, "inf")])
  b = _write(tmp_path / "s1", [_row("d/original", 0.90, "inf")])
  output = tmp_path / "seeds.md"
  process = subprocess.run(
      [sys.executable, "-m", "experiments.classify.seed_table", f"--workdirs={a},{b}",
       f"--output={output}"], capture_output=True, text=True, timeout=120, cwd=REPO)
  assert process.returncode == 0, process.stderr
  assert "| d/original | 2 | 85.00 +- 7.07 | 80.0, 90.0 | inf |" in process.stdout
  assert output.read_text() == process.stdout.rstrip("\n") + "\n"
