"""How DP training changes explanations, and certifiably robust attributions (issue 6).

  python -m experiments.interpret --config=experiments/interpret/configs/quick.py \
      --workdir=runs/interpret_quick [--config.field=value ...]

Trains (or reloads from `workdir/models/*`) classifiers at epsilon in {0.5, 1, 5, 10, inf} with
Gaussian DP-SGD ((eps, 1e-4)-DP, RDP accountant) and Laplace DP-SGD (pure eps-DP by default:
noise calibrated so the delta = 0 bound of `dpjax.accounting.pure_epsilon` is eps), then writes:
  table_gaussian.md / table_laplace.md   Average Drop, Increase in Confidence, masked-input score
                                         (Grad-CAM and Grad-CAM++) and test accuracy per epsilon
  clip_sweep.md                          accuracy and masked-input score against the clip norm S
  global_vs_local.md                     DP-SGD against training on LDP-perturbed images
  robustness.md                          top-k intersection and cosine similarity, clean against
                                         random and PGD perturbations, for gradients, SmoothGrad
                                         and the RDP-smoothed top-k map, on DP and non-DP models
  certified.md, certified_fraction.png   certified top-k fraction against radius
  cost.md                                seconds per certified image against T
  gradcam_grid.png, ldp_grid.png, accuracy.png, clip_sweep.png, results.json, config.json
  privacy_report.json / .md              the release of every trained model, the files showing
                                         it, and what the guarantees do not cover

Every model draws its batches and DP noise (and local-DP noise) from its own secret stream (the
OS CSPRNG; `--config.reproducible_private_randomness=True` derives them from `seed`, then a
secret). What is measured on training data stays in `models/<name>/private/`. The
randomized-smoothing noise of the certificates is not a privacy mechanism (it perturbs test
images): it stays seeded.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

from absl import logging
import jax
import numpy as np

from dpjax import devices
from dpjax import randomness as randomness_lib
from dpjax import report
from dpjax import sampling
from dpjax.data import images as images_lib
from dpjax.data import paths
from experiments.classify import classifier
from experiments.common import outputs
from experiments.interpret import explanations
from experiments.interpret import plots
from experiments.interpret import robustness as robustness_lib
from experiments.interpret import settings
from experiments.interpret import tables
from experiments.interpret.settings import Config

INF = math.inf


def load_data(config: Config) -> images_lib.ImageDataset:
  if config.dataset == "catsdogs":
    full = images_lib.load_image_dataset("cifar10_folder", config.data_dir, seed=config.seed)
    names = list(full.class_names)
    keep = [names.index("cat"), names.index("dog")]

    def pick(images, labels):
      rows = np.isin(labels, keep)
      return images[rows], (labels[rows] == keep[1]).astype(np.int32)

    train_x, train_y = pick(full.train_images, full.train_labels)
    test_x, test_y = pick(full.test_images, full.test_labels)
    return images_lib.ImageDataset(train_x, train_y, test_x, test_y, num_classes=2,
                                   name="cifar10 cats vs dogs", class_names=("cat", "dog"))
  name = config.dataset
  try:
    return images_lib.load_image_dataset(name, config.data_dir, max_per_class=config.max_per_class,
                                         seed=config.seed)
  except (FileNotFoundError, OSError) as error:
    if name in ("pneumoniamnist", "retinamnist"):
      logging.warning("%s not found (%s); falling back to sklearn digits", name, error)
      return images_lib.load_image_dataset("digits", max_per_class=config.max_per_class,
                                           seed=config.seed)
    raise


def laplace_pure_noise_multiplier(epsilon: float, steps: int, sampling_probability: float) -> float:
  """Inverse of `accounting.pure_epsilon`: T log(1 + q (e^(1/b) - 1)) = epsilon, solved for b."""
  per_step = epsilon / steps
  return 1.0 / math.log1p(math.expm1(per_step) / sampling_probability)


def classifier_config(config: Config, *, epsilon: float = INF, mechanism: str = "gaussian",
                      clip_norm: float | None = None, ldp_scale: float = 0.0,
                      train_size: int = 0) -> classifier.ClassifierConfig:
  common = dict(model=config.model, dataset=config.dataset, data_dir=config.data_dir,
                model_kwargs=dict(config.model_kwargs), epochs=config.epochs,
                batch_size=config.batch_size, optimizer=config.optimizer,
                learning_rate=config.learning_rate, clip_norm=clip_norm or config.clip_norm,
                delta=config.delta, mechanism=mechanism, ldp_scale=ldp_scale, seed=config.seed,
                max_per_class=config.max_per_class, log_every=1000,
                data_parallel=config.data_parallel,
                reproducible_private_randomness=config.reproducible_private_randomness,
                ldp_label_epsilon=config.ldp_label_epsilon if ldp_scale else None)
  if math.isinf(epsilon):
    return classifier.ClassifierConfig(private=False, noise_multiplier=None, **common)
  if mechanism == "laplace" and config.laplace_accounting == "pure":
    # The same expected batch and step count as classifier.train_classifier.
    sampler = sampling.BatchSampler(train_size, min(config.batch_size, train_size), "poisson")
    steps = sampler.steps_for_epochs(config.epochs)
    noise = laplace_pure_noise_multiplier(epsilon, steps, sampler.expected_batch_size / train_size)
    return classifier.ClassifierConfig(noise_multiplier=noise, **common)
  return classifier.ClassifierConfig(target_epsilon=epsilon, noise_multiplier=None, **common)


def _label(epsilon: float) -> str:
  return "inf" if math.isinf(epsilon) else f"{epsilon:g}"


def train_one(name: str, cfg: classifier.ClassifierConfig, dataset, workdir: str):
  """Trains (or reloads) model `name` in `workdir/models/<name>` from its own secret stream."""
  model_dir = os.path.join(workdir, "models", name)
  os.makedirs(model_dir, exist_ok=True)
  start = time.perf_counter()
  result = classifier.train_classifier(cfg, workdir=model_dir, dataset=dataset,
                                       stream=f"model {name}")
  logging.info("%s: test accuracy %.3f, epsilon %.3g (pure %s), %.1fs", name,
               result.test_accuracy, result.epsilon, result.pure_epsilon,
               time.perf_counter() - start)
  sharding = getattr(jax.tree.leaves(result.params)[0], "sharding", None)
  if sharding is not None and len(sharding.device_set) > 1:
    # Trained data parallel: the explanations below run one image at a time, so one device
    # does them instead of every device repeating the same work.
    result = dataclasses.replace(result, params=jax.device_put(result.params, jax.devices()[0]))
  return result


RECIPE_NOT_COVERED = (
    "hyperparameters (the DP recipe) chosen on test accuracy: the optimizer, learning rate, "
    "batch size and epochs come from the classify trials scored on the test set, not from a DP "
    "hyperparameter search")


class _Shown:
  """Which released files show each trained model: the privacy report's `files`."""

  def __init__(self):
    self.models: dict[str, classifier.ClassifierResult] = {}
    self.files: dict[str, list[str]] = {}

  def add(self, name: str, result: classifier.ClassifierResult) -> None:
    self.models[name] = result
    self.files.setdefault(name, ["results.json"])

  def show(self, name: str, *files: str) -> None:
    listed = self.files.setdefault(name, ["results.json"])
    listed += [f for f in files if f not in listed]

  def releases(self) -> list[dict]:
    return [result.release(name, self.files[name]) for name, result in self.models.items()]

  def not_covered(self) -> list[str]:
    items = [RECIPE_NOT_COVERED]
    if any(not r.config.is_private and r.ldp is None for r in self.models.values()):
      items.append("the non-private model (epsilon inf): its maps, scores and accuracy are "
                   "released with no guarantee")
    for result in self.models.values():
      items += [item for item in result.not_covered() if item not in items]
    items += ["the test images: explanations, scores, certificates and accuracies are computed "
              "on them exactly, and the PNG grids show them (the guarantee covers the training "
              "examples only)",
              "the size of the training set and its classes, treated as public"]
    return items


def write_privacy_report(config: Config, workdir: str, shown: _Shown) -> tuple[str, str]:
  randomness = randomness_lib.from_flag(config.reproducible_private_randomness, config.seed)
  notes = ["randomized smoothing (robustness.md, certified.md, cost.md) adds noise to test "
           "images for certificates of the explanations; it is no privacy mechanism and is "
           "seeded from the config's seed",
           "Laplace models at laplace_accounting='pure' report min(pure epsilon, PLD epsilon at "
           "delta); their pure (delta = 0) epsilon is in the tables"]
  return report.write_privacy_report(workdir, shown.releases(), randomness,
                                     not_covered=shown.not_covered(), notes=notes)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains every model the config asks for (or reloads it) and writes the tables and figures.

  `config`: an ml_collections ConfigDict (a config file's `get_config()`) or a `Config`.
  """
  config = config if isinstance(config, Config) else settings.from_config_dict(config)
  if config.cpu_devices != "0":  # before any JAX computation of this process
    try:
      devices.use_cpu_devices(config.cpu_devices)
    except (RuntimeError, ValueError) as error:
      raise ValueError(str(error).replace("--cpu_devices", "--config.cpu_devices")) from None
  if config.data_dir is None:
    data_dir = paths.default_data_dir()
    config = dataclasses.replace(config, data_dir=str(data_dir) if data_dir else None)
  os.makedirs(workdir, exist_ok=True)
  randomness = randomness_lib.from_flag(config.reproducible_private_randomness, config.seed)
  outputs.write_json(os.path.join(workdir, "config.json"),
                     randomness_lib.redact(dataclasses.asdict(config), randomness))
  report.save_secret_seed(workdir, randomness)
  shown = _Shown()
  dataset = load_data(config)
  config = dataclasses.replace(config, dataset=dataset.name if config.dataset != "catsdogs"
                               else config.dataset)
  logging.info("data: %s", dataset.summary())
  train_size = len(dataset.train_labels)
  explain_images = dataset.test_images[:config.num_explain]
  grid_images = dataset.test_images[:config.num_grid]
  key = jax.random.key(config.seed)
  results: dict = {"dataset": dataset.summary(), "tables": {}}
  trained: dict = {}

  def write(name, text):
    outputs.atomic_write_text(os.path.join(workdir, name), text)

  def model(name, **kwargs):
    """The trained model `name` (trained now, reloaded from workdir, or from this run)."""
    if name not in trained:
      cfg = classifier_config(config, train_size=train_size, **kwargs)
      trained[name] = train_one(name, cfg, dataset, workdir)
      shown.add(name, trained[name])
    return trained[name]

  def explain(result, images=explain_images):
    return explanations.explain(config, result, images)

  # Per-epsilon tables (study Tables 1-2, Fig. 3) and grid maps.
  grid_maps = {"Gaussian": {}, "Laplace": {}}
  for mechanism in ("gaussian", "laplace"):
    rows = {}
    for epsilon in config.epsilons:
      name = f"{mechanism}_eps{_label(epsilon)}" if not math.isinf(epsilon) else "nonprivate"
      result = model(name, epsilon=epsilon, mechanism=mechanism)
      rows[_label(epsilon)] = explanations.metrics_row(result, explain(result))
      grid_maps[mechanism.capitalize()][f"eps={_label(epsilon)}"] = (
          explain(result, grid_images)["gradcam_maps"])
      shown.show(name, f"table_{mechanism}.md", "gradcam_grid.png", "accuracy.png")
    results["tables"][mechanism] = rows
    write(f"table_{mechanism}.md", tables.epsilon_table(rows))
  plots.save_grid(os.path.join(workdir, "gradcam_grid.png"), grid_images, grid_maps)
  finite = [e for e in config.epsilons if not math.isinf(e)]
  cap = 2 * max(finite) if finite else 1.0
  plots.save_line_plot(
      os.path.join(workdir, "accuracy.png"), "epsilon (inf plotted at 2x max)", "test accuracy %",
      {m: ([cap if math.isinf(e) else e for e in config.epsilons],
           [results["tables"][m][_label(e)]["test_accuracy"] for e in config.epsilons])
       for m in ("gaussian", "laplace")}, logx=True)

  # Clip-norm sweep at epsilon 1 (study Fig. 6b).
  sweep = {}
  for clip in config.clip_norms:
    name = f"gaussian_eps{_label(config.clip_sweep_epsilon)}"
    if clip != config.clip_norm or name not in trained:  # the main sweep's model when S matches
      name = f"{name}_clip{clip:g}"
    result = model(name, epsilon=config.clip_sweep_epsilon, clip_norm=clip)
    sweep[f"{clip:g}"] = explanations.metrics_row(result, explain(result))
    shown.show(name, "clip_sweep.md", "clip_sweep.png")
  results["tables"]["clip_sweep"] = sweep
  write("clip_sweep.md", tables.clip_sweep_table(sweep))
  plots.save_line_plot(
      os.path.join(workdir, "clip_sweep.png"), "clip norm S", "%",
      {"test accuracy": ([float(s) for s in sweep], [r["test_accuracy"] for r in sweep.values()]),
       "masked-input score": ([float(s) for s in sweep],
                              [r["gradcam_masked_score"] for r in sweep.values()])}, logx=True)

  # Global DP (DP-SGD, Gaussian) beside local DP (Laplace-perturbed training images).
  local, ldp_maps = {}, {}
  num_pixels = int(np.prod(dataset.image_shape))
  for epsilon in config.ldp_epsilons:
    name = f"ldp_eps{_label(epsilon)}"
    result = model(name, ldp_scale=1.0 / epsilon)
    local[_label(epsilon)] = explanations.metrics_row(
        result, explain(result),
        {"per_image_epsilon": epsilon * num_pixels, "per_label_epsilon": result.ldp.per_label})
    ldp_maps[f"pixel eps={_label(epsilon)}"] = explain(result, grid_images)["gradcam_maps"]
    shown.show(name, "global_vs_local.md", "ldp_grid.png")
  ldp_maps["non-private"] = grid_maps["Gaussian"].get("eps=inf", explain(
      model("nonprivate"), grid_images)["gradcam_maps"])
  shown.show("nonprivate", "ldp_grid.png")
  for label in results["tables"]["gaussian"]:
    shown.show("nonprivate" if label == "inf" else f"gaussian_eps{label}", "global_vs_local.md")
  plots.save_grid(os.path.join(workdir, "ldp_grid.png"), grid_images, {"local DP": ldp_maps})
  results["tables"]["local_dp"] = local
  write("global_vs_local.md", tables.global_vs_local_table(results["tables"]["gaussian"], local))

  # Robustness and certificates on DP and non-DP models.
  robust_images = dataset.test_images[:config.num_robust]
  robust = {}
  for epsilon in config.robust_epsilons:
    name = "nonprivate" if math.isinf(epsilon) else f"gaussian_eps{_label(epsilon)}"
    result = model(name, epsilon=epsilon)
    logging.info("robustness and certificates: %s", name)
    robust[name] = robustness_lib.robustness(config, result, robust_images,
                                             jax.random.fold_in(key, 7))
    shown.show(name, "robustness.md", "certified.md", "certified_fraction.png")
  results["robustness"] = robust
  write("robustness.md", tables.robustness_table(robust, config.attack_radius))
  write("certified.md", tables.certified_table(robust, config.certify_radii, config.confidence,
                                               config.certify_fraction))
  plots.save_line_plot(
      os.path.join(workdir, "certified_fraction.png"), "l2 radius L", "certified top-k fraction",
      {f"{n} {b}": (list(config.certify_radii), r["certified_fraction"][b])
       for n, r in robust.items() for b in robustness_lib.BOUNDS})
  cost_name = "nonprivate" if "nonprivate" in trained else next(iter(trained))
  shown.show(cost_name, "cost.md")
  cost = robustness_lib.cost_vs_samples(config, trained[cost_name], robust_images[0],
                                        jax.random.fold_in(key, 11))
  results["cost"] = cost
  write("cost.md", tables.cost_table(cost))
  outputs.write_json(os.path.join(workdir, "results.json"), results)
  results["privacy_report"] = write_privacy_report(config, workdir, shown)
  return results


def summarize(results: dict) -> str:
  """What the command line prints at the end: the Gaussian table."""
  return "Gaussian DP-SGD:\n" + tables.epsilon_table(results["tables"]["gaussian"])
