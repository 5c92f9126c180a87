"""experiments.classify.transfer: the collapse detector, the medical metrics against a direct
computation, the validation split, the sensitivity of the DP score, and (slow) a tiny end-to-end
run with its privacy report."""

import dataclasses
import json
import math
import os

import numpy as np
import pytest

from dpjax.data import images as images_lib
from experiments.classify import make_sets
from experiments.classify import transfer


def test_collapse_detector_fires_on_a_constant_classifier():
  labels = np.array([0, 1] * 50)
  constant = np.tile([0.9, 0.1], (100, 1))  # always class 0
  metrics = transfer.classification_metrics(labels, constant)
  assert metrics["top_prediction_share"] == 1.0
  assert metrics["balanced_accuracy"] == 0.5
  counts = np.bincount(constant.argmax(1), minlength=2)
  message = transfer.collapse_warning(counts, "validation")
  assert message and message.startswith("COLLAPSE") and "class 0" in message
  # noisy counts of a near-constant classifier (a negative noisy count counts as 0)
  assert transfer.collapse_warning([97.3, -1.2], "validation (noisy)")


def test_collapse_detector_is_quiet_on_a_classifier_that_separates():
  assert transfer.collapse_warning([55, 45], "test") is None
  assert transfer.collapse_warning([90, 6, 4], "test") is None  # 90% < 95%


def test_metrics_match_a_direct_computation():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 200)
  scores = np.clip(0.3 * labels + rng.random(200) * 0.7, 0, 1)
  probs = np.stack([1 - scores, scores], axis=1)
  metrics = transfer.classification_metrics(labels, probs)
  predictions = (scores > 0.5).astype(int)
  tp = sum(1 for y, p in zip(labels, predictions) if y == 1 and p == 1)
  tn = sum(1 for y, p in zip(labels, predictions) if y == 0 and p == 0)
  pos, neg = int(labels.sum()), int((1 - labels).sum())
  assert metrics["sensitivity"] == pytest.approx(tp / pos)
  assert metrics["specificity"] == pytest.approx(tn / neg)
  assert metrics["balanced_accuracy"] == pytest.approx((tp / pos + tn / neg) / 2)
  assert metrics["accuracy"] == pytest.approx((tp + tn) / 200)
  # AUC: the probability that a random positive outscores a random negative (ties count half)
  pairs = [(s1 > s0) + 0.5 * (s1 == s0) for s1 in scores[labels == 1] for s0 in scores[labels == 0]]
  assert metrics["roc_auc"] == pytest.approx(np.mean(pairs))
  assert metrics["majority_rate"] == pytest.approx(max(pos, neg) / 200)


def test_multiclass_metrics_are_macro_one_vs_rest():
  labels = np.array([0, 1, 2, 2, 1, 0, 2, 2])
  probs = np.eye(3)[[0, 1, 2, 1, 1, 2, 2, 2]] * 0.8 + 0.2 / 3
  metrics = transfer.classification_metrics(labels, probs)
  recalls = [1 / 2, 2 / 2, 3 / 4]
  assert metrics["sensitivity"] == pytest.approx(np.mean(recalls))
  assert metrics["balanced_accuracy"] == pytest.approx(np.mean(recalls))
  assert 0 <= metrics["roc_auc"] <= 1


def _dataset(n=40, seed=0):
  rng = np.random.default_rng(seed)
  return images_lib.ImageDataset(
      train_images=rng.random((n, 8, 8, 1), dtype=np.float32), train_labels=rng.integers(0, 2, n),
      test_images=rng.random((5, 8, 8, 1), dtype=np.float32), test_labels=np.array([0, 1, 0, 1, 0]),
      num_classes=2, name="toy")


def test_validation_split_is_public_and_independent_of_the_data():
  a = transfer.with_validation(_dataset(seed=0), 0.25, seed=7)
  b = transfer.with_validation(_dataset(seed=1), 0.25, seed=7)  # other images and labels
  assert len(a.val_labels) == 10 and len(a.train_labels) == 30
  original = _dataset(seed=0).train_images
  val_rows = [int(np.flatnonzero((original == v).all(axis=(1, 2, 3)))[0]) for v in a.val_images]
  val_rows_b = [int(np.flatnonzero((_dataset(seed=1).train_images == v).all(axis=(1, 2, 3)))[0])
                for v in b.val_images]
  assert val_rows == val_rows_b  # the same positions, whatever the data
  train_rows = {int(np.flatnonzero((original == v).all(axis=(1, 2, 3)))[0]) for v in a.train_images}
  assert not train_rows & set(val_rows)


def test_validation_split_of_the_dataset_is_kept():
  data = dataclasses.replace(_dataset(), val_images=np.zeros((3, 8, 8, 1), np.float32),
                             val_labels=np.array([0, 1, 1]))
  assert transfer.with_validation(data, 0.25, seed=0) is data
  with pytest.raises(ValueError, match="val_fraction"):
    transfer.with_validation(_dataset(), 0.0, seed=0)


def test_score_counts_move_by_at_most_sqrt2_when_one_record_is_removed():
  rng = np.random.default_rng(0)
  labels, predictions = rng.integers(0, 3, 30), rng.integers(0, 3, 30)
  full = transfer.exact_counts(labels, predictions, 3)
  for i in range(30):
    keep = np.arange(30) != i
    moved = np.linalg.norm(full - transfer.exact_counts(labels[keep], predictions[keep], 3))
    assert moved <= math.sqrt(2) + 1e-12


def test_noisy_score_is_balanced_accuracy_without_noise():
  labels = np.array([0, 0, 0, 1]); predictions = np.array([0, 0, 1, 1])
  counts = transfer.exact_counts(labels, predictions, 2)
  assert transfer.noisy_score(counts, np.bincount(labels).astype(float)) == pytest.approx(
      (2 / 3 + 1) / 2)


def test_unknown_config_field_is_named():
  config = transfer.default_config()
  config.unlikely_field = 1
  with pytest.raises(ValueError, match="unlikely_field"):
    transfer.from_config_dict(config)


@pytest.mark.slow
def test_tiny_run_end_to_end_releases_only_dp_outputs(tmp_path):
  pytest.importorskip("kymatio", reason="the scatter_linear head needs kymatio==0.3.0")
  path = make_sets.write_sets(str(tmp_path / "sets"))[0]
  config = transfer.default_config()
  config.dataset = f"npz:{path}"
  config.model = "scatter_linear"
  config.learning_rates = (0.25,)
  config.clip_norms = (0.1,)
  config.steps_grid = (3, 5)
  config.recipe.steps = 3
  config.non_private_learning_rates = (1e-3,)
  config.mean_trials = 1.5
  results = transfer.train_and_evaluate(config, str(tmp_path / "run"))
  dp_row, reference = results["rows"]
  assert dp_row["epsilon"] <= 8.0 and reference["epsilon"] in ("inf", math.inf)
  for key in ("test_accuracy", "test_balanced_accuracy", "test_roc_auc", "test_sensitivity",
              "test_specificity"):
    assert key in dp_row
  assert dp_row["selection"]["mean_trials"] == 1.5
  released = open(tmp_path / "run" / "results.json").read()
  assert "num_trials" not in released and "exact_val" not in released
  private = json.load(open(tmp_path / "run" / "private" / "selection_trials.json"))
  assert private["num_trials"] >= 1 and len(private["trials"]) == private["num_trials"]
  report = json.load(open(tmp_path / "run" / "privacy_report.json"))
  assert report["releases"][0]["epsilon"] == pytest.approx(dp_row["epsilon"])
  assert "Papernot" in report["releases"][0]["selection"]["theorem"]
  assert os.path.exists(tmp_path / "run" / "privacy_report.md")


def test_inverse_frequency_weights_from_noisy_counts():
  assert transfer.inverse_frequency_weights(np.array([30.0, 10.0])) == pytest.approx((2 / 3, 2.0))
  assert transfer.inverse_frequency_weights(np.array([20.0, -3.0]))[1] == pytest.approx(10.5)


def test_class_weighted_loss_matches_a_direct_computation():
  import jax  # pylint: disable=import-outside-toplevel
  from dpjax.models import registry  # pylint: disable=import-outside-toplevel
  from experiments.classify import classifier  # pylint: disable=import-outside-toplevel
  model = registry.build_model("linear", 3)
  params = registry.init_params(model, jax.random.PRNGKey(0), (2, 2, 1))
  image = np.arange(4, dtype=np.float32).reshape(2, 2, 1) / 4
  plain, weighted = classifier.example_loss(model), classifier.example_loss(model, (1.0, 3.0, 0.5))
  for label, weight in ((0, 1.0), (1, 3.0), (2, 0.5)):
    example = {"image": image, "label": np.int32(label)}
    logits = np.asarray(model.apply({"params": params}, image[None])[0], np.float64)
    direct = -(logits[label] - np.log(np.sum(np.exp(logits))))
    assert float(plain(params, example)) == pytest.approx(direct, rel=1e-5)
    assert float(weighted(params, example)) == pytest.approx(weight * direct, rel=1e-5)
