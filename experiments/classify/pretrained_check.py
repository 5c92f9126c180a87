"""Validation-only sanity check of the pretrained probe (issue 16a): the transfer recipe's linear
head on frozen ResNet-18 features beside the same head on ScatterNet features, scored on the
validation split (the test split is never evaluated).

  python -m experiments.classify.pretrained_check --pretrained=runs/16a/resnet18_random.npz \
      --dataset=pneumoniamnist --models=resnet18_probe,scatter_linear --seeds=0 \
      --out=runs/16a/check.json

Each model gets the fixed transfer recipe (no selection) with DP-SGD calibrated to
`--target_epsilon`, and the non-private reference (Adam, no clipping). The validation numbers are
exact and so private diagnostics of a development set (as in BUILD_NOTES section 14); this
script is a development check, not a release. With a random-weight file the probe's features are
those of a random network: the check shows the code path, not what pretrained weights give.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from absl import app, flags, logging

from experiments.classify import transfer


def check_one(model: str, dataset_name: str, pretrained: str | None, seed: int,
              target_epsilon: float, size: int) -> list[dict]:
  """DP (fixed recipe) and non-private validation metrics of one model on one dataset."""
  config = transfer.TransferConfig(
      dataset=dataset_name, model=model, seed=seed, target_epsilon=target_epsilon,
      mean_trials=1.0, non_private=False, pretrained=pretrained if model in
      transfer.pretrained_lib.MODELS else None, pretrained_size=size)
  start = time.perf_counter()
  dataset = transfer.load(config)
  prepare_seconds = time.perf_counter() - start
  # The engine's per-run evaluation and every number here use the validation split only.
  val_only = dataclasses.replace(dataset, test_images=dataset.val_images,
                                 test_labels=dataset.val_labels)
  overrides = transfer.pretrained_lib.classifier_overrides(config.model, config.pretrained)
  arms = {
      f"dp_eps{target_epsilon:g}": dataclasses.replace(
          config.recipe.classifier_config(model, 0.0, seed, delta=config.delta, **overrides),
          noise_multiplier=None, target_epsilon=target_epsilon),
      "non_private": dataclasses.replace(
          dataclasses.replace(config.recipe, learning_rate=1e-3, clip_norm=1.0)
          .classifier_config(model, None, seed, **overrides), optimizer="adam"),
  }
  rows = []
  for arm, run_config in arms.items():
    start = time.perf_counter()
    result = transfer.classifier.train_classifier(run_config, dataset=val_only,
                                                  stream=f"check {model} {arm}")
    val = transfer.classification_metrics(dataset.val_labels,
                                          transfer.probabilities(result, dataset.val_images))
    rows.append({"dataset": dataset.name, "model": model, "arm": arm, "seed": seed,
                 **{f"val_{k}": v for k, v in val.items()},
                 "noise_multiplier": result.noise_multiplier, "epsilon": result.epsilon,
                 "input_shape": list(dataset.image_shape), "prepare_seconds": prepare_seconds,
                 "train_seconds": time.perf_counter() - start})
    logging.info("%s", rows[-1])
  return rows


def main(_):
  values = flags.FLAGS
  rows = []
  for seed in (int(s) for s in values.seeds.split(",")):
    for model in values.models.split(","):
      rows += check_one(model, values.dataset, values.pretrained, seed, values.target_epsilon,
                        values.size)
  os.makedirs(os.path.dirname(os.path.abspath(values.out)), exist_ok=True)
  with open(values.out, "w", encoding="utf-8") as file:
    json.dump({"rows": rows}, file, indent=1)
  for row in rows:
    print(f"{row['model']:16s} {row['arm']:12s} seed {row['seed']}  val acc "
          f"{row['val_accuracy']:.3f}  bal acc {row['val_balanced_accuracy']:.3f}  AUC "
          f"{row['val_roc_auc']:.3f}  top share {row['val_top_prediction_share']:.2f}  "
          f"({row['prepare_seconds']:.0f} s features, {row['train_seconds']:.0f} s train)")


if __name__ == "__main__":
  flags.DEFINE_string("pretrained", None, "converted ResNet-18 .npz (torchvision_import)")
  flags.DEFINE_string("dataset", "pneumoniamnist", "dataset name, as --config.dataset")
  flags.DEFINE_string("models", "resnet18_probe,scatter_linear", "comma-separated models")
  flags.DEFINE_string("seeds", "0", "comma-separated public seeds")
  flags.DEFINE_float("target_epsilon", 8.0, "DP arm's epsilon (fixed recipe, no selection)")
  flags.DEFINE_integer("size", 64, "side the images are resized to for the ResNet")
  flags.DEFINE_string("out", "runs/16a/check.json", "JSON of the rows")
  app.run(main)
