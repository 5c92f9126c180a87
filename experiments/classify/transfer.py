"""DP classifiers that transfer to a new dataset: a recipe in transferable quantities, private
model selection on a validation split (counted), medical metrics, and a collapse detector.

The recipe (`Recipe`) is stated in quantities that carry across dataset sizes (De et al. 2022;
Sander et al. 2023, "TAN without a burn"): a number of steps, an expected batch size (the
sampling rate q = B / N follows from the training-set size), and a learning rate for
per-example gradients normalised to norm 1 (the optimizer's step is lr / clip_norm, so that
trying another clip norm does not change the step size). The noise per step is then calibrated
to the target epsilon, selection included. A set of 546 images gets the same number of steps as
one of 50,000, rather than 10 epochs of 546 images = 40 steps.

Selection (`tune`): K ~ truncated negative binomial trials (secret randomness), each a
candidate drawn at random from the grid (learning rate x clip norm x steps), trained with DP-SGD
on the training split and scored on the validation split by a DP quantity: Gaussian-noised
per-class counts of correct predictions and of predictions (L2 sensitivity sqrt 2). The best
trial by its noisy balanced accuracy is released; its cost is Papernot & Steinke's Theorem 2
(dpjax.tuning), composed with a noisy class histogram of the validation split (released once).
The realised K, the other trials and every exact validation number stay private.

The validation split is the dataset's own (MedMNIST's `val`), or a fraction of the training
split chosen by a permutation from the public seed (independent of the data). Never the test
split: the test metrics of the released model are computed after selection and are public (the
test records are not training records).

Collapse: a model that predicts one class for (nearly) all of a split is flagged loudly, on the
validation split from the noisy prediction counts, and on the test split exactly.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import time
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from dp_accounting import dp_event
from sklearn import metrics as sk_metrics

from dpjax import accounting
from dpjax import randomness as randomness_lib
from dpjax import report
from dpjax import tuning
from dpjax.data import images as images_lib
from dpjax.models import scattering
from experiments.classify import classifier
from experiments.classify import pretrained as pretrained_lib
from experiments.common import outputs

COLLAPSE_SHARE = 0.95  # one class taking this share of the predictions is a collapse


# ------------------------------------------------------------------------------ metrics


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict:
  """Accuracy, balanced accuracy, ROC AUC (one-vs-rest macro for more than two classes),
  sensitivity and specificity (binary: class 1 is positive; otherwise macro averages of the
  one-vs-rest values), and the share of the most predicted class."""
  labels = np.asarray(labels, np.int64)
  probabilities = np.asarray(probabilities, np.float64)
  num_classes = probabilities.shape[1]
  predictions = probabilities.argmax(axis=1)
  confusion = sk_metrics.confusion_matrix(labels, predictions, labels=range(num_classes))
  positives = confusion.sum(axis=1)
  true_pos = np.diag(confusion)
  false_pos = confusion.sum(axis=0) - true_pos
  negatives = len(labels) - positives
  with np.errstate(invalid="ignore", divide="ignore"):
    sensitivity = true_pos / positives
    specificity = (negatives - false_pos) / negatives
  present = np.unique(labels)
  try:
    if num_classes == 2:
      auc = sk_metrics.roc_auc_score(labels, probabilities[:, 1])
    else:
      auc = sk_metrics.roc_auc_score(labels, probabilities, multi_class="ovr", average="macro",
                                     labels=list(range(num_classes)))
  except ValueError:  # one class only in the labels
    auc = math.nan
  binary = num_classes == 2
  return {
      "accuracy": float(np.mean(predictions == labels)),
      "balanced_accuracy": float(sk_metrics.balanced_accuracy_score(labels, predictions)),
      "roc_auc": float(auc),
      "sensitivity": float(sensitivity[1] if binary else np.nanmean(sensitivity[present])),
      "specificity": float(specificity[1] if binary else np.nanmean(specificity[present])),
      "majority_rate": float(positives.max() / len(labels)),
      "top_prediction_share": float(np.bincount(predictions, minlength=num_classes).max()
                                    / len(labels)),
  }


def collapse_warning(prediction_counts: Sequence[float], split: str,
                     share: float = COLLAPSE_SHARE) -> str | None:
  """A loud message if one class takes at least `share` of the predictions (counts may be
  noisy: negative entries count as 0), else None."""
  counts = np.maximum(np.asarray(prediction_counts, np.float64), 0.0)
  total = counts.sum()
  if total <= 0:
    return f"COLLAPSE on the {split} split: no predictions counted (noisy counts <= 0)."
  top = counts.max() / total
  if top >= share:
    return (f"COLLAPSE on the {split} split: the model predicts class {int(counts.argmax())} "
            f"for {100 * top:.1f}% of it (>= {100 * share:.0f}%): a constant classifier; "
            "more steps, a larger learning rate or class reweighting may help.")
  return None


# ------------------------------------------------------------------------------ recipe, data


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A DP-SGD recipe in quantities that transfer across dataset sizes."""
  steps: int = 300
  batch_size: int = 256  # expected (Poisson) batch; capped at the training-set size
  learning_rate: float = 1.0  # for per-example gradients normalised to norm 1 (lr / clip)
  clip_norm: float = 1.0
  momentum: float = 0.9
  # Augmentation multiplicity and parameter EMA (ClassifierConfig's fields of the same names).
  augmult: int = 0
  augment_crop_pad: int = 4
  augment_flip: bool = False  # off: chest X-rays and other medical images are not mirror-invariant
  ema_decay: float = 0.0

  def sampling_rate(self, train_size: int) -> float:
    return min(self.batch_size, train_size) / train_size

  def classifier_config(self, model: str, noise_multiplier: float | None, seed: int,
                        **overrides) -> classifier.ClassifierConfig:
    """The ClassifierConfig of one run of this recipe (noise None: non-private)."""
    return classifier.ClassifierConfig(
        model=model, dataset="given", steps=self.steps, batch_size=self.batch_size,
        learning_rate=self.learning_rate / self.clip_norm, optimizer="momentum",
        momentum=self.momentum, clip_norm=self.clip_norm,
        noise_multiplier=noise_multiplier if noise_multiplier is not None else 0.0,
        private=noise_multiplier is not None, seed=seed, eval_every=self.steps,
        checkpoint_every=self.steps, log_every=self.steps, train_eval_size=256,
        per_example="vmap", augmult=self.augmult, augment_crop_pad=self.augment_crop_pad,
        augment_flip=self.augment_flip, ema_decay=self.ema_decay, **overrides)


def with_validation(dataset: images_lib.ImageDataset, fraction: float,
                    seed: int) -> images_lib.ImageDataset:
  """The dataset with a validation split: its own, or `fraction` of the training split by a
  permutation from the public `seed` (independent of the images and labels)."""
  if dataset.val_images is not None and len(dataset.val_labels):
    return dataset
  if not 0 < fraction < 1:
    raise ValueError(f"--config.val_fraction={fraction!r} must be in (0, 1): the dataset has "
                     "no validation split to select on.")
  order = np.random.default_rng(seed).permutation(len(dataset.train_labels))
  cut = int(round(fraction * len(order)))
  val, train = np.sort(order[:cut]), np.sort(order[cut:])
  return dataclasses.replace(
      dataset, train_images=dataset.train_images[train], train_labels=dataset.train_labels[train],
      val_images=dataset.train_images[val], val_labels=dataset.train_labels[val])


def average_pool(features: np.ndarray, side: int) -> np.ndarray:
  """(N, h, w, C) -> (N, side, side, C): the mean over `side` x `side` near-equal windows
  (adaptive average pooling; window i covers rows floor(i h / side) .. ceil((i + 1) h / side))."""
  n, height, width, channels = features.shape
  if side >= height and side >= width:
    return features
  def bounds(length):
    return [(i * length // side, -(-(i + 1) * length // side)) for i in range(side)]
  rows = [np.stack([features[:, r0:r1, c0:c1].mean(axis=(1, 2)) for c0, c1 in bounds(width)],
                   axis=1) for r0, r1 in bounds(height)]
  return np.stack(rows, axis=1).reshape(n, side, side, channels)


def head_pool_side(feature_shape: Sequence[int], train_size: int, num_classes: int,
                   max_params_per_example: float) -> int:
  """The largest pooled side s (<= the feature map's) at which the linear head, (s^2 C + 1) K
  parameters, has at most `max_params_per_example` per training example; 1 if none does.

  Decided from public quantities only (N, classes, image shape). Why: the noise DP-SGD adds has
  norm ~ sigma C sqrt(P) against a signal <= C B, so a head with many parameters per example
  drowns (RetinaMNIST at 7x7: 60k parameters for 1,080 images). The bound 4 is where ScatterNet +
  linear is known to work: Tramer & Boneh's CIFAR-10 head has 3.1 per example (243 x 8 x 8 x 10
  for 50,000), PneumoniaMNIST's 3.3 (81 x 7 x 7 x 2 for 2,428)."""
  height, width, channels = feature_shape
  for side in range(max(height, width), 0, -1):
    pooled = min(side, height) * min(side, width) * channels
    if (pooled + 1) * num_classes <= max_params_per_example * train_size:
      return side
  return 1


def featurize(dataset: images_lib.ImageDataset, model: str,
              max_params_per_example: float | None = None) -> images_lib.ImageDataset:
  """Scattering features in place of pixels for the scatter_* heads (a fixed per-image map);
  for scatter_linear, average-pooled to the side `head_pool_side` allows (another fixed
  per-image map) when `max_params_per_example` is given."""
  if not model.startswith("scatter_"):
    return dataset
  start = time.perf_counter()
  splits = {name: scattering.scattering_features(getattr(dataset, name))
            for name in ("train_images", "test_images", "val_images")}
  name = dataset.name + "+scatter"
  if model == "scatter_linear" and max_params_per_example is not None:
    side = head_pool_side(splits["train_images"].shape[1:], len(dataset.train_labels),
                          dataset.num_classes, max_params_per_example)
    if side < splits["train_images"].shape[1]:
      splits = {key: average_pool(value, side) for key, value in splits.items()}
      name += f"+pool{side}x{side}"
  out = dataclasses.replace(dataset, name=name, **splits)
  logging.info("scattering features %s in %.1f s", out.image_shape, time.perf_counter() - start)
  return out


# ------------------------------------------------------------------------------ one trial


def probabilities(result: classifier.ClassifierResult, images: np.ndarray) -> np.ndarray:
  logits = classifier.predict_logits(result.model, result.params, images,
                                     result.config.eval_batch_size)
  return np.asarray(jax.nn.softmax(logits, axis=-1))


def exact_counts(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """[correct per class, predictions per class]: one record moves one entry of each half by
  at most 1, so the L2 sensitivity of the vector is sqrt(2)."""
  correct = np.bincount(labels[predictions == labels], minlength=num_classes)
  predicted = np.bincount(predictions, minlength=num_classes)
  return np.concatenate([correct, predicted]).astype(np.float64)


def inverse_frequency_weights(noisy_class_sizes: np.ndarray, floor: float = 1.0) -> tuple:
  """mean / count per class from noisy counts (floored at `floor`), post-processing only."""
  sizes = np.maximum(np.asarray(noisy_class_sizes, np.float64), floor)
  return tuple(float(w) for w in sizes.mean() / sizes)


def noisy_score(noisy_counts: np.ndarray, noisy_class_sizes: np.ndarray) -> float:
  """Balanced accuracy estimated from noisy counts (post-processing of DP outputs)."""
  k = len(noisy_class_sizes)
  recall = noisy_counts[:k] / np.maximum(noisy_class_sizes, 1.0)
  return float(np.mean(np.clip(recall, 0.0, 1.0)))


SCORES = ("auto", "balanced_accuracy", "accuracy")


def score_counts(labels: np.ndarray, predictions: np.ndarray, num_classes: int,
                 kind: str) -> np.ndarray:
  """The validation counts one trial releases (before noise): "balanced_accuracy":
  [correct per class, predictions per class] (`exact_counts`); "accuracy": [correct in all,
  predictions per class]. Either way one record moves one entry of each part by at most 1: L2
  sensitivity sqrt 2, so both kinds cost the same and the kind may be chosen after the noisy
  histogram is released. The prediction counts feed the collapse detector."""
  if kind == "balanced_accuracy":
    return exact_counts(labels, predictions, num_classes)
  if kind == "accuracy":
    predicted = np.bincount(predictions, minlength=num_classes)
    return np.concatenate([[np.sum(predictions == labels)], predicted]).astype(np.float64)
  raise ValueError(f"score kind {kind!r} is unknown; valid: balanced_accuracy, accuracy")


def score_from_counts(noisy_counts: np.ndarray, kind: str, noisy_class_sizes: np.ndarray,
                      val_size: int) -> float:
  """The trial's score from its noisy counts (post-processing): balanced accuracy from the
  per-class counts and the noisy histogram, or accuracy = noisy correct / the (public) size."""
  if kind == "balanced_accuracy":
    return noisy_score(noisy_counts, noisy_class_sizes)
  return float(np.clip(noisy_counts[0] / max(val_size, 1), 0.0, 1.0))


def predicted_counts(noisy_counts: np.ndarray, num_classes: int) -> np.ndarray:
  return np.asarray(noisy_counts)[-num_classes:]


def balanced_score_std(noisy_class_sizes: np.ndarray, count_std: float) -> float:
  """The standard deviation the count noise gives the balanced-accuracy score:
  sqrt(sum_k (std / n_k)^2) / K, with n_k the noisy class sizes floored at 1."""
  sizes = np.maximum(np.asarray(noisy_class_sizes, np.float64), 1.0)
  return float(np.sqrt(np.sum((count_std / sizes) ** 2)) / len(sizes))


def choose_score(kind: str, noisy_class_sizes: np.ndarray, count_std: float,
                 max_score_std: float) -> str:
  """"auto": balanced accuracy where every class has enough validation images for it, judged
  from the noisy histogram (its noise std <= `max_score_std`), else accuracy (one count: noise
  std count_std / val size). A small many-class split (RetinaMNIST: 120 images, 5 grades, one
  with ~12) gives per-class recalls swamped by noise; accuracy pools them."""
  if kind != "auto":
    return kind
  return ("balanced_accuracy" if balanced_score_std(noisy_class_sizes, count_std) <= max_score_std
          else "accuracy")


# ------------------------------------------------------------------------------ the study


@dataclasses.dataclass(frozen=True)
class TransferConfig:
  """One dataset, one model, DP (with selection) and a non-private reference."""
  dataset: str = "pneumoniamnist"
  data_dir: str | None = None
  model: str = "scatter_linear"
  seed: int = 0
  target_epsilon: float = 8.0  # the whole release, selection included
  delta: float = 1e-5
  val_fraction: float = 0.15  # carved from train when the dataset has no validation split
  resize: int | None = None
  # Fixed on PneumoniaMNIST's validation split (README: how the recipe was chosen).
  recipe: Recipe = Recipe(steps=150, batch_size=256, learning_rate=0.25, clip_norm=0.1)
  learning_rates: tuple[float, ...] = (0.1, 0.25, 0.5)
  clip_norms: tuple[float, ...] = (0.1, 1.0)
  steps_grid: tuple[int, ...] = (150, 300)
  mean_trials: float = 3.0  # 1: no selection, one run of `recipe` (its cost composed)
  shape: float = 1.0  # geometric number of trials
  # Std of the noise on each validation count of a trial, and on the validation class histogram
  # (released once); None: 32 / target_epsilon (4 at epsilon 8, 32 at epsilon 1), so that the
  # scores take a similar share of any budget.
  score_noise: float | None = None
  histogram_noise: float | None = None
  # "noisy_histogram": weight each class's loss by mean / count from the noisy validation class
  # histogram (already released and counted; the validation split has the training split's
  # class balance up to sampling); "none": unweighted.
  class_weighting: str = "none"
  # The selection's score: "auto" (balanced accuracy where the noisy histogram says every class
  # has enough validation images: its noise std <= max_score_std; else accuracy), or one kind.
  score: str = "auto"
  max_score_std: float = 0.05
  # scatter_linear: features average-pooled so that the head has at most this many parameters
  # per training example (head_pool_side); None: never pooled.
  max_head_params_per_example: float | None = 4.0
  non_private: bool = True  # also the non-private reference (best of the grid on exact val)
  non_private_learning_rates: tuple[float, ...] = (1e-3, 3e-3)  # Adam, no clipping
  reproducible_private_randomness: bool = False
  # resnet18_probe / resnet18_finetune: the local converted torchvision file (16a,
  # experiments/classify/pretrained.py) and the side the images are resized to.
  pretrained: str | None = None
  pretrained_size: int = 64

  def __post_init__(self):
    if not self.target_epsilon > 0:
      raise ValueError(f"--config.target_epsilon={self.target_epsilon!r} must be > 0.")
    if self.score not in SCORES:
      raise ValueError(f"--config.score={self.score!r} is unknown; valid: {', '.join(SCORES)}")
    if not self.max_score_std > 0:
      raise ValueError(f"--config.max_score_std={self.max_score_std!r} must be > 0.")
    if self.max_head_params_per_example is not None and not self.max_head_params_per_example > 0:
      raise ValueError(f"--config.max_head_params_per_example={self.max_head_params_per_example!r}"
                       " must be > 0 (or None: no pooling).")
    if self.class_weighting not in ("none", "noisy_histogram"):
      raise ValueError(f"--config.class_weighting={self.class_weighting!r} is unknown; valid: "
                       "none, noisy_histogram")
    for name in ("learning_rates", "clip_norms", "steps_grid", "non_private_learning_rates"):
      if not getattr(self, name) or min(getattr(self, name)) <= 0:
        raise ValueError(f"--config.{name}={getattr(self, name)!r} needs at least one value, "
                         "all > 0.")
    pretrained_lib.check(self.model, self.pretrained, self.pretrained_size)

  @property
  def score_std(self) -> float:
    return self.score_noise if self.score_noise is not None else 32.0 / self.target_epsilon

  @property
  def histogram_std(self) -> float:
    return (self.histogram_noise if self.histogram_noise is not None
            else 32.0 / self.target_epsilon)

  @property
  def selects(self) -> bool:
    return self.mean_trials > 1

  def candidates(self) -> list[Recipe]:
    if not self.selects:
      return [self.recipe]
    return [dataclasses.replace(self.recipe, learning_rate=lr, clip_norm=c, steps=s)
            for lr, c, s in itertools.product(self.learning_rates, self.clip_norms,
                                              self.steps_grid)]

  def randomness(self) -> randomness_lib.PrivateRandomness:
    return randomness_lib.from_flag(self.reproducible_private_randomness, self.seed)

  def to_dict(self) -> dict:
    out = dataclasses.asdict(self)
    out["recipe"] = dataclasses.asdict(self.recipe)
    return out


def _phase(config: TransferConfig, train_size: int, sigma: float) -> accounting.PrivacyPhase:
  batch = min(config.recipe.batch_size, train_size)
  steps = max(config.steps_grid) if config.selects else config.recipe.steps
  return accounting.PrivacyPhase(noise_multiplier=sigma, dataset_size=train_size,
                                 batch_size=batch, steps=steps)


def _score_event(config: TransferConfig) -> dp_event.DpEvent:
  return tuning.score_event(config.score_std, sensitivity=math.sqrt(2.0))


def _histogram_event(config: TransferConfig) -> dp_event.DpEvent:
  return dp_event.GaussianDpEvent(config.histogram_std)


def run_dp_selection(config: TransferConfig, dataset: images_lib.ImageDataset,
                     randomness: randomness_lib.PrivateRandomness) -> dict:
  """Private random search; returns the public row of the released model and the private log.

  Every candidate of the grid trains with the same noise multiplier, calibrated so that the
  best-of-K release over the longest candidate (shorter ones spend less) plus the class
  histogram stays within target_epsilon.
  """
  train_size = len(dataset.train_labels)
  num_classes = dataset.num_classes
  phase = _phase(config, train_size, 1.0)
  sigma = tuning.calibrate_training_noise(
      config.target_epsilon, config.delta, phase, _score_event(config), config.mean_trials,
      config.shape, extra=[_histogram_event(config)])
  trial = tuning.trial_event([dataclasses.replace(phase, noise_multiplier=sigma)],
                             _score_event(config))
  cost = tuning.selection_cost(trial, config.mean_trials, config.shape, config.delta,
                               extra=[_histogram_event(config)])
  rng = randomness.numpy_rng("tune", "draws")
  class_sizes = np.bincount(dataset.val_labels, minlength=num_classes).astype(np.float64)
  noisy_sizes = class_sizes + rng.normal(0.0, config.histogram_std, num_classes)
  weights = (inverse_frequency_weights(noisy_sizes)
             if config.class_weighting == "noisy_histogram" else None)
  score_kind = choose_score(config.score, noisy_sizes, config.score_std, config.max_score_std)
  val_size = len(dataset.val_labels)
  num_trials = tuning.draw_num_trials(rng, config.mean_trials, config.shape)
  candidates = config.candidates()
  # The trials never see the test split: the engine's per-run evaluation (logged to the console,
  # a private diagnostic here) runs on the validation split instead.
  trial_data = dataclasses.replace(dataset, test_images=dataset.val_images,
                                   test_labels=dataset.val_labels)
  best, log = None, []
  for index in range(num_trials):
    recipe = candidates[int(rng.integers(len(candidates)))]
    run_config = recipe.classifier_config(config.model, sigma, config.seed, delta=config.delta,
                                          class_weights=weights,
                                          **pretrained_lib.classifier_overrides(
                                              config.model, config.pretrained))
    try:
      result = classifier.train_classifier(run_config, dataset=trial_data, randomness=randomness,
                                           stream=f"tune trial {index}")
    except FloatingPointError:  # diverged: the trial outputs "failed", ranked below any model
      log.append({"trial": index, "recipe": dataclasses.asdict(recipe), "diverged": True})
      continue
    val_pred = probabilities(result, dataset.val_images).argmax(axis=1)
    counts = score_counts(dataset.val_labels, val_pred, num_classes, score_kind)
    noisy = counts + rng.normal(0.0, config.score_std, counts.shape)
    score = score_from_counts(noisy, score_kind, noisy_sizes, val_size)
    exact = exact_counts(dataset.val_labels, val_pred, num_classes)
    log.append({"trial": index, "recipe": dataclasses.asdict(recipe), "noisy_score": score,
                "exact_val_balanced_accuracy": float(np.mean(exact[:num_classes] /
                                                             np.maximum(class_sizes, 1))),
                "exact_val_accuracy": float(np.mean(val_pred == dataset.val_labels))})
    if best is None or score > best["score"]:
      best = {"score": score, "noisy_counts": noisy, "result": result, "recipe": recipe}
  if best is None:
    raise FloatingPointError("every selection trial diverged: lower --config.learning_rates.")
  result = best["result"]
  test = classification_metrics(dataset.test_labels, probabilities(result, dataset.test_images))
  warnings = [w for w in (collapse_warning(predicted_counts(best["noisy_counts"], num_classes),
                                           "validation (noisy)"),
                          collapse_warning(np.bincount(
                              probabilities(result, dataset.test_images).argmax(1),
                              minlength=num_classes), "test")) if w]
  for warning in warnings:
    logging.warning("%s", warning)
  row = {
      "arm": f"dp_eps{config.target_epsilon:g}", "model": config.model,
      "dataset": dataset.name, "seed": config.seed, **{f"test_{k}": v for k, v in test.items()},
      "epsilon": cost.epsilon, "delta": config.delta, "noise_multiplier": sigma,
      "sampling_rate": phase.sampling_probability, "expected_batch": phase.batch_size,
      "selected": dataclasses.asdict(best["recipe"]),
      "score": score_kind, f"selected_noisy_val_{score_kind}": best["score"],
      "feature_shape": list(dataset.image_shape),
      "noisy_val_class_histogram": noisy_sizes.tolist(), "class_weights": weights,
      "selection": cost.to_dict(), "collapse": warnings,
      "train_size": train_size, "val_size": len(dataset.val_labels),
  }
  return {"row": outputs.json_safe(row), "private": {"num_trials": num_trials, "trials": log},
          "ledger": result.ledger, "cost": cost}


def run_non_private(config: TransferConfig, dataset: images_lib.ImageDataset,
                    randomness: randomness_lib.PrivateRandomness,
                    score_kind: str = "balanced_accuracy") -> dict:
  """The reference: every candidate trained without privacy, the best by exact validation
  `score_kind` (the DP arm's; epsilon inf; a comparison, not a release of the DP study)."""
  best = None
  val_as_test = dataclasses.replace(dataset, test_images=dataset.val_images,
                                    test_labels=dataset.val_labels)
  grid = itertools.product(config.non_private_learning_rates, config.steps_grid)
  for index, (lr, steps) in enumerate(grid):
    recipe = dataclasses.replace(config.recipe, learning_rate=lr, steps=steps, clip_norm=1.0)
    run_config = dataclasses.replace(recipe.classifier_config(
        config.model, None, config.seed,
        **pretrained_lib.classifier_overrides(config.model, config.pretrained)), optimizer="adam")
    result = classifier.train_classifier(run_config, dataset=val_as_test, randomness=randomness,
                                         stream=f"non-private {index}")
    val = classification_metrics(dataset.val_labels, probabilities(result, dataset.val_images))
    if best is None or val[score_kind] > best[0]:
      best = (val[score_kind], result, recipe)
  _, result, recipe = best
  probs = probabilities(result, dataset.test_images)
  test = classification_metrics(dataset.test_labels, probs)
  warning = collapse_warning(np.bincount(probs.argmax(1), minlength=dataset.num_classes), "test")
  return {"row": outputs.json_safe({
      "arm": "non_private", "model": config.model, "dataset": dataset.name, "seed": config.seed,
      **{f"test_{k}": v for k, v in test.items()}, "epsilon": math.inf, "delta": config.delta,
      "selected": {**dataclasses.asdict(recipe), "optimizer": "adam", "clip_norm": None},
      "score": f"exact {score_kind}", "feature_shape": list(dataset.image_shape),
      "collapse": [warning] if warning else [],
      "train_size": len(dataset.train_labels), "val_size": len(dataset.val_labels)})}


def load(config: TransferConfig) -> images_lib.ImageDataset:
  dataset = images_lib.load_image_dataset(config.dataset, config.data_dir, resize=config.resize,
                                          seed=config.seed)
  dataset = featurize(with_validation(dataset, config.val_fraction, config.seed), config.model,
                      config.max_head_params_per_example)
  return pretrained_lib.prepare(dataset, config.model, config.pretrained, config.pretrained_size)


NOT_COVERED = (
    "the test split: every test metric is exact (the guarantee covers the training and "
    "validation records)",
    "the sizes of the training and validation splits and the number of classes (public: they "
    "set the sampling rate)",
    "the running time, which grows with the secret number of trials K (a timing side channel "
    "outside the theorem)",
    "the non-private reference arm (epsilon inf) when it is run beside the DP arm",
)


def run(config: TransferConfig, workdir: str) -> dict:
  """The DP arm (selection counted) and the non-private reference on one dataset; writes
  results.{json,md}, privacy_report.{json,md}, and the private trial log under private/."""
  os.makedirs(workdir, exist_ok=True)
  randomness = config.randomness()
  report.save_secret_seed(workdir, randomness)
  dataset = load(config)
  logging.info("data: %s", dataset.summary())
  dp = run_dp_selection(config, dataset, randomness)
  rows = [dp["row"]]
  if config.non_private:
    rows.append(run_non_private(config, dataset, randomness, dp["row"]["score"])["row"])
  outputs.write_json(os.path.join(report.private_dir(workdir), "selection_trials.json"),
                     dp["private"], indent=1)
  public_config = randomness_lib.redact(config.to_dict(), randomness)
  outputs.write_json(os.path.join(workdir, "config.json"), public_config, indent=1)
  outputs.write_json(os.path.join(workdir, "results.json"), {"rows": rows}, indent=1)
  text = markdown(rows)
  outputs.atomic_write_text(os.path.join(workdir, "results.md"), text)
  cost = dp["cost"]
  release = report.release(
      f"{dataset.name}/{dp['row']['arm']}", ["results.json", "results.md", "config.json"],
      epsilon=cost.epsilon, delta=config.delta,
      mechanism=("DP-SGD (Gaussian) random search: best of K ~ truncated negative binomial "
                 "trials, each scored by Gaussian-noised validation counts; plus a noisy "
                 "validation class histogram"),
      selection=cost.to_dict(), selected=dp["row"]["selected"],
      noise_multiplier=dp["row"]["noise_multiplier"],
      sampling_rate=dp["row"]["sampling_rate"], score=dp["row"]["score"],
      feature_shape=dp["row"]["feature_shape"], score_noise=config.score_std,
      histogram_noise=config.histogram_std, phases=[dataclasses.asdict(p)
                                                      for p in dp["ledger"].phases])
  paths = report.write_privacy_report(workdir, [release], randomness,
                                      not_covered=NOT_COVERED[:3] + (
                                          NOT_COVERED[3:] if config.non_private else ())
                                      + pretrained_lib.not_covered(config.model,
                                                                   config.pretrained))
  return {"rows": rows, "markdown": text, "privacy_report": paths}


COLUMNS = ("dataset", "model", "arm", "seed", "test_accuracy", "test_balanced_accuracy",
           "test_roc_auc", "test_sensitivity", "test_specificity", "test_majority_rate",
           "epsilon", "collapse")


def markdown(rows: Sequence[dict]) -> str:
  table = []
  for row in rows:
    line = {}
    for column in COLUMNS:
      value = row.get(column)
      if column == "collapse":
        value = "; ".join(value) if value else "-"
      elif isinstance(value, float):
        value = f"{value:.4g}"
      line[column] = value
    table.append(line)
  return outputs.markdown_table(table, COLUMNS)


# ------------------------------------------------------------------------------ config files


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(TransferConfig().to_dict())
  c.data_dir = ml_collections.config_dict.placeholder(str)
  c.resize = ml_collections.config_dict.placeholder(int)
  c.score_noise = ml_collections.config_dict.placeholder(float)
  c.histogram_noise = ml_collections.config_dict.placeholder(float)
  c.max_head_params_per_example = ml_collections.config_dict.placeholder(float)
  c.max_head_params_per_example = TransferConfig.max_head_params_per_example
  c.pretrained = ml_collections.config_dict.placeholder(str)
  return c


def from_config_dict(c: ml_collections.ConfigDict) -> TransferConfig:
  values = dict(c.to_dict())
  unknown = sorted(set(values) - {f.name for f in dataclasses.fields(TransferConfig)})
  if unknown:
    raise ValueError(f"unknown --config fields {unknown} for the transfer study.")
  values["recipe"] = Recipe(**values.get("recipe", {}))
  for name in ("learning_rates", "clip_norms", "steps_grid", "non_private_learning_rates"):
    values[name] = tuple(values[name])
  return TransferConfig(**values)


def train_and_evaluate(c: ml_collections.ConfigDict, workdir: str) -> dict:
  return run(from_config_dict(c), workdir)


def summarize(results: dict) -> str:
  return f"{results['markdown']}\nprivacy report: {results['privacy_report'][1]}"


def main():
  from experiments.common import cli  # pylint: disable=import-outside-toplevel
  cli.run("classify", train_and_evaluate,
          default_config=cli.config_path("classify", "transfer"), summarize=summarize)


if __name__ == "__main__":
  main()
