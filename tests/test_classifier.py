"""Tests of dpjax.classifier on scikit-learn digits with tiny models (seconds each)."""

import contextlib
import dataclasses
import math

import jax
import numpy as np
import optax
import pytest

from dpjax import accounting
from dpjax import checkpoint
from dpjax import classifier
from dpjax import train
from dpjax.data import images as images_lib
from dpjax.models import registry

BASE = classifier.ClassifierConfig(
    model="mlp", model_kwargs={"hidden": (16,)}, dataset="digits", max_per_class=40,
    batch_size=64, learning_rate=2.0, clip_norm=1.0, noise_multiplier=1.0, steps=30, log_every=0,
    eval_batch_size=128, checkpoint_every=5, eval_every=15)


@pytest.fixture(scope="module")
def digits():
  return classifier.load_dataset(BASE)


@pytest.fixture(scope="module")
def base_run(digits, tmp_path_factory):
  """(result, workdir) of BASE trained without interruption."""
  workdir = tmp_path_factory.mktemp("base")
  return classifier.train_classifier(BASE, workdir=str(workdir), dataset=digits), workdir


def test_dp_training_beats_chance(base_run):
  result, _ = base_run
  assert result.test_accuracy > 0.5  # 10 classes: chance is 0.1
  assert result.train_accuracy > 0.5
  evals = [e for e in result.history if "test_accuracy" in e]
  assert evals[0]["test_accuracy"] < evals[-1]["test_accuracy"]
  assert evals[-1]["step"] == 30 and evals[-1]["epsilon"] == result.epsilon
  assert 0 <= evals[-1]["clipped_fraction"] <= 1 and evals[-1]["examples_per_sec"] > 0


def test_epsilon_equals_accountant(base_run, digits):
  result, _ = base_run
  phase = accounting.PrivacyPhase(noise_multiplier=1.0, dataset_size=len(digits.train_labels),
                                  batch_size=64, sampling="poisson", mechanism="gaussian",
                                  steps=30)
  assert result.epsilon == pytest.approx(accounting.compute_epsilon([phase], 1e-5, "rdp"))
  assert result.steps == 30 and result.noise_multiplier == 1.0


def test_target_epsilon_calibrates_noise(digits):
  result = classifier.train_classifier(dataclasses.replace(BASE, target_epsilon=3.0, steps=6),
                                       dataset=digits)
  assert 0.98 * 3.0 <= result.epsilon <= 3.0


def test_laplace_reports_pure_epsilon(digits):
  config = dataclasses.replace(BASE, mechanism="laplace", noise_multiplier=2.0, clip_norm=5.0,
                               steps=5)
  result = classifier.train_classifier(config, dataset=digits)
  q = 64 / len(digits.train_labels)
  assert result.pure_epsilon == pytest.approx(5 * math.log1p(q * math.expm1(1 / 2.0)))
  assert result.epsilon <= result.pure_epsilon  # PLD at delta > 0 is no larger


def test_nonprivate_and_local_dp(digits):
  result = classifier.train_classifier(
      dataclasses.replace(BASE, private=False, ldp_scale=0.5, steps=4), dataset=digits)
  assert math.isinf(result.epsilon) and result.noise_multiplier == 0.0
  assert result.ldp.per_pixel == pytest.approx(2.0)  # pixel range 1 / beta 0.5
  assert result.ldp.per_image == pytest.approx(2.0 * 64)
  noise = result.dataset.train_images - digits.train_images
  # Laplace(0, b) has mean |x| = b: the noise was added per pixel.
  assert np.mean(np.abs(noise)) == pytest.approx(0.5, rel=0.1)
  assert np.array_equal(result.dataset.test_images, digits.test_images)


def test_evaluate_matches_direct_computation(digits):
  model = registry.build_model("mlp", 10, hidden=(8,))
  params = registry.init_params(model, jax.random.key(1), (8, 8, 1))
  images, labels = digits.test_images[:23], digits.test_labels[:23]
  logits = np.asarray(model.apply({"params": params}, images))
  expected_loss = np.mean(np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, labels)))
  metrics = classifier.evaluate(model, params, images, labels, batch_size=7)  # padded last batch
  assert metrics["accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == labels))
  assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-5)
  np.testing.assert_allclose(classifier.predict_logits(model, params, images, batch_size=5),
                             logits, rtol=1e-5, atol=1e-6)


@contextlib.contextmanager
def count_compiles():
  events = []
  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      events.append(event)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield events
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def test_step_compiles_once(digits, base_run):
  del base_run  # it warmed the evaluator's caches
  config = dataclasses.replace(BASE, eval_every=1000)
  with count_compiles() as short:
    classifier.train_classifier(dataclasses.replace(config, steps=2), dataset=digits)
  with count_compiles() as long:
    classifier.train_classifier(dataclasses.replace(config, steps=10), dataset=digits)
  # Poisson batches are padded to one shape: more steps must not mean more compilations.
  assert len(short) >= 1 and len(long) == len(short)


def test_resume_gives_same_ledger_and_params(digits, base_run, tmp_path):
  whole, whole_dir = base_run
  config = BASE
  # "Killed" after 15 steps (its last checkpoint), then run again to the end.
  classifier.train_classifier(dataclasses.replace(config, steps=15), workdir=str(tmp_path / "cut"),
                              dataset=digits)
  resumed = classifier.train_classifier(config, workdir=str(tmp_path / "cut"), dataset=digits)

  def saved(workdir):
    template = train.init_state(whole.params, classifier.make_optimizer(config),
                                jax.random.PRNGKey(0))
    return checkpoint.restore(str(workdir), template)

  (whole_state, whole_meta), (cut_state, cut_meta) = saved(whole_dir), saved(tmp_path / "cut")
  assert cut_meta["ledger"] == whole_meta["ledger"]
  assert cut_meta["ledger"]["phases"][0]["steps"] == 30
  assert int(cut_state.step) == 30 and resumed.epsilon == whole.epsilon
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               whole_state.params, cut_state.params)
  assert resumed.test_accuracy == pytest.approx(whole.test_accuracy)
  lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
  assert len(lines) >= 2  # the first half's end and the second's


@pytest.mark.parametrize("field,value,message", [
    ("model", "resnet99", "unknown model 'resnet99'"),
    ("optimizer", "adagrad", "unknown optimizer 'adagrad'"),
    ("mechanism", "cauchy", "unknown mechanism 'cauchy'"),
    ("batch_size", 0, "batch_size=0"),
    ("ldp_scale", -1.0, "ldp_scale=-1.0"),
])
def test_bad_config_names_the_field(field, value, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(BASE, **{field: value})


def test_unknown_dataset_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown image dataset 'mnist3'"):
    classifier.load_dataset(dataclasses.replace(BASE, dataset="mnist3"))


def test_same_seed_same_result(digits, base_run):
  first, _ = base_run
  second = classifier.train_classifier(BASE, dataset=digits)
  jax.tree.map(np.testing.assert_array_equal, first.params, second.params)
  assert isinstance(first.dataset, images_lib.ImageDataset)
