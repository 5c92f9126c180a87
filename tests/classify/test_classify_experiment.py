"""The classify experiment end to end on a tiny digits sweep: files, content, resume, bad
settings, the config files, and what an adversary reading the released files can (not) learn."""

import dataclasses
import json
import pathlib
import subprocess
import sys

import pytest

from experiments.classify import classifier
from experiments.classify import experiment
from experiments.classify import sweep as sweep_lib
from experiments.classify.configs import catsdogs_vgg16
from experiments.classify.configs import cifar10_vgg16
from experiments.classify.configs import medical_cnn
from experiments.classify.configs import medical_resnet18
from experiments.classify.configs import quick

# Statistics of the training data: never in results.json or the tables.
TRAINING_STATISTICS = ("train_accuracy", "train_loss", "loss", "clipped_fraction",
                       "mean_grad_norm", "batch_size", "num_nonfinite")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO = pathlib.Path(__file__).resolve().parents[2]


def tiny_config(**overrides):
  """The quick config on digits with an MLP: 8 steps per run (seconds)."""
  config = quick.get_config("tiny")
  settings = dict(dataset="digits", model="mlp", steps=8, batch_size=64, learning_rate=2.0,
                  max_per_class=30, ldp_scale=0.5, target_epsilon=8.0, eval_every=4)
  for name, value in {**settings, **overrides}.items():
    config[name] = value
  config.dpsgd.learning_rate = 2.0
  config.dpsgd.batch_size = 64
  return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("classify")
  config = tiny_config()
  return (sweep_lib.from_config_dict(config), workdir,
          experiment.train_and_evaluate(config, str(workdir)))


@pytest.mark.slow
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


@pytest.mark.slow
def test_no_training_statistic_is_released(finished):
  sweep, workdir, _ = finished
  released = json.loads((workdir / "results.json").read_text())
  table = (workdir / "results.md").read_text()
  for row in released["runs"]:
    for key in TRAINING_STATISTICS:
      assert key not in row, key
  assert "train acc" not in table and "| train |" not in table
  for name, _ in sweep_lib.runs(sweep):
    run_dir = workdir / "runs" / name.replace("/", "__")
    # Keys of the result and of every logged entry (the config and the privacy ledger name the
    # expected batch_size, a public hyperparameter, so the test looks at keys, not text).
    row = json.loads((run_dir / "result.json").read_text())
    progress = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    for entry in [row] + row["history"] + progress:
      assert not set(entry) & set(TRAINING_STATISTICS), (name, sorted(entry))
    private = json.loads((run_dir / "private" / classifier.DIAGNOSTICS).read_text())
    assert 0 <= private["train_accuracy"] <= 1 and "loss" in private["batch_history"][-1]


@pytest.mark.slow
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


@pytest.mark.slow
def test_each_run_has_its_own_secret_randomness(tmp_path):
  """Same seed, same config: the released outcome (test loss, a fingerprint of the parameters)
  differs between two runs by default; with the opt-in it is identical for the same run name and
  different for another name (each arm its own stream). Epsilon never changes."""
  _, config = next((n, c) for n, c in
                   sweep_lib.runs(sweep_lib.from_config_dict(tiny_config(steps=2, ldp_scale=0.0)))
                   if "dpsgd" in n)
  dataset = classifier.load_dataset(config)

  def row(name, config, folder):
    return experiment.run_one(name, config, str(tmp_path / folder), dataset)

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


@pytest.mark.slow
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
  for name, _ in sweep_lib.runs(sweep):
    run_dir = workdir / "runs" / name.replace("/", "__")
    entries = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    assert [e["step"] for e in entries if "test_accuracy" in e] == [4, 8]
    assert (run_dir / "private" / "checkpoint.msgpack").exists()
    assert len((run_dir / "private" / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_rerun_reads_finished_runs(finished):
  sweep, workdir, results = finished
  again = experiment.train_and_evaluate(tiny_config(), str(workdir))
  assert again["runs"] == results["runs"]
  for name, _ in sweep_lib.runs(sweep):  # nothing was trained twice
    lines = (workdir / "runs" / name.replace("/", "__") / "private" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2


def test_config_files_resolve():
  medical = sweep_lib.from_config_dict(medical_resnet18.get_config())
  names = [name for name, _ in sweep_lib.runs(medical)]
  assert len(names) == 2 * (1 + 3 + 3) and "retinamnist/ldp_beta4" in names
  assert all(c.model == "resnet18" and c.epochs == 50 and c.learning_rate == 0.01
             and c.batch_size == 128 for _, c in sweep_lib.runs(medical))
  config = cifar10_vgg16.get_config()
  config.target_epsilon = 0.35  # one DP-SGD arm instead of the config's noise 1.1
  (name, run), = sweep_lib.runs(sweep_lib.from_config_dict(config))
  assert name == "cifar10_folder/dpsgd_gaussian_eps0.35"
  assert run.target_epsilon == 0.35 and run.decay_steps == 5000 and run.batch_size == 250
  catsdogs = sweep_lib.from_config_dict(catsdogs_vgg16.get_config())
  names = [name for name, _ in sweep_lib.runs(catsdogs)]
  assert len(names) == 1 + 2 * 4 and "tfds:cats_vs_dogs/dpsgd_laplace_eps0.5" in names
  config = medical_resnet18.get_config()
  config.ldp_label_epsilon = 1.0
  labelled = sweep_lib.runs(sweep_lib.from_config_dict(config))
  assert {n: c.ldp_label_epsilon for n, c in labelled if c.ldp_label_epsilon is not None} == {
      n: 1.0 for n, c in labelled if c.ldp_scale > 0}
  assert all(c.ldp_label_epsilon is None for _, c in sweep_lib.runs(medical))
  config = medical_resnet18.get_config()
  config.only = "*/original"
  assert [n for n, _ in sweep_lib.runs(sweep_lib.from_config_dict(config))] == [
      "retinamnist/original", "pneumoniamnist/original"]


def test_dp_arms_take_the_dpsgd_recipe():
  for runs in (sweep_lib.runs(sweep_lib.from_config_dict(medical_cnn.get_config())),
               sweep_lib.runs(sweep_lib.from_config_dict(quick.get_config()))):
    for name, run in runs:
      dp = "dpsgd" in name
      assert (run.optimizer, run.learning_rate, run.batch_size) == (
          ("momentum", 0.1, 64) if dp else ("adam", 1e-3, 128)), name
      assert run.is_private == dp


def test_tiny_shrinks_every_config_and_other_arguments_are_refused():
  for module in (quick, medical_cnn, medical_resnet18, cifar10_vgg16, catsdogs_vgg16):
    full = sweep_lib.from_config_dict(module.get_config())
    tiny = sweep_lib.from_config_dict(module.get_config("tiny"))
    assert [n for n, _ in sweep_lib.runs(full)] == [n for n, _ in sweep_lib.runs(tiny)]
    assert tiny.base.max_per_class is not None and full.base.max_per_class is None
    with pytest.raises(ValueError, match="unknown config argument 'huge'; valid: tiny"):
      module.get_config("huge")


def test_quick_falls_back_to_digits_without_the_data_file(tmp_path):
  config = quick.get_config()
  config.data_dir = str(tmp_path)
  assert sweep_lib.from_config_dict(config).datasets == ("digits",)
  config.dataset = "retinamnist"  # named explicitly: no fallback
  assert sweep_lib.from_config_dict(config).datasets == ("retinamnist",)


def test_default_config_holds_the_classifier_defaults():
  """Every base field of a run can be set from a config file, at ClassifierConfig's default."""
  defaults = sweep_lib.default_config()
  for field in dataclasses.fields(classifier.ClassifierConfig):
    if field.name in sweep_lib.ARM_FIELDS:
      continue
    expected = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    value = defaults[field.name]
    assert (tuple(value) if isinstance(value, (list, tuple)) else value) == expected, field.name


@pytest.mark.parametrize("field,value,message", [
    ("model", "resnet99", r"--config.model='resnet99' is unknown; valid: "),
    ("dataset", "mnist3", r"--config.dataset='mnist3' is unknown; valid: "),
    ("mechanism", "cauchy", r"--config.mechanism='cauchy' is unknown; valid: gaussian, laplace"),
    ("only", "*/nothing", r"--config.only='\*/nothing' matches no run; runs of this config: "),
    ("batch_size", 0, r"--config.batch_size=0 must be > 0"),
    ("delta", 1.5, r"--config.delta=1.5 must be in \(0, 1\)"),
    ("target_epsilons", (8.0, -1.0), r"--config.target_epsilons=\(8.0, -1.0\) every epsilon"),
    ("cpu_devices", "two", r"--config.cpu_devices='two' expected a whole number >= 0 or 'auto'"),
])
def test_bad_settings_name_the_field(field, value, message):
  config = quick.get_config()
  config[field] = value
  with pytest.raises(ValueError, match=message):
    sweep_lib.from_config_dict(config)


def test_bad_dpsgd_setting_names_the_dp_arms():
  config = quick.get_config()
  config.dpsgd.optimizer = "adagrad"
  with pytest.raises(ValueError, match=r"DP-SGD arms \(--config.dpsgd.\*\).*'adagrad' is unknown"):
    sweep_lib.from_config_dict(config)


def test_unknown_field_lists_the_valid_ones():
  with pytest.raises(ValueError, match="unknown config field.*lr; valid: datasets, dataset"):
    sweep_lib.from_config_dict({"lr": 0.1})


def test_catsdogs_without_prepared_data_says_how(tmp_path):
  config = catsdogs_vgg16.get_config("tiny")
  config.data_dir = str(tmp_path)
  config.only = "*/original"
  with pytest.raises(FileNotFoundError, match="cats_vs_dogs.*tfds build"):
    experiment.train_and_evaluate(config, str(tmp_path / "out"))


@pytest.mark.slow
def test_command_line_names_a_bad_value_without_a_traceback(tmp_path):
  process = subprocess.run(
      [sys.executable, "-m", "experiments.classify",
       "--config=experiments/classify/configs/quick.py:tiny", f"--workdir={tmp_path}",
       "--config.mechanism=cauchy"], capture_output=True, text=True, timeout=300, cwd=REPO)
  assert process.returncode != 0
  assert "classify: error: --config.mechanism='cauchy' is unknown" in process.stderr
  assert "Traceback" not in process.stderr


@pytest.mark.slow
def test_command_line_runs_a_config_and_prints_the_table(tmp_path):
  process = subprocess.run(
      [sys.executable, "-m", "experiments.classify",
       "--config=experiments/classify/configs/quick.py:tiny", f"--workdir={tmp_path}",
       "--config.dataset=digits", "--config.model=mlp", "--config.steps=2",
       "--config.max_per_class=20", "--config.dpsgd.learning_rate=2.0"],
      capture_output=True, text=True, timeout=600, cwd=REPO)
  assert process.returncode == 0, process.stderr[-3000:]
  assert "| digits/dpsgd_gaussian_eps8 | mlp | gaussian |" in process.stdout
  assert "privacy report: " in process.stdout
  assert (tmp_path / "privacy_report.md").exists() and (tmp_path / "results.json").exists()
