"""The classify sweep end to end: every run trained (each resumable), the tables, the figures and
the privacy report. `train_and_evaluate(config, workdir)` is what `main.py` and the tests call.

Each run trains in `workdir/runs/<dataset>__<run>/` (its own checkpoint, so a killed sweep
resumes run by run, each with its privacy ledger) and draws its batches and noise from its own
secret randomness stream (the OS CSPRNG; `reproducible_private_randomness` derives them from
`seed`, which then becomes a secret).

Released outputs (held-out evaluation and privacy accounting only): config.json, results.json,
results.md, accuracy_vs_epoch.png, accuracy_vs_epsilon.png, ldp_grid_<dataset>.png, per run
result.json and progress.jsonl, and privacy_report.{json,md} (one release per run, and what the
guarantee does not cover). Private diagnostics (training accuracy and loss, batch statistics,
checkpoints with the secret noise key, the perturbed LDP data, the secret seed) live under
`private/` folders and are never released.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
from absl import logging

from dpjax import devices
from dpjax import report
from dpjax.data import images as images_lib
from experiments.classify import classifier
from experiments.classify import plots
from experiments.classify import sweep as sweep_lib
from experiments.classify import transfer
from experiments.common import outputs

PRIVATE_CONFIG = "run_config.json"
TABLES = ("results.json", "results.md", "accuracy_vs_epoch.png", "accuracy_vs_epsilon.png")

RECIPE_NOT_COVERED = (
    "hyperparameters (the DP recipe) chosen on test accuracy: the presets' optimizer, learning "
    "rate, batch size, clip norm and epochs were picked from trial runs scored on the test set "
    "(experiments/classify/README.md), not by a DP hyperparameter search")


def run_dir(workdir: str, name: str) -> str:
  """The folder of run `name` (`<dataset>/<setting>`) in the sweep's workdir."""
  return os.path.join(workdir, "runs", name.replace("/", "__").replace(":", "_"))


def _finished_row(name: str, config: classifier.ClassifierConfig, folder: str) -> dict | None:
  """The result row of a run finished earlier with this exact config (compared in private/,
  since the released config may hide the seed), else None."""
  result_path = os.path.join(folder, "result.json")
  full_config = os.path.join(folder, report.PRIVATE_DIR, PRIVATE_CONFIG)
  if not (os.path.exists(result_path) and os.path.exists(full_config)):
    return None
  if outputs.read_json(full_config) != outputs.json_safe(config.to_dict()):
    return None
  row = outputs.read_json(result_path)
  if "release" not in row:  # written before privacy reports: train again
    return None
  logging.info("%s: finished earlier, read from %s", name, result_path)
  return row


def run_one(name: str, config: classifier.ClassifierConfig, folder: str,
            dataset: images_lib.ImageDataset) -> dict:
  """Trains one run (resuming its checkpoint) and returns its public result row; a finished run
  is read back from its result.json when its config is unchanged.

  The run draws its batches and noise from its own secret stream, named after the run. The row
  holds only public values (held-out evaluation, accounting) and the run's privacy-report entry;
  the training-data diagnostics stay in `<folder>/private/`.
  """
  os.makedirs(folder, exist_ok=True)
  row = _finished_row(name, config, folder)
  if row is not None:
    return row
  outputs.write_json(os.path.join(folder, "config.json"), config.public_dict())
  outputs.write_json(os.path.join(report.private_dir(folder), PRIVATE_CONFIG), config.to_dict())
  result = classifier.train_classifier(config, workdir=folder, dataset=dataset,
                                       stream=f"arm {name}")
  probabilities = transfer.probabilities(result, dataset.test_images)
  test_metrics = transfer.classification_metrics(dataset.test_labels, probabilities)
  collapse = transfer.collapse_warning(
      np.bincount(probabilities.argmax(1), minlength=dataset.num_classes), "test")
  if collapse:
    logging.warning("%s: %s", name, collapse)
  row = {"run": name, **result.to_dict(), "config": config.public_dict(),
         **{f"test_{k}": v for k, v in test_metrics.items() if k != "accuracy"},
         "collapse": collapse,
         "history": outputs.json_safe(result.history),
         "release": result.release(name, []), "not_covered": result.not_covered()}
  outputs.write_json(os.path.join(folder, "result.json"), row)
  logging.info("%s: test accuracy %.4f epsilon %s (private: train accuracy %.4f)", name,
               result.test_accuracy, row["epsilon"], result.private["train_accuracy"])
  return outputs.json_safe(row)


def markdown(rows: list[dict]) -> str:
  """The study's table (test accuracy per setting, one block per dataset) and details.

  Only held-out evaluation and accounting: training accuracy is a private diagnostic.
  """
  parts = []
  for dataset in dict.fromkeys(row["dataset"] for row in rows):
    block = [row for row in rows if row["dataset"] == dataset]
    line = {"accuracy": "test", **{row["run"].split("/", 1)[1]: f"{100 * row['test_accuracy']:.2f}%"
                                   for row in block}}
    parts.append(f"### {dataset}\n\n" + outputs.markdown_table([line]))
  details = []
  for row in rows:
    labels = row.get("ldp_labels") or "-"
    if row.get("ldp_epsilon_per_label") is not None:
      labels = f"RR eps {row['ldp_epsilon_per_label']:g}"
    details.append({
        "run": row["run"], "model": row["model"], "mechanism": row["mechanism"],
        "noise multiplier": f"{row['noise_multiplier']:.4g}",
        "epsilon": f"{float(row['epsilon']):.4g}",
        "delta": f"{row['delta']:g}",
        "LDP eps/pixel": _or_dash(row.get("ldp_epsilon_per_pixel")),
        "LDP eps/image": _or_dash(row.get("ldp_epsilon_per_image")),
        "LDP labels": labels, "epochs": f"{row['epochs']:.3g}",
        "test acc": f"{row['test_accuracy']:.4f}",
        **{label: _or_dash(row.get(f"test_{key}"), ".4f") for key, label in _MEDICAL},
        "examples/s": f"{row['examples_per_sec']:.0f}"})
  parts.append(outputs.markdown_table(details))
  collapsed = [f"- **{row['run']}**: {row['collapse']}" for row in rows if row.get("collapse")]
  if collapsed:
    parts.append("**Collapsed to one class** (a constant classifier, whatever its accuracy):\n\n"
                 + "\n".join(collapsed) + "\n")
  parts.append("Training accuracy and loss are private diagnostics (runs/*/private/); the "
               "guarantees and what they do not cover: privacy_report.md.\n")
  return "\n".join(parts)


_MEDICAL = (("balanced_accuracy", "balanced acc"), ("roc_auc", "ROC AUC"),
            ("sensitivity", "sensitivity"), ("specificity", "specificity"))


def _or_dash(value, spec: str = "g") -> str:
  return "-" if value is None else format(value, spec)


def not_covered(sweep: sweep_lib.SweepConfig, rows: list[dict]) -> list[str]:
  """What the sweep's guarantees leave out, in plain words, for the privacy report."""
  items = [RECIPE_NOT_COVERED]
  if sweep.include_original:
    items.append("the 'original' runs train without any privacy (epsilon inf): their "
                 "accuracies and curves are released with no guarantee")
  for row in rows:
    items += [item for item in row.get("not_covered", []) if item not in items]
  items += [
      "the test sets: every reported accuracy is measured on them exactly (the guarantee covers "
      "the training examples only), and ldp_grid_*.png shows unperturbed test images beside "
      "their perturbations (an illustration, with noise from a fixed public key)",
      "the size of each training set and its classes, treated as public (they set the sampling "
      "rate and appear in the data summary)",
  ]
  return items


def write_privacy_report(sweep: sweep_lib.SweepConfig, rows: list[dict],
                         workdir: str) -> tuple[str, str]:
  """privacy_report.{json,md}: one release per run, naming the files that show it."""
  releases = []
  for row in rows:
    folder = os.path.relpath(run_dir(workdir, row["run"]), workdir)
    files = list(TABLES) + [os.path.join(folder, f) for f in ("result.json", "progress.jsonl",
                                                              "config.json")]
    releases.append({**row["release"], "files": files})
  randomness = sweep.base.randomness()
  notes = []
  if any(row.get("ldp_epsilon_per_image") is not None for row in rows):
    notes.append("local-DP epsilons are per image by basic composition over its pixels (a "
                 "guarantee in name only at these scales); the per-pixel value is not a per-image "
                 "guarantee")
  if not randomness.secure:
    notes.append("reproducible_private_randomness: the seed (private/secret_seed.json) derives "
                 "every batch and noise draw; the guarantee needs it secret and unguessable, so "
                 "a small integer seed gives no protection against someone who tries seeds")
  return report.write_privacy_report(workdir, releases, randomness,
                                     not_covered=not_covered(sweep, rows), notes=notes)


def run_sweep(sweep: sweep_lib.SweepConfig, workdir: str) -> dict:
  """Runs every run of the sweep (each resumable) and writes the tables, plots and report."""
  os.makedirs(workdir, exist_ok=True)
  planned = sweep_lib.runs(sweep)
  outputs.write_json(os.path.join(workdir, "config.json"),
                     {"sweep": sweep.to_dict(),
                      "runs": {name: c.public_dict() for name, c in planned}}, indent=1)
  report.save_secret_seed(workdir, sweep.base.randomness())
  rows, grids = [], []
  for dataset_name in dict.fromkeys(c.dataset for _, c in planned):
    first = next(c for _, c in planned if c.dataset == dataset_name)
    dataset = classifier.load_dataset(first)
    logging.info("loaded %s", dataset.summary())
    grid_path = os.path.join(workdir, f"ldp_grid_{dataset_name.replace(':', '_')}.png")
    # Test images only, an illustration: its noise protects nothing, so a fixed public key (never
    # the seed, which may be the secret of reproducible_private_randomness).
    plots.save_perturbation_grid(grid_path, dataset.test_images[:4],
                                 sweep.ldp_scales or sweep.grid_scales, jax.random.key(0))
    grids.append(grid_path)
    for name, config in planned:
      if config.dataset == dataset_name:
        rows.append(run_one(name, config, run_dir(workdir, name), dataset))
  summary = [{k: v for k, v in row.items()
              if k not in ("history", "config", "release", "not_covered")} for row in rows]
  results = {"runs": summary, "ldp_grids": grids}
  outputs.write_json(os.path.join(workdir, "results.json"), results, indent=1)
  results["markdown"] = markdown(rows)
  outputs.atomic_write_text(os.path.join(workdir, "results.md"), results["markdown"])
  results["plots"] = plots.plot_accuracy(rows, workdir)
  results["privacy_report"] = write_privacy_report(sweep, rows, workdir)
  return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The sweep of `config` (a configs/*.py ConfigDict) run in `workdir`; returns the results
  (`runs`: one public row per run, `markdown`, and the paths of the grids, plots and report).

  Raises ValueError naming the field (`--config.<field>=<value>`) for a bad setting.
  """
  sweep = sweep_lib.from_config_dict(config)
  devices.use_cpu_devices(sweep.cpu_devices)  # before the first JAX computation
  return run_sweep(sweep, workdir)


def summarize(results: dict) -> str:
  """What `main` prints: the results table and where the privacy report is."""
  return f"{results['markdown']}\nprivacy report: {results['privacy_report'][1]}"
