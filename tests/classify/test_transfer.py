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
  # digits_binary: ~108 validation images per class -> balanced accuracy; 2x2 maps kept
  assert report["releases"][0]["score"] == dp_row["score"] == "balanced_accuracy"
  assert report["releases"][0]["feature_shape"] == [2, 2, 81]
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


# ------------------------------------------------------------------ issue 16c: score and pooling


def test_accuracy_score_counts_move_by_at_most_sqrt2_when_one_record_is_removed():
  rng = np.random.default_rng(1)
  labels, predictions = rng.integers(0, 5, 40), rng.integers(0, 5, 40)
  full = transfer.score_counts(labels, predictions, 5, "accuracy")
  assert full.shape == (6,)
  assert full[0] == sum(1 for y, p in zip(labels, predictions) if y == p)
  worst = 0.0
  for i in range(40):
    keep = np.arange(40) != i
    moved = np.linalg.norm(full - transfer.score_counts(labels[keep], predictions[keep], 5,
                                                        "accuracy"))
    worst = max(worst, moved)
  assert worst <= math.sqrt(2) + 1e-12
  assert worst == pytest.approx(math.sqrt(2))  # a correct prediction: both parts move


def test_scores_without_noise_are_accuracy_and_balanced_accuracy():
  labels = np.array([0, 0, 0, 1, 2, 2]); predictions = np.array([0, 0, 1, 1, 2, 0])
  sizes = np.bincount(labels).astype(float)
  accuracy = transfer.score_from_counts(
      transfer.score_counts(labels, predictions, 3, "accuracy"), "accuracy", sizes, len(labels))
  balanced = transfer.score_from_counts(
      transfer.score_counts(labels, predictions, 3, "balanced_accuracy"), "balanced_accuracy",
      sizes, len(labels))
  assert accuracy == pytest.approx(4 / 6)
  assert balanced == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
  for kind in ("accuracy", "balanced_accuracy"):  # the collapse detector's part
    counts = transfer.score_counts(labels, predictions, 3, kind)
    assert list(transfer.predicted_counts(counts, 3)) == [3, 2, 1]
  with pytest.raises(ValueError, match="score kind"):
    transfer.score_counts(labels, predictions, 3, "auc")


def test_auto_score_is_balanced_only_where_every_class_has_enough_images():
  # the balanced score's noise std against a direct computation
  sizes, std = np.array([52.0, 12.0, 19.0, 23.0, -3.0]), 4.0
  direct = math.sqrt(sum((std / max(n, 1.0)) ** 2 for n in sizes)) / 5
  assert transfer.balanced_score_std(sizes, std) == pytest.approx(direct)
  # PneumoniaMNIST's validation split (135 per class) and digits_binary's (~108) at std 4
  assert transfer.choose_score("auto", np.array([135.0, 135.0]), 4.0, 0.05) == "balanced_accuracy"
  assert transfer.choose_score("auto", np.array([110.0, 106.0]), 4.0, 0.05) == "balanced_accuracy"
  # RetinaMNIST's (120 images, 5 grades): accuracy
  assert transfer.choose_score("auto", np.array([52.0, 12.0, 19.0, 23.0, 14.0]), 4.0,
                               0.05) == "accuracy"
  assert transfer.choose_score("balanced_accuracy", np.array([5.0, 1.0]), 4.0,
                               0.05) == "balanced_accuracy"
  config = transfer.default_config()
  config.score = "auc"
  with pytest.raises(ValueError, match="--config.score"):
    transfer.from_config_dict(config)


def test_both_score_kinds_cost_what_dp_accounting_says_directly():
  """The selection's epsilon (whatever score kind "auto" picks) equals dp_accounting's own
  computation of best-of-K (Papernot & Steinke) over DP-SGD + a Gaussian of std s on a
  sensitivity-sqrt(2) vector, composed with the Gaussian histogram."""
  from dp_accounting import dp_event  # pylint: disable=import-outside-toplevel
  from dp_accounting.rdp import rdp_privacy_accountant  # pylint: disable=import-outside-toplevel
  from dpjax import tuning  # pylint: disable=import-outside-toplevel
  config = transfer.TransferConfig(target_epsilon=8.0)
  phase = transfer._phase(config, 1080, 1.5)  # pylint: disable=protected-access
  trial = tuning.trial_event([phase], transfer._score_event(config))  # pylint: disable=protected-access
  ours = tuning.selection_cost(trial, config.mean_trials, config.shape, config.delta,
                               extra=[transfer._histogram_event(config)]).epsilon  # pylint: disable=protected-access
  direct_trial = dp_event.ComposedDpEvent([
      dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(
          256 / 1080, dp_event.GaussianDpEvent(1.5)), 300),
      dp_event.GaussianDpEvent(config.score_std / math.sqrt(2))])
  accountant = rdp_privacy_accountant.RdpAccountant(orders=list(tuning.RDP_ORDERS))
  accountant.compose(dp_event.RepeatAndSelectDpEvent(direct_trial, 3.0, 1.0))
  accountant.compose(dp_event.GaussianDpEvent(config.histogram_std))
  assert ours == pytest.approx(accountant.get_epsilon(config.delta), rel=1e-9)


def test_average_pool_matches_a_loop():
  rng = np.random.default_rng(0)
  features = rng.random((2, 7, 7, 3))
  pooled = transfer.average_pool(features, 3)
  windows = [(0, 3), (2, 5), (4, 7)]  # floor(i 7 / 3) .. ceil((i + 1) 7 / 3)
  for i, (r0, r1) in enumerate(windows):
    for j, (c0, c1) in enumerate(windows):
      for n in range(2):
        for c in range(3):
          assert pooled[n, i, j, c] == pytest.approx(np.mean(features[n, r0:r1, c0:c1, c]))
  assert np.allclose(transfer.average_pool(features, 1)[:, 0, 0], features.mean(axis=(1, 2)))
  assert transfer.average_pool(features, 7) is features


def test_head_pool_side_keeps_the_head_within_its_parameter_budget():
  # PneumoniaMNIST 28x28x1 -> 7x7x81, 2,428 images, 2 classes: (3969 + 1) 2 <= 4 x 2428: kept
  assert transfer.head_pool_side((7, 7, 81), 2428, 2, 4.0) == 7
  # digits_binary 8x8 -> 2x2x81, 1,221 images: kept
  assert transfer.head_pool_side((2, 2, 81), 1221, 2, 4.0) == 2
  # RetinaMNIST 28x28x3 -> 7x7x243, 1,080 images, 5 classes: 2x2 needs 4,865 > 4,320 -> 1x1
  assert transfer.head_pool_side((7, 7, 243), 1080, 5, 4.0) == 1
  for n in (50, 500, 5000, 50000):
    side = transfer.head_pool_side((7, 7, 243), n, 10, 4.0)
    assert side == 1 or (side * side * 243 + 1) * 10 <= 4.0 * n
    assert side == 7 or ((side + 1) ** 2 * 243 + 1) * 10 > 4.0 * n


def test_must_show_table_pairs_dp_with_its_reference(tmp_path):
  from experiments.classify import transfer_table  # pylint: disable=import-outside-toplevel
  from experiments.common import outputs  # pylint: disable=import-outside-toplevel
  paths = []
  for seed, (dp, ref) in enumerate([(0.50, 0.52), (0.52, 0.53), (0.48, 0.54)]):
    common = {"dataset": "toy", "model": "m", "seed": seed, "test_majority_rate": 0.435,
              **{f"test_{m}": 0.5 for m in transfer_table.METRICS}}
    rows = [{**common, "arm": "dp_eps8", "test_accuracy": dp, "epsilon": 7.99,
             "selection": {"mean_trials": 3.0}},
            {**common, "arm": "non_private", "test_accuracy": ref, "epsilon": "inf"}]
    path = tmp_path / f"s{seed}"
    outputs.write_json(str(path / "results.json"), {"rows": rows})
    paths.append(str(path))
  text = transfer_table.must_show(paths)
  line = [l for l in text.splitlines() if l.startswith("| toy")][0]
  cells = [c.strip() for c in line.strip("|").split("|")]
  assert cells[4] == "50.0 +- 2.0" and cells[5] == "50.0, 52.0, 48.0"
  assert cells[7] == "3.0" and cells[9] == "+6.5" and cells[-1] == "yes"
  assert "no" in transfer_table.must_show(paths[:2]).splitlines()[-1]  # two seeds are not three
