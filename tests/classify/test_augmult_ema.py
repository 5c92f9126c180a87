"""Augmentation multiplicity and the parameter EMA in the classifier, the sweep and the transfer
study's recipe (issue 16b)."""

import dataclasses

import jax
import numpy as np
import pytest

from dpjax import accounting
from experiments.classify import classifier
from experiments.classify import sweep as sweep_lib
from experiments.classify import transfer

BASE = classifier.ClassifierConfig(
    model="mlp", model_kwargs={"hidden": (16,)}, dataset="digits", max_per_class=20,
    batch_size=32, learning_rate=1.0, clip_norm=1.0, noise_multiplier=1.0, steps=6, log_every=0,
    eval_batch_size=128, checkpoint_every=3, eval_every=3, reproducible_private_randomness=True)


@pytest.mark.parametrize("field,value,message", [
    ("augmult", -1, r"--config.augmult=-1 must be >= 0"),
    ("augment_crop_pad", -2, r"--config.augment_crop_pad=-2 must be >= 0"),
    ("augment_pad", "wrap", r"--config.augment_pad='wrap' is unknown; valid: reflect, zero"),
    ("ema_decay", 1.0, r"--config.ema_decay=1.0 must be in \[0, 1\)"),
])
def test_bad_settings_name_the_field(field, value, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(BASE, **{field: value})


def test_augmult_needs_an_augmentation_and_per_record_privacy():
  with pytest.raises(ValueError, match=r"--config.augmult=2 .*identity augmentation"):
    dataclasses.replace(BASE, augmult=2, augment_crop_pad=0, augment_flip=False)
  dataclasses.replace(BASE, augmult=2, augment_crop_pad=0, augment_flip=True)  # flip alone is fine
  with pytest.raises(ValueError, match=r"--config.augmult=2 .*per-person"):
    dataclasses.replace(BASE, augmult=2, records_per_person=2)


def test_flip_is_off_by_default_everywhere():
  assert not classifier.ClassifierConfig().augment_flip
  assert not transfer.Recipe().augment_flip
  assert not sweep_lib.default_config().augment_flip


def test_sweep_and_transfer_pass_the_fields_through():
  config = sweep_lib.default_config()
  config.augmult, config.augment_crop_pad, config.ema_decay = 3, 2, 0.99
  base = sweep_lib.from_config_dict(config).base
  assert (base.augmult, base.augment_crop_pad, base.ema_decay) == (3, 2, 0.99)
  for name in ("augmult", "augment_crop_pad", "augment_pad", "augment_flip", "ema_decay"):
    assert name in sweep_lib.BASE_FIELDS
  c = transfer.default_config()
  c.recipe.augmult, c.recipe.ema_decay = 4, 0.999
  run = transfer.from_config_dict(c).recipe.classifier_config("cnn", 1.0, seed=0)
  assert (run.augmult, run.augment_crop_pad, run.augment_flip, run.ema_decay) == (4, 4, False,
                                                                                   0.999)


@pytest.mark.slow
def test_classifier_trains_with_both_releases_the_ema_and_resumes_it(tmp_path):
  digits = classifier.load_dataset(BASE)
  config = dataclasses.replace(BASE, augmult=2, augment_crop_pad=1, ema_decay=0.9)
  whole = classifier.train_classifier(config, workdir=str(tmp_path / "whole"), dataset=digits)
  assert whole.to_dict()["released_params"] == "EMA of the DP iterates (decay 0.9)"
  assert whole.to_dict()["augmult"] == 2
  assert not np.allclose(whole.params["head"]["kernel"],
                         whole.last_iterate_params["head"]["kernel"])
  cut = dataclasses.replace(config, steps=3)
  classifier.train_classifier(cut, workdir=str(tmp_path / "cut"), dataset=digits)
  resumed = classifier.train_classifier(config, workdir=str(tmp_path / "cut"), dataset=digits)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               resumed.params, whole.params)
  # Neither augmentation multiplicity nor the EMA changes what is spent.
  plain = classifier.train_classifier(BASE, dataset=digits)
  assert whole.ledger.to_dict() == plain.ledger.to_dict()
  assert whole.epsilon == plain.epsilon and np.isfinite(whole.epsilon)
  assert plain.to_dict()["released_params"] == "last DP iterate"
  assert isinstance(whole.ledger, accounting.PrivacyLedger)
