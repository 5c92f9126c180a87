"""The classify experiment end to end on a tiny digits sweep: files, content, resume, bad flags."""

import json
import math
import subprocess
import sys

import pytest

from experiments import classify

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_sweep(**overrides):
  settings = dict(dataset="digits", model="mlp", steps=8, batch_size=64, learning_rate=2.0,
                  max_per_class=30, ldp_scale=0.5, target_epsilon=8.0, eval_every=4)
  return classify.make_config("quick", **{**settings, **overrides})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("classify")
  sweep = tiny_sweep()
  return sweep, workdir, classify.train_and_evaluate(sweep, str(workdir))


def test_runs_and_results(finished):
  _, workdir, results = finished
  rows = {row["run"]: row for row in results["runs"]}
  assert sorted(rows) == ["digits/dpsgd_gaussian_eps8", "digits/ldp_beta0.5", "digits/original"]
  assert rows["digits/original"]["epsilon"] == "inf"
  assert rows["digits/ldp_beta0.5"]["ldp_epsilon_per_pixel"] == pytest.approx(2.0)
  assert rows["digits/ldp_beta0.5"]["ldp_epsilon_per_image"] == pytest.approx(128.0)
  dp = rows["digits/dpsgd_gaussian_eps8"]
  assert 0.98 * 8 <= dp["epsilon"] <= 8 and dp["delta"] == 1e-5 and dp["steps"] == 8
  for row in rows.values():
    assert 0 <= row["test_accuracy"] <= 1 and 0 <= row["train_accuracy"] <= 1
  on_disk = json.loads((workdir / "results.json").read_text())
  assert on_disk["runs"] == json.loads(json.dumps(results["runs"]))


def test_tables_plots_and_run_dirs(finished):
  sweep, workdir, results = finished
  table = (workdir / "results.md").read_text()
  assert "### digits" in table and "| test |" in table
  assert "| digits/dpsgd_gaussian_eps8 | mlp | gaussian |" in table
  for name in ("accuracy_vs_epoch.png", "accuracy_vs_epsilon.png", "ldp_grid_digits.png"):
    data = (workdir / name).read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 2000, name
  config = json.loads((workdir / "config.json").read_text())
  assert config["sweep"]["base"]["model"] == "mlp"
  assert set(config["runs"]) == {row["run"] for row in results["runs"]}
  for name, _ in classify.runs(sweep):
    run_dir = workdir / "runs" / name.replace("/", "__")
    entries = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in entries if "test_accuracy" in e] == [4, 8]
    assert (run_dir / "checkpoint.msgpack").exists()


def test_rerun_reads_finished_runs(finished):
  sweep, workdir, results = finished
  again = classify.train_and_evaluate(sweep, str(workdir))
  assert again["runs"] == results["runs"]
  for name, _ in classify.runs(sweep):  # nothing was trained twice
    lines = (workdir / "runs" / name.replace("/", "__") / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2


def test_presets_resolve():
  medical = classify.make_config("medical_resnet18", data_dir="/nonexistent")
  names = [name for name, _ in classify.runs(medical)]
  assert len(names) == 2 * (1 + 3 + 3) and "retinamnist/ldp_beta4" in names
  assert all(c.model == "resnet18" and c.epochs == 50 and c.learning_rate == 0.01
             and c.batch_size == 128 for _, c in classify.runs(medical))
  cifar = classify.make_config("cifar10_vgg16", target_epsilon=0.35)
  (name, config), = classify.runs(cifar)
  assert config.target_epsilon == 0.35 and config.decay_steps == 5000 and config.batch_size == 250
  catsdogs = classify.make_config("catsdogs_vgg16")
  names = [name for name, _ in classify.runs(catsdogs)]
  assert len(names) == 1 + 2 * 4 and "tfds:cats_vs_dogs/dpsgd_laplace_eps0.5" in names
  only = classify.make_config("medical_resnet18", only=("*/original",))
  assert [n for n, _ in classify.runs(only)] == ["retinamnist/original", "pneumoniamnist/original"]


@pytest.mark.parametrize("kwargs,message", [
    (dict(preset="nope"), "unknown preset 'nope'"),
    (dict(preset="quick", model="resnet99"), "unknown model 'resnet99'"),
    (dict(preset="quick", dataset="mnist3"), "unknown dataset 'mnist3'"),
    (dict(preset="quick", mechanism="cauchy"), "unknown mechanism 'cauchy'"),
    (dict(preset="quick", only=("*/nothing",)), "matches no run"),
])
def test_bad_settings_are_clear_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    classify.make_config(**kwargs)


def test_catsdogs_without_prepared_data_says_how(tmp_path):
  sweep = classify.make_config("catsdogs_vgg16", data_dir=str(tmp_path), only=("*/original",))
  with pytest.raises(FileNotFoundError, match="cats_vs_dogs.*tfds build"):
    classify.train_and_evaluate(sweep, str(tmp_path / "out"))


def test_cli_rejects_unknown_preset(tmp_path):
  process = subprocess.run(
      [sys.executable, "-m", "experiments.classify", f"--workdir={tmp_path}", "--preset=nope"],
      capture_output=True, text=True, timeout=120)
  assert process.returncode != 0
  assert "unknown preset 'nope'" in process.stderr
