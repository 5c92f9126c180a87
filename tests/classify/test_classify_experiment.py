"""The classify experiment end to end on a tiny digits sweep: files, content, resume, bad flags,
and what an adversary reading the released files can (not) learn."""

import dataclasses
import json
import subprocess
import sys

import pytest

from dpjax import classifier
from experiments import classify

# Statistics of the training data: never in results.json or the tables.
TRAINING_STATISTICS = ("train_accuracy", "train_loss", "loss", "clipped_fraction",
                       "mean_grad_norm", "batch_size", "num_nonfinite")

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
    assert 0 <= row["test_accuracy"] <= 1
  on_disk = json.loads((workdir / "results.json").read_text())
  assert on_disk["runs"] == json.loads(json.dumps(results["runs"]))


def test_no_training_statistic_is_released(finished):
  sweep, workdir, _ = finished
  released = json.loads((workdir / "results.json").read_text())
  table = (workdir / "results.md").read_text()
  for row in released["runs"]:
    for key in TRAINING_STATISTICS:
      assert key not in row, key
  assert "train acc" not in table and "| train |" not in table
  for name, _ in classify.runs(sweep):
    run_dir = workdir / "runs" / name.replace("/", "__")
    # Keys of the result and of every logged entry (the config and the privacy ledger name the
    # expected batch_size, a public hyperparameter, so the test looks at keys, not text).
    row = json.loads((run_dir / "result.json").read_text())
    progress = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    for entry in [row] + row["history"] + progress:
      assert not set(entry) & set(TRAINING_STATISTICS), (name, sorted(entry))
    private = json.loads((run_dir / "private" / classifier.DIAGNOSTICS).read_text())
    assert 0 <= private["train_accuracy"] <= 1 and "loss" in private["batch_history"][-1]


def test_privacy_report_names_the_released_files(finished):
  _, workdir, results = finished
  privacy = json.loads((workdir / "privacy_report.json").read_text())
  assert (workdir / "privacy_report.md").exists()
  releases = {r["name"]: r for r in privacy["releases"]}
  assert set(releases) == {row["run"] for row in results["runs"]}
  for release in releases.values():
    assert "results.json" in release["files"] and "results.md" in release["files"]
    assert all((workdir / f).exists() for f in release["files"]), release["files"]
  dp = releases["digits/dpsgd_gaussian_eps8"]
  row = next(r for r in results["runs"] if r["run"] == "digits/dpsgd_gaussian_eps8")
  assert dp["epsilon"] == pytest.approx(row["epsilon"]) and dp["steps"] == 8
  assert dp["mechanism"].startswith("DP-SGD") and dp["noise_multiplier"] == row["noise_multiplier"]
  local = releases["digits/ldp_beta0.5"]
  assert local["epsilon"] == pytest.approx(128.0) and local["delta"] == 0.0
  assert releases["digits/original"]["epsilon"] == "inf"
  not_covered = " ".join(privacy["not_covered"])
  assert "hyperparameters (the DP recipe) chosen on test accuracy" in not_covered
  assert "labels released in clear" in not_covered and "private/" in not_covered
  assert privacy["secure_randomness"] is True


def test_each_run_has_its_own_secret_randomness(tmp_path):
  """Same seed, same config: the released outcome (test loss, a fingerprint of the parameters)
  differs between two runs by default; with the opt-in it is identical for the same run name and
  different for another name (each arm its own stream). Epsilon never changes."""
  _, config = next((n, c) for n, c in classify.runs(tiny_sweep(steps=2, ldp_scale=0.0))
                   if "dpsgd" in n)
  dataset = classifier.load_dataset(config)

  def row(name, config, folder):
    return classify.run_one(name, config, str(tmp_path / folder), dataset)

  secure = [row("d/dp", config, f"secure{i}") for i in range(2)]
  assert secure[0]["test_loss"] != secure[1]["test_loss"]
  opted = dataclasses.replace(config, reproducible_private_randomness=True)
  same = [row("d/dp", opted, f"opted{i}") for i in range(2)]
  other_arm = row("d/other", opted, "opted_other")
  assert same[0]["test_loss"] == same[1]["test_loss"] != other_arm["test_loss"]
  assert secure[0]["epsilon"] == secure[1]["epsilon"] == same[0]["epsilon"]
  # With the opt-in the seed is a secret: out of the released config, kept in private/.
  assert json.loads((tmp_path / "opted0" / "config.json").read_text())["seed"] != opted.seed
  assert same[0]["config"]["seed"] != opted.seed
  assert (tmp_path / "opted0" / "private" / "secret_seed.json").exists()


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
    entries = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    assert [e["step"] for e in entries if "test_accuracy" in e] == [4, 8]
    assert (run_dir / "private" / "checkpoint.msgpack").exists()
    assert len((run_dir / "private" / "metrics.jsonl").read_text().splitlines()) == 2


def test_rerun_reads_finished_runs(finished):
  sweep, workdir, results = finished
  again = classify.train_and_evaluate(sweep, str(workdir))
  assert again["runs"] == results["runs"]
  for name, _ in classify.runs(sweep):  # nothing was trained twice
    lines = (workdir / "runs" / name.replace("/", "__") / "private" / "metrics.jsonl").read_text().splitlines()
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
  labelled = classify.make_config("medical_resnet18", data_dir="/nonexistent", ldp_label_epsilon=1.0)
  assert {n: c.ldp_label_epsilon for n, c in classify.runs(labelled)
          if c.ldp_label_epsilon is not None} == {
              n: 1.0 for n, c in classify.runs(labelled) if c.ldp_scale > 0}
  assert all(c.ldp_label_epsilon is None for _, c in classify.runs(medical))
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
