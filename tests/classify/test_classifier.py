"""Tests of experiments.classify.classifier on scikit-learn digits with tiny models (seconds each)."""

import contextlib
import dataclasses
import json
import math

import jax
import numpy as np
import optax
import pytest

from dpjax import accounting
from dpjax import checkpoint
from dpjax import clipping
from dpjax import noise
from dpjax import randomness
from dpjax import train
from dpjax.data import images as images_lib
from dpjax.models import registry
from experiments.classify import classifier

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


REPRODUCIBLE = dataclasses.replace(BASE, reproducible_private_randomness=True)

# Statistics of the training data: never in a released dict, table or history.
TRAINING_STATISTICS = ("train_accuracy", "train_loss", "loss", "clipped_fraction",
                       "mean_grad_norm", "batch_size", "num_nonfinite")


def test_dp_training_beats_chance(base_run):
  result, _ = base_run
  assert result.test_accuracy > 0.5  # 10 classes: chance is 0.1
  assert result.private["train_accuracy"] > 0.5
  evals = [e for e in result.history if "test_accuracy" in e]
  assert evals[0]["test_accuracy"] < evals[-1]["test_accuracy"]
  assert evals[-1]["step"] == 30 and evals[-1]["epsilon"] == result.epsilon
  assert evals[-1]["examples_per_sec"] > 0
  last_batch = result.private["batch_history"][-1]
  assert last_batch["step"] == 30 and 0 <= last_batch["clipped_fraction"] <= 1


def test_training_statistics_stay_private(base_run):
  result, workdir = base_run
  public = json.dumps({"summary": result.to_dict(), "history": result.history})
  for key in TRAINING_STATISTICS:
    assert f'"{key}"' not in public, key
  assert [e["step"] for e in result.private["train_eval_history"]] == [15, 30]
  on_disk = json.loads((workdir / "private" / classifier.DIAGNOSTICS).read_text())
  assert on_disk["train_accuracy"] == result.private["train_accuracy"]
  assert "clipped_fraction" in on_disk["batch_history"][-1]
  progress = (workdir / "progress.jsonl").read_text()
  assert "test_accuracy" in progress and "train_accuracy" not in progress
  assert (workdir / "private" / "checkpoint.msgpack").exists()
  assert not (workdir / "checkpoint.msgpack").exists() and not (workdir / "metrics.jsonl").exists()
  release = result.release("model", ["results.json"])
  assert release["epsilon"] == pytest.approx(result.epsilon) and release["steps"] == 30


def _same_tree(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _short(config, **changes):
  return dataclasses.replace(config, steps=3, eval_every=3, **changes)


@pytest.mark.slow
def test_same_seed_gives_different_private_params_unless_opted_in(digits):
  secure = [classifier.train_classifier(_short(BASE), dataset=digits) for _ in range(2)]
  same = [classifier.train_classifier(_short(REPRODUCIBLE), dataset=digits) for _ in range(2)]
  # The seed is public: it must not fix the batches or the noise...
  assert not _same_tree(secure[0].params, secure[1].params)
  # ...unless the user opts in (the seed then being a secret), which reruns bit for bit.
  jax.tree.map(np.testing.assert_array_equal, same[0].params, same[1].params)
  assert secure[0].epsilon == secure[1].epsilon == same[0].epsilon
  # Initialisation is a public choice: the seed still fixes it.
  model = secure[0].model
  assert _same_tree(classifier.initial_params(BASE, model, digits.image_shape),
                    classifier.initial_params(REPRODUCIBLE, model, digits.image_shape))


@pytest.mark.slow
def test_public_seed_does_not_regenerate_the_noise(digits):
  """An adversary holding the public seed regenerates the noise as the old code drew it
  (`split(PRNGKey(seed), 3)[1]`) and subtracts it: the clipped sum must not come out. The same
  attack with the true key (reproducible randomness, secret seed known) does recover it, so the
  test can see a leak."""
  config = dataclasses.replace(BASE, sampling="full", steps=1, optimizer="sgd", learning_rate=1.0,
                               per_example="vmap", eval_every=1)
  model = registry.build_model("mlp", 10, hidden=(16,))
  params0 = classifier.initial_params(config, model, digits.image_shape)
  data = {"image": digits.train_images, "label": digits.train_labels}
  n = len(digits.train_labels)
  summed, _ = clipping.clipped_grad_sum(classifier.example_loss(model), params0, data,
                                        np.ones(n, bool), classifier._clipping_config(config))  # pylint: disable=protected-access

  def noisy_mean_gradient(result):
    return jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), params0, result.params)

  def regenerated(key):
    return noise.privatize_sum(jax.random.fold_in(key, 0), summed, noise_multiplier=1.0,
                               sensitivity=1.0, expected_batch_size=n, mechanism="gaussian")

  def matches(a, b):
    return all(np.allclose(x, y, atol=1e-5) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

  old_key = jax.random.split(jax.random.PRNGKey(config.seed), 3)[1]
  for opted_in in (False, True):
    run = dataclasses.replace(config, reproducible_private_randomness=opted_in)
    observed = noisy_mean_gradient(classifier.train_classifier(run, dataset=digits))
    assert not matches(observed, regenerated(old_key))
    assert not matches(observed, regenerated(jax.random.PRNGKey(config.seed)))
  secret_key = randomness.PrivateRandomness(secret_seed=config.seed).key("model", "noise")
  assert matches(observed, regenerated(secret_key))  # the attack works once the key is known


@pytest.mark.slow
@pytest.mark.parametrize("per_example", ["vmap", "auto"])
def test_microbatches_give_the_same_step(digits, per_example):
  whole = classifier.train_classifier(_short(REPRODUCIBLE, per_example=per_example), dataset=digits)
  # 7 does not divide the padded Poisson batch: the clipping pads the last chunk with masked rows.
  assert classifier.make_sampler(REPRODUCIBLE, len(digits.train_labels)).padded_size % 7
  chunked = classifier.train_classifier(
      _short(REPRODUCIBLE, per_example=per_example, microbatch_size=7), dataset=digits)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               whole.params, chunked.params)
  assert chunked.epsilon == whole.epsilon


def test_epsilon_equals_accountant(base_run, digits):
  result, _ = base_run
  phase = accounting.PrivacyPhase(noise_multiplier=1.0, dataset_size=len(digits.train_labels),
                                  batch_size=64, sampling="poisson", mechanism="gaussian",
                                  steps=30)
  assert result.epsilon == pytest.approx(accounting.compute_epsilon([phase], 1e-5, "rdp"))
  assert result.steps == 30 and result.noise_multiplier == 1.0


@pytest.mark.slow
def test_target_epsilon_calibrates_noise(digits):
  result = classifier.train_classifier(dataclasses.replace(BASE, target_epsilon=3.0, steps=6),
                                       dataset=digits)
  assert 0.98 * 3.0 <= result.epsilon <= 3.0


@pytest.mark.slow
def test_laplace_reports_pure_epsilon(digits):
  config = dataclasses.replace(BASE, mechanism="laplace", noise_multiplier=2.0, clip_norm=5.0,
                               steps=5)
  result = classifier.train_classifier(config, dataset=digits)
  q = 64 / len(digits.train_labels)
  assert result.pure_epsilon == pytest.approx(5 * math.log1p(q * math.expm1(1 / 2.0)))
  assert result.epsilon <= result.pure_epsilon  # PLD at delta > 0 is no larger


@pytest.mark.slow
def test_nonprivate_and_local_dp(digits, tmp_path):
  config = dataclasses.replace(BASE, private=False, ldp_scale=0.5, steps=4)
  result = classifier.train_classifier(config, workdir=str(tmp_path), dataset=digits)
  assert math.isinf(result.epsilon) and result.noise_multiplier == 0.0
  assert result.ldp.per_pixel == pytest.approx(2.0)  # pixel range 1 / beta 0.5
  assert result.ldp.per_image == pytest.approx(2.0 * 64)
  noise = result.dataset.train_images - digits.train_images
  # Laplace(0, b) has mean |x| = b: the noise was added per pixel...
  assert np.mean(np.abs(noise)) == pytest.approx(0.5, rel=0.1)
  # ...independently for every image (one shared draw would cancel in differences of images).
  assert not np.allclose(noise[0], noise[1])
  assert np.array_equal(result.dataset.test_images, digits.test_images)
  # Labels in clear: the release is per image, and the report must say labels are not covered.
  assert np.array_equal(result.dataset.train_labels, digits.train_labels)
  release = result.release("ldp", ["results.json"])
  assert release["epsilon"] == pytest.approx(128.0) and release["delta"] == 0.0
  assert "labels in clear" in release["mechanism"]
  assert any("labels" in item and "NOT covered" in item for item in result.not_covered())
  # Resuming draws no second perturbation: two noisy copies of a record would double epsilon.
  again = classifier.train_classifier(config, workdir=str(tmp_path), dataset=digits)
  np.testing.assert_array_equal(again.dataset.train_images, result.dataset.train_images)
  assert (tmp_path / "private" / classifier.LDP_CACHE).exists()


def test_local_dp_noise_is_secret_unless_opted_in(digits):
  config = dataclasses.replace(BASE, private=False, ldp_scale=0.5)
  first, second = (classifier.apply_local_dp(config, digits)[0] for _ in range(2))
  assert not np.allclose(first.train_images, second.train_images)
  opted = dataclasses.replace(config, reproducible_private_randomness=True)
  first, second = (classifier.apply_local_dp(opted, digits)[0] for _ in range(2))
  np.testing.assert_array_equal(first.train_images, second.train_images)


def test_label_randomised_response(digits):
  config = dataclasses.replace(BASE, private=False, ldp_scale=0.5, ldp_label_epsilon=0.5, steps=2)
  result = classifier.train_classifier(config, dataset=digits)
  kept = np.mean(result.dataset.train_labels == digits.train_labels)
  assert kept == pytest.approx(math.exp(0.5) / (math.exp(0.5) + 9), abs=0.06)
  assert np.array_equal(result.dataset.test_labels, digits.test_labels)
  assert result.ldp.per_label == 0.5 and result.not_covered() == []
  release = result.release("ldp", [])
  assert release["epsilon"] == pytest.approx(128.5) and "randomised response" in release["mechanism"]
  assert result.to_dict()["ldp_epsilon_per_label"] == 0.5
  with pytest.raises(ValueError, match="ldp_scale"):
    dataclasses.replace(BASE, ldp_label_epsilon=1.0)


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


@pytest.mark.slow
def test_step_compiles_once(digits, base_run):
  del base_run  # it warmed the evaluator's caches
  config = dataclasses.replace(BASE, eval_every=1000)
  with count_compiles() as short:
    classifier.train_classifier(dataclasses.replace(config, steps=2), dataset=digits)
  with count_compiles() as long:
    classifier.train_classifier(dataclasses.replace(config, steps=10), dataset=digits)
  # Poisson batches are padded to one shape: more steps must not mean more compilations.
  assert len(short) >= 1 and len(long) == len(short)


@pytest.mark.slow
def test_resume_gives_same_ledger_and_params(digits, tmp_path):
  # Bit-for-bit equality needs the opt-in: with OS randomness a resumed run draws fresh batches.
  config = REPRODUCIBLE
  whole_dir = tmp_path / "whole"
  whole = classifier.train_classifier(config, workdir=str(whole_dir), dataset=digits)
  # "Killed" after 15 steps (its last checkpoint), then run again to the end.
  classifier.train_classifier(dataclasses.replace(config, steps=15), workdir=str(tmp_path / "cut"),
                              dataset=digits)
  resumed = classifier.train_classifier(config, workdir=str(tmp_path / "cut"), dataset=digits)

  def saved(workdir):
    template = train.init_state(whole.params, classifier.make_optimizer(config),
                                jax.random.PRNGKey(0))
    return checkpoint.restore(str(workdir / "private"), template)

  (whole_state, whole_meta), (cut_state, cut_meta) = saved(whole_dir), saved(tmp_path / "cut")
  assert cut_meta["ledger"] == whole_meta["ledger"]
  assert cut_meta["ledger"]["phases"][0]["steps"] == 30
  assert int(cut_state.step) == 30 and resumed.epsilon == whole.epsilon
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               whole_state.params, cut_state.params)
  assert resumed.test_accuracy == pytest.approx(whole.test_accuracy)
  lines = (tmp_path / "cut" / "private" / "metrics.jsonl").read_text().splitlines()
  assert len(lines) >= 2  # the first half's end and the second's
  secret = json.loads((tmp_path / "cut" / "private" / "secret_seed.json").read_text())
  assert secret["secret_seed"] == config.seed
  assert config.public_dict()["seed"] != config.seed  # redacted from released configs


@pytest.mark.parametrize("field,value,message", [
    ("model", "resnet99", "--config.model='resnet99' is unknown; valid: "),
    ("optimizer", "adagrad", "--config.optimizer='adagrad' is unknown; valid: sgd, momentum"),
    ("mechanism", "cauchy", "--config.mechanism='cauchy' is unknown; valid: gaussian, laplace"),
    ("batch_size", 0, "--config.batch_size=0 must be > 0"),
    ("ldp_scale", -1.0, "--config.ldp_scale=-1.0 must be >= 0"),
])
def test_bad_config_names_the_field(field, value, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(BASE, **{field: value})


def test_unknown_dataset_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown image dataset 'mnist3'"):
    classifier.load_dataset(dataclasses.replace(BASE, dataset="mnist3"))


def test_run_length_from_epochs_is_the_one_rule(digits):
  config = dataclasses.replace(BASE, steps=None, epochs=0.5, eval_every=1000)
  result = classifier.train_classifier(config, dataset=digits)
  n = len(digits.train_labels)
  assert result.steps == math.ceil(0.5 * n / 64)  # sampling.steps_for_epochs, not round(N/B)*E
  assert isinstance(result.dataset, images_lib.ImageDataset)
