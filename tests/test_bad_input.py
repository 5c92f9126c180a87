"""Every bad input gets a clear message that names the input (and, where there is one, the fix)."""

import logging
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from dpjax import checkpoint
from dpjax import clipping
from dpjax import engine
from dpjax import report
from dpjax import sampling
from dpjax import train
from dpjax.data import paths
from dpjax.data import validate
from dpjax.models import registry
from experiments.audit import experiment as audit_experiment
from experiments.audit.configs import tiny as audit_tiny
from experiments.train_small import experiment as train_small
from experiments.train_small.configs import default as train_small_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def small(**overrides):
  """train_small's config file, overridden as --config.<field>=<value> would."""
  config = train_small_config.get_config()
  config.update({"num_steps": 2, "checkpoint_every": 1, **overrides})
  return config


def save_npz(path, **arrays):
  np.savez(path, **arrays)
  return str(path)


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("x_shape, y_shape, match", [
    ((10,), (10,), r"features have shape \(10,\)"),
    ((10, 3), (10, 2), r"labels have shape \(10, 2\)"),
    ((10, 3), (9,), "10 feature rows but 9 labels"),
])
def test_wrong_shapes_are_named(x_shape, y_shape, match):
  with pytest.raises(ValueError, match=match):
    validate.check_classification_data(np.zeros(x_shape), np.zeros(y_shape, np.int32))


def test_feature_shape_mismatch_names_both_shapes():
  with pytest.raises(ValueError, match=r"shape \(3,\) per example; the model expects \(4,\)"):
    validate.check_classification_data(np.zeros((5, 3)), np.zeros(5, np.int32), feature_shape=(4,))


def test_wrong_shapes_in_an_npz_file_reach_the_user(tmp_path):
  path = save_npz(tmp_path / "d.npz", x=np.zeros((20, 4), np.float32), y=np.zeros(19, np.int32))
  with pytest.raises(ValueError, match=r"--config.data=.*d.npz: 20 feature rows but 19 labels"):
    train_small.train_and_evaluate(small(data=path), str(tmp_path / "w"))


def test_core_loop_refuses_data_leaves_of_different_lengths():
  sampler = sampling.BatchSampler(10, 2)
  dp = train.DPConfig(clipping.ClippingConfig(1.0), 1.0, 2.0)
  with pytest.raises(ValueError, match=r"leading sizes \[9, 10\]"):
    engine.train(lambda p, e: 0.0, {"w": np.zeros(2)}, optax.sgd(0.1), (np.zeros((10, 2)), np.zeros(9)),
                 sampler=sampler, dp=dp, loop=engine.LoopConfig(num_steps=1))


# ----------------------------------------------------------------------------- values


def test_nan_and_inf_in_data_are_counted(tmp_path):
  x = np.ones((20, 4), np.float32)
  x[3, 1], x[5, 2] = np.nan, np.inf
  with pytest.raises(ValueError, match="2 NaN/Inf values"):
    validate.check_classification_data(x, np.zeros(20, np.int32))
  with pytest.raises(ValueError, match=r"training data .* has 2 NaN/Inf values"):  # the core loop too
    engine.check_finite_data((x, np.zeros(20)))
  path = save_npz(tmp_path / "nan.npz", x=x, y=np.zeros(20, np.int32))
  with pytest.raises(ValueError, match="nan.npz: features hold 2 NaN/Inf"):
    train_small.train_and_evaluate(small(data=path), str(tmp_path / "w"))


@pytest.mark.parametrize("labels, match", [
    ([0, 1, -1, 2], r"1 labels are outside 0..9 \(e.g. -1\)"),
    ([0, 10, 11, 2], r"2 labels are outside 0..9 \(e.g. 10\)"),
    ([0.0, 1.5, 2.0, 1.0], "non-integer values"),
])
def test_labels_out_of_range(labels, match):
  with pytest.raises(ValueError, match=match):
    validate.check_classification_data(np.zeros((4, 2)), np.array(labels), num_classes=10)


def test_empty_dataset(tmp_path):
  with pytest.raises(ValueError, match="is empty"):
    validate.check_classification_data(np.zeros((0, 3)), np.zeros(0, np.int32))
  with pytest.raises(ValueError, match="the dataset is empty"):
    sampling.BatchSampler(0, 1)
  path = save_npz(tmp_path / "empty.npz", x=np.zeros((0, 3), np.float32), y=np.zeros(0, np.int32))
  with pytest.raises(ValueError, match="empty.npz is empty"):
    train_small.train_and_evaluate(small(data=path), str(tmp_path / "w"))


def test_dataset_smaller_than_the_batch(tmp_path):
  path = save_npz(tmp_path / "tiny.npz", x=np.zeros((10, 3), np.float32), y=np.arange(10) % 2)
  with pytest.raises(ValueError,
                     match=r"--config.batch_size=64 is larger than the dataset \(10 examples"):
    train_small.train_and_evaluate(small(data=path), str(tmp_path / "w"))
  with pytest.raises(ValueError, match="batch_size=64 must be between 1 and the dataset size 10"):
    sampling.BatchSampler(10, 64)


# ----------------------------------------------------------------------------- files


def train_small_state(model="linear"):
  params = train_small.init_params(model, 64, 10, jax.random.PRNGKey(0))
  return train.init_state(params, optax.sgd(0.5, momentum=0.9), jax.random.PRNGKey(0))


def private(workdir):
  """Where the engine keeps (and resumes from) a run's checkpoint: `<workdir>/private/`."""
  return pathlib.Path(report.private_dir(str(workdir)))


def test_truncated_checkpoint_is_refused_with_its_path(tmp_path):
  checkpoint.save(str(private(tmp_path)), train_small_state(), {"ledger": {"phases": []}})
  file = private(tmp_path) / checkpoint.FILENAME
  file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
  with pytest.raises(ValueError, match=rf"checkpoint {file} is unreadable .* move it away"):
    train_small.train_and_evaluate(small(), str(tmp_path))


def test_garbage_checkpoint_is_refused(tmp_path):
  (private(tmp_path) / checkpoint.FILENAME).write_bytes(b"not a checkpoint at all")
  with pytest.raises(ValueError, match="is unreadable or does not match this model"):
    train_small.train_and_evaluate(small(), str(tmp_path))


def test_checkpoint_of_another_model_is_refused(tmp_path):
  checkpoint.save(str(private(tmp_path)), train_small_state("mlp"), {"ledger": {"phases": []}})
  with pytest.raises(ValueError, match="does not match this model"):
    train_small.train_and_evaluate(small(model="linear"), str(tmp_path))


def test_truncated_and_foreign_npz_files(tmp_path):
  good = save_npz(tmp_path / "good.npz", x=np.zeros((50, 3), np.float32), y=np.zeros(50, np.int32))
  truncated = tmp_path / "truncated.npz"
  truncated.write_bytes(pathlib.Path(good).read_bytes()[:100])
  with pytest.raises(ValueError, match="truncated.npz is unreadable or truncated"):
    validate.load_npz_arrays(truncated)
  (tmp_path / "text.npz").write_text("hello")
  with pytest.raises(ValueError, match="text.npz is unreadable"):
    validate.load_npz_arrays(tmp_path / "text.npz")
  wrong_keys = save_npz(tmp_path / "keys.npz", images=np.zeros((2, 3)))
  with pytest.raises(ValueError, match=r"keys.npz has arrays \['images'\]; missing \['x', 'y'\]"):
    validate.load_npz_arrays(wrong_keys)


def test_missing_data_file_and_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.npz does not exist"):
    train_small.train_and_evaluate(small(data=str(tmp_path / "nope.npz")), str(tmp_path / "w"))
  missing_dir = tmp_path / "no_such_dir"
  with pytest.raises(FileNotFoundError,
                     match=rf"--config.data_dir={missing_dir} is not a directory"):
    train_small.train_and_evaluate(small(data="d.npz", data_dir=str(missing_dir)), str(tmp_path / "w"))
  with pytest.raises(FileNotFoundError, match="pass --config.data_dir=DIR or set DPJAX_DATA_DIR"):
    paths.require_data_dir(None, "a loader")


# ----------------------------------------------------------------------------- hyperparameters


@pytest.mark.parametrize("flag, value", [
    ("learning_rate", 0.0), ("learning_rate", -0.1), ("clip_norm", 0.0), ("clip_norm", -1.0),
    ("noise_multiplier", -1.0), ("num_steps", 0), ("num_steps", -5), ("batch_size", 0),
    ("checkpoint_every", 0), ("max_epsilon", -1.0), ("learning_rate", float("nan")),
])
def test_zero_or_negative_hyperparameters_name_the_flag(flag, value, tmp_path):
  with pytest.raises(ValueError, match=rf"--config.{flag}={value}"):
    train_small.train_and_evaluate(small(**{flag: value}), str(tmp_path))


def test_delta_outside_zero_one(tmp_path):
  with pytest.raises(ValueError, match=r"--config.delta=1.5 must be in \(0, 1\)"):
    train_small.train_and_evaluate(small(delta=1.5), str(tmp_path))


def test_core_configs_refuse_bad_values_too():
  with pytest.raises(ValueError, match="clip_norm=0 must be > 0"):
    clipping.ClippingConfig(0)
  with pytest.raises(ValueError, match="noise_multiplier=-1 must be >= 0"):
    train.DPConfig(clipping.ClippingConfig(1.0), -1, 10.0)


def test_delta_at_least_one_over_n_warns(tmp_path, caplog):
  with caplog.at_level(logging.WARNING):
    train_small.train_and_evaluate(small(delta=1e-3, num_steps=1), str(tmp_path))
  assert "delta=0.001 >= 1/N=0.000556" in caplog.text


# ----------------------------------------------------------------------------- names


def test_unknown_model_name_lists_the_valid_ones(tmp_path):
  with pytest.raises(ValueError,
                     match=r"--config.model='resnet9000' is unknown; valid: linear, mlp"):
    train_small.train_and_evaluate(small(model="resnet9000"), str(tmp_path))
  with pytest.raises(ValueError, match="unknown model 'resnet9000'; valid: "):
    registry.build_model("resnet9000", 10)


def test_unknown_config_field_lists_the_valid_ones(tmp_path):
  with pytest.raises(ValueError, match=r"unknown config field\(s\) \[.preset.\].*valid fields: target_epsilons, "):
    audit_experiment.train_and_evaluate({**audit_tiny.get_config().to_dict(), "preset": "huge"},
                                        str(tmp_path))
  with pytest.raises(ValueError, match=r"unknown config field\(s\) \['lr'\].*valid fields: num_steps, "):
    train_small.train_and_evaluate({**small().to_dict(), "lr": 0.1}, str(tmp_path))


@pytest.mark.parametrize("module, flag, message", [
    ("train_small", "--config.learning_rate=-1",
     "train_small: error: --config.learning_rate=-1.0 must be a finite number > 0."),
    ("audit", "--config.num_models=2",
     "audit: error: --config.num_models=2 must be >= 3 (target + shadows)."),
    ("classify", "--config.cpu_devices=two",
     "classify: error: --config.cpu_devices='two' expected a whole number >= 0 or 'auto'."),
    ("eqtl", "--config.bogus=1", "eqtl: error: unknown config field 'bogus'"),
    ("eqtl", "--config.n=abc", "eqtl: error: bad flag"),
])
@pytest.mark.slow
def test_command_line_reports_bad_flags_without_a_traceback(module, flag, message, tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", f"experiments.{module}", f"--workdir={tmp_path}", flag], cwd=REPO,
      capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
  assert proc.returncode != 0
  assert message in proc.stderr
  assert "Traceback" not in proc.stderr
