"""train_small in-process on its config file: the config, bad fields, the default randomness."""

import json

import pytest

from experiments.train_small import experiment
from experiments.train_small.configs import default


def test_the_config_file_makes_a_valid_config_and_tiny_shrinks_it():
  config = experiment.Config.from_config(default.get_config())
  assert (config.num_steps, config.max_epsilon, config.data_dir) == (200, None, None)
  tiny = default.get_config("tiny")
  assert (tiny.num_steps, tiny.checkpoint_every) == (3, 3)
  with pytest.raises(ValueError, match="unknown argument; valid: tiny"):
    default.get_config("huge")


def test_unknown_and_missing_fields_are_refused_with_the_valid_ones():
  values = default.get_config().to_dict()
  with pytest.raises(ValueError, match=r"unknown config field\(s\) \['lr'\].*valid fields: num_steps, "):
    experiment.Config.from_config({**values, "lr": 0.1})
  del values["seed"]
  with pytest.raises(ValueError, match=r"missing: \['seed'\]"):
    experiment.Config.from_config(values)


def test_same_seed_gives_different_parameters_by_default(tmp_path):
  """The adversary knows the seed: by default it recreates neither the batches nor the noise.
  (With the opt-in, equal parameters for equal seeds: test_resume_subprocess.py.)"""
  config = default.get_config("tiny")  # 3 steps
  a = experiment.train_and_evaluate(config, str(tmp_path / "a"))
  b = experiment.train_and_evaluate(config, str(tmp_path / "b"))
  assert a["params_sha256"] != b["params_sha256"]
  assert a["epsilon"] == b["epsilon"] and a["ledger"] == b["ledger"]
  assert json.loads((tmp_path / "a" / "config.json").read_text())["seed"] == 0  # public here
  assert not (tmp_path / "a" / "private" / "secret_seed.json").exists()
