"""Where augmentation multiplicity and a parameter EMA pay at CPU scale (issue 16b), on the
VALIDATION split only (never test): the transfer study's fixed recipe (`transfer.Recipe`, the
small CNN on pixels or any `--model`), DP-SGD at `--target_epsilon` calibrated as the transfer
study's `mean_trials=1` run (the run, its validation counts and histogram), for each seed and
each augmentation multiplicity K. Every run keeps an EMA of the iterates (`--ema_decay`): the EMA
is post-processing and does not change the trajectory, so the last iterate of the same run is the
EMA-off arm (a paired comparison).

  nice -n 10 python -m experiments.classify.augmult_ema --out=runs/augmult_ema \
      --seeds=0,1 --augmults=0,4

Writes `<out>/rows.jsonl` (one row per run; reruns skip rows already there) and prints a table.
Validation numbers steer a choice (whether a default changes), like the recipe's development on
PneumoniaMNIST's validation split: uncounted, exact, not a release.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np
from absl import app
from absl import flags
from absl import logging

from dpjax import tuning
from experiments.classify import classifier
from experiments.classify import transfer

_OUT = flags.DEFINE_string("out", "runs/augmult_ema", "folder of rows.jsonl")
_DATASET = flags.DEFINE_string("dataset", "pneumoniamnist", "transfer dataset name")
_MODEL = flags.DEFINE_string("model", "cnn", "registry model")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1"], "public seeds (initialisation, split)")
_AUGMULTS = flags.DEFINE_list("augmults", ["0", "4"], "augmentation multiplicities K")
_CROP_PAD = flags.DEFINE_integer("crop_pad", 4, "random crop after reflect padding by this")
_EMA = flags.DEFINE_float("ema_decay", 0.999, "EMA decay (with De et al.'s warm-up)")
_EPSILON = flags.DEFINE_float("target_epsilon", 8.0, "epsilon of the transfer mean_trials=1 run")
_STEPS = flags.DEFINE_integer("steps", None, "instead of the recipe's (a smoke run)")


def noise_multiplier(config: transfer.TransferConfig, train_size: int) -> float:
  """The sigma of the transfer study's fixed-recipe run (`mean_trials=1`) at its epsilon."""
  # pylint: disable=protected-access
  phase = transfer._phase(config, train_size, 1.0)
  return tuning.calibrate_training_noise(
      config.target_epsilon, config.delta, phase, transfer._score_event(config),
      config.mean_trials, config.shape, extra=[transfer._histogram_event(config)])


def run_one(seed: int, augmult: int) -> dict:
  config = transfer.TransferConfig(dataset=_DATASET.value, model=_MODEL.value, seed=seed,
                                   target_epsilon=_EPSILON.value, mean_trials=1.0,
                                   non_private=False)
  if _STEPS.value:
    config = dataclasses.replace(config, recipe=dataclasses.replace(config.recipe,
                                                                    steps=_STEPS.value))
  dataset = transfer.load(config)
  sigma = noise_multiplier(config, len(dataset.train_labels))
  recipe = dataclasses.replace(config.recipe, augmult=augmult, augment_crop_pad=_CROP_PAD.value,
                               ema_decay=_EMA.value)
  run_config = recipe.classifier_config(config.model, sigma, seed, delta=config.delta)
  # The engine's evaluation runs on the validation split: no test number is computed.
  val_as_test = dataclasses.replace(dataset, test_images=dataset.val_images,
                                    test_labels=dataset.val_labels)
  start = time.perf_counter()
  result = classifier.train_classifier(run_config, dataset=val_as_test,
                                       randomness=config.randomness(),
                                       stream=f"augmult {augmult}")
  seconds = time.perf_counter() - start
  row = {"dataset": dataset.name, "model": config.model, "seed": seed, "augmult": augmult,
         "crop_pad": _CROP_PAD.value, "ema_decay": _EMA.value, "noise_multiplier": sigma,
         "steps": result.steps, "train_seconds": result.train_seconds,
         "seconds_per_step": result.train_seconds / max(result.steps, 1),
         "wall_seconds": seconds}
  for name, params in (("ema", result.params), ("last", result.last_iterate_params)):
    probs = transfer.probabilities(dataclasses.replace(result, params=params), dataset.val_images)
    metrics = transfer.classification_metrics(dataset.val_labels, probs)
    row.update({f"val_{k}_{name}": v for k, v in metrics.items()
                if k in ("accuracy", "balanced_accuracy", "roc_auc", "top_prediction_share")})
  return row


def table(rows: list[dict]) -> str:
  lines = ["| seed | K | val acc last iterate | val acc EMA | val bal acc last | val bal acc EMA "
           "| val AUC last | val AUC EMA | s/step |", "|---|---|---|---|---|---|---|---|---|"]
  for r in sorted(rows, key=lambda r: (r["augmult"], r["seed"])):
    lines.append(
        f"| {r['seed']} | {r['augmult']} | {100 * r['val_accuracy_last']:.1f} | "
        f"{100 * r['val_accuracy_ema']:.1f} | {100 * r['val_balanced_accuracy_last']:.1f} | "
        f"{100 * r['val_balanced_accuracy_ema']:.1f} | {100 * r['val_roc_auc_last']:.1f} | "
        f"{100 * r['val_roc_auc_ema']:.1f} | {r['seconds_per_step']:.2f} |")
  return "\n".join(lines)


def main(argv):
  del argv
  os.makedirs(_OUT.value, exist_ok=True)
  path = os.path.join(_OUT.value, "rows.jsonl")
  rows = []
  if os.path.exists(path):
    with open(path) as f:
      rows = [json.loads(line) for line in f if line.strip()]
  done = {(r["seed"], r["augmult"]) for r in rows}
  for seed in map(int, _SEEDS.value):
    for augmult in map(int, _AUGMULTS.value):
      if (seed, augmult) in done:
        continue
      row = run_one(seed, augmult)
      logging.info("row: %s", row)
      rows.append(row)
      with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
  print(table(rows))


if __name__ == "__main__":
  app.run(main)
