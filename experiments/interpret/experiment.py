"""How DP training changes explanations, and certifiably robust attributions (issue 6).

  python -m experiments.interpret --workdir=/tmp/interpret --preset=quick

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
OS CSPRNG; `--reproducible_private_randomness` derives them from `--seed`, then a secret). What
is measured on training data stays in `models/<name>/private/`. The randomized-smoothing noise of
the certificates is not a privacy mechanism (it perturbs test images): it stays seeded.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from dpjax import classifier
from dpjax import devices
from dpjax import randomness as randomness_lib
from dpjax import report
from dpjax import sampling
from dpjax.data import images as images_lib
from dpjax.data import paths
from dpjax.interpret import attacks, certified, gradcam, metrics

INF = math.inf


@dataclasses.dataclass(frozen=True)
class Config:
  dataset: str = "pneumoniamnist"  # falls back to "digits" when the file is absent
  model: str = "cnn"
  model_kwargs: tuple = (("channels", (16, 32, 32, 64)),)
  cam_layer: str | None = None  # None: the last 4-D map
  max_per_class: int | None = None
  epochs: float = 5.0
  batch_size: int = 64
  # Momentum SGD, not Adam: Adam is invariant to the gradient's scale, and when every example is
  # clipped the privatised gradient is just S times a fixed vector, so a clip sweep would be flat.
  optimizer: str = "momentum"
  learning_rate: float = 0.1
  clip_norm: float = 1.0
  delta: float = 1e-4
  epsilons: tuple = (0.5, 1.0, 5.0, 10.0, INF)
  laplace_accounting: str = "pure"  # "pure": delta = 0 epsilon; "pld": epsilon at delta
  clip_norms: tuple = (0.1, 1.0, 5.0)  # sweep at epsilon 1 (Gaussian)
  clip_sweep_epsilon: float = 1.0
  ldp_epsilons: tuple = (0.5, 1.0, 5.0)  # per-pixel epsilon of the Laplace perturbation
  num_explain: int = 64  # test images scored by the metrics
  num_grid: int = 2  # images in the PNG grids
  # certified robustness
  robust_epsilons: tuple = (1.0, INF)  # Gaussian DP-SGD models evaluated (inf: non-private)
  num_robust: int = 4
  smoothing_sigma: float = 0.25
  num_samples: int = 1024  # T
  topk_fraction: float = 0.1  # k = this share of the pixels
  attack_radius: float = 0.5
  attack_steps: int = 10
  eot_samples: int = 4
  certify_radii: tuple = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
  certify_fraction: float = 0.5
  confidence: float = 0.999
  cost_samples: tuple = (64, 256, 1024, 4096)
  data_dir: str | None = None
  seed: int = 0  # public choices (initialisation, data subset) and the smoothing noise
  reproducible_private_randomness: bool = False  # opt-in: batches and DP noise from `seed`
  ldp_label_epsilon: float | None = None  # randomised response on LDP labels; None: in clear
  data_parallel: bool = False  # shard training batches over all local devices

  def __post_init__(self):
    if self.laplace_accounting not in ("pure", "pld"):
      raise ValueError(f"laplace_accounting={self.laplace_accounting!r}: valid pure, pld")
    for name in ("smoothing_sigma", "attack_radius", "topk_fraction", "clip_norm"):
      if not getattr(self, name) > 0:
        raise ValueError(f"{name}={getattr(self, name)} must be > 0")
    if not all(e > 0 for e in self.epsilons + self.ldp_epsilons + self.robust_epsilons):
      raise ValueError("every epsilon must be > 0 (inf: non-private)")
    for name in ("num_explain", "num_grid", "num_robust", "num_samples"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must be >= 1")


PRESETS = {
    "quick": Config(),
    "medical": Config(epochs=10.0, num_explain=256, num_robust=16, num_samples=2048,
                      num_grid=3),
    "catsdogs": Config(dataset="catsdogs", model="vgg16", model_kwargs=(), max_per_class=None,
                       epochs=10.0, learning_rate=0.05, batch_size=32, num_explain=256,
                       num_robust=8, num_samples=512),
    "tiny": Config(dataset="digits", model_kwargs=(("channels", (4, 8)),), max_per_class=20,
                   epochs=1.0, epsilons=(1.0, INF), clip_norms=(1.0,), ldp_epsilons=(1.0,),
                   num_explain=8, num_grid=1, robust_epsilons=(INF,), num_robust=1,
                   num_samples=16, attack_steps=2, eot_samples=1, cost_samples=(8,),
                   certify_radii=(0.0, 0.01)),
}


# ------------------------------------------------------------------------------ data, models

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


# ------------------------------------------------------------------------------ explanations
# Models are hashable dataclasses and parameters are arguments, so every model of one
# architecture shares these compilations.

@functools.lru_cache(maxsize=None)
def _jitted_apply(model):
  return jax.jit(lambda params, batch: model.apply({"params": params}, batch))


@functools.lru_cache(maxsize=None)
def _saliency(model):
  return gradcam.make_input_gradient(model)


@functools.lru_cache(maxsize=None)
def _attack(model, radius, k, steps, sigma, eot_samples):
  return attacks.make_topk_attack(model, radius=radius, k=k, steps=steps, sigma=sigma,
                                  eot_samples=eot_samples)


def explain(config: Config, result, images: np.ndarray) -> dict:
  """Grad-CAM(++) maps of the predicted classes and the three metrics."""
  model, params = result.model, result.params
  layer = config.cam_layer or gradcam.default_layer(model, params, images.shape[1:])
  # Convs of SmallCNN/VGG/AlexNet are followed by a ReLU outside the module (see gradcam).
  post_relu = None if "block" in layer else jax.nn.relu
  x = jnp.asarray(images)
  apply_fn = functools.partial(_jitted_apply(model), params)
  classes = jnp.argmax(apply_fn(x), -1)
  out = {"layer": layer}
  for method in gradcam.METHODS:
    maps = gradcam.grad_cam(model, params, x, layer=layer, classes=classes, method=method,
                            activation_fn=post_relu)
    out[method] = metrics.score_explanations(apply_fn, x, maps, classes).to_dict()
    out[method + "_maps"] = np.asarray(gradcam.normalize_maps(maps))
  return out


def metrics_row(result, explained: dict, extra: dict | None = None) -> dict:
  row = {"test_accuracy": 100.0 * result.test_accuracy, "epsilon": result.epsilon,
         "pure_epsilon": result.pure_epsilon, "noise_multiplier": result.noise_multiplier,
         "steps": result.steps}
  for method in gradcam.METHODS:
    scores = explained[method]
    row[f"{method}_average_drop"] = scores["average_drop"]
    row[f"{method}_increase_in_confidence"] = scores["increase_in_confidence"]
    row[f"{method}_masked_score"] = scores["masked_score"]
    row[f"{method}_cross_image_similarity"] = 100.0 * metrics.cross_image_similarity(
        explained[method + "_maps"])
  row.update(extra or {})
  return row


# ------------------------------------------------------------------------------ robustness

def robustness(config: Config, result, images: np.ndarray, key: jax.Array) -> dict:
  """Clean vs random / PGD inputs: top-k intersection and cosine per attribution method."""
  model, params = result.model, result.params
  saliency = _saliency(model)
  num_pixels = images.shape[1] * images.shape[2]
  k = max(1, int(round(config.topk_fraction * num_pixels)))
  sigma, radius = config.smoothing_sigma, config.attack_radius
  pgd = _attack(model, radius, k, config.attack_steps, 0.0, 1)
  pgd_eot = _attack(model, radius, k, config.attack_steps, sigma, config.eot_samples)
  rows = {f"{method}/{attack}": {"topk": [], "cosine": []}
          for method in ("gradient", "smoothgrad", "rdp_topk") for attack in ("random", "pgd")}
  certificates, radii_rdp, radii_gauss, seconds = [], [], [], []
  for index, image in enumerate(images):
    image_key = jax.random.fold_in(key, index)
    logits = _jitted_apply(model)(params, jnp.asarray(image)[None])
    cls = int(jnp.argmax(logits[0]))
    classes = jnp.array([cls])

    def smoothed(x, salt):
      return certified.smooth_attributions(saliency, params, x, cls,
                                           jax.random.fold_in(image_key, salt), sigma=sigma,
                                           num_samples=config.num_samples, k=k)

    clean = smoothed(image, 0)
    seconds.append(clean.seconds)
    perturbed = {
        "random": (image + np.asarray(attacks.random_perturbation(
            jax.random.fold_in(image_key, 1), image.shape, radius)),) * 2,
        "pgd": (np.asarray(pgd(params, image, cls, jax.random.fold_in(image_key, 2))),
                np.asarray(pgd_eot(params, image, cls, jax.random.fold_in(image_key, 3)))),
    }
    plain_clean = np.asarray(saliency(params, jnp.asarray(image)[None], classes))
    for attack, (against_plain, against_smooth) in perturbed.items():
      plain = np.asarray(saliency(params, jnp.asarray(against_plain)[None], classes))
      # The same noise key as the clean map: the comparison sees the input change only.
      smooth = smoothed(against_smooth, 0)
      pairs = {"gradient": (plain_clean, plain),
               "smoothgrad": (clean.smoothgrad[None], smooth.smoothgrad[None]),
               "rdp_topk": (clean.topk_frequency[None], smooth.topk_frequency[None])}
      for method, (a, b) in pairs.items():
        rows[f"{method}/{attack}"]["topk"].append(float(metrics.topk_intersection(a, b, k)[0]))
        rows[f"{method}/{attack}"]["cosine"].append(float(metrics.cosine_similarity(a, b)[0]))
    certificates.append({
        "rdp": certified.certify(clean, config.certify_radii, confidence=config.confidence)
        .fractions.tolist(),
        "rdp_exact": certified.certify(clean, config.certify_radii, confidence=None)
        .fractions.tolist(),
        "gaussian": certified.certify(clean, config.certify_radii, bound="gaussian",
                                      confidence=config.confidence).fractions.tolist()})
    radii_rdp.append(certified.certified_radius(clean, config.certify_fraction,
                                                confidence=config.confidence))
    radii_gauss.append(certified.certified_radius(clean, config.certify_fraction,
                                                  bound="gaussian", confidence=config.confidence))
  summary = {name: {"topk_intersection": float(np.mean(v["topk"])),
                    "cosine": float(np.mean(v["cosine"])),
                    "cosine_min": float(np.min(v["cosine"]))} for name, v in rows.items()}
  return {"k": k, "table": summary,
          "certified_fraction": {b: np.mean([c[b] for c in certificates], 0).tolist()
                                 for b in ("rdp", "rdp_exact", "gaussian")},
          "certified_radius_rdp": radii_rdp, "certified_radius_gaussian": radii_gauss,
          "seconds_per_image": float(np.mean(seconds))}


def cost_vs_samples(config: Config, result, image: np.ndarray, key: jax.Array) -> list[dict]:
  saliency = _saliency(result.model)
  k = max(1, int(round(config.topk_fraction * image.shape[0] * image.shape[1])))
  cls = int(jnp.argmax(result.model.apply({"params": result.params}, jnp.asarray(image)[None])))
  rows = []
  for samples in config.cost_samples:
    smoothed = certified.smooth_attributions(saliency, result.params, image, cls, key,
                                             sigma=config.smoothing_sigma, num_samples=samples,
                                             k=k)
    start = time.perf_counter()
    radius = certified.certified_radius(smoothed, config.certify_fraction,
                                        confidence=config.confidence)
    rows.append({"T": samples, "sampling_seconds": smoothed.seconds,
                 "certify_seconds": time.perf_counter() - start, "certified_radius": radius})
  return rows


# ------------------------------------------------------------------------------ outputs

def _markdown(header: Sequence[str], rows: Sequence[Sequence]) -> str:
  def cell(value):
    if isinstance(value, float):
      return "inf" if math.isinf(value) else f"{value:.3g}" if abs(value) < 0.01 else f"{value:.2f}"
    return str(value)
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def _write(workdir: str, name: str, text: str) -> None:
  with open(os.path.join(workdir, name), "w") as f:
    f.write(text)


def epsilon_table(rows: dict) -> str:
  labels = list(rows)
  keys = ["test_accuracy"] + [f"{m}_{s}" for m in gradcam.METHODS
                              for s in ("average_drop", "increase_in_confidence", "masked_score",
                                        "cross_image_similarity")]
  body = [[key] + [rows[label].get(key, float("nan")) for label in labels] for key in keys]
  body.append(["noise_multiplier"] + [rows[label]["noise_multiplier"] for label in labels])
  return _markdown(["metric (%)"] + [f"eps={label}" for label in labels], body)


def _overlay(ax, image, cam):
  shown = image[..., 0] if image.shape[-1] == 1 else image
  ax.imshow(shown, cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=1)
  if cam is not None:
    ax.imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
  ax.set_xticks([])
  ax.set_yticks([])


def save_grid(path: str, images: np.ndarray, rows: dict[str, dict[str, np.ndarray]]) -> None:
  """Per image and row (e.g. Gaussian, Laplace): the input, then its map at each column."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  columns = max(len(r) for r in rows.values()) + 1
  figure, axes = plt.subplots(len(images) * len(rows), columns,
                              figsize=(1.6 * columns, 1.7 * len(images) * len(rows)), squeeze=False)
  for i, image in enumerate(images):
    for r, (row_name, maps) in enumerate(rows.items()):
      line = axes[i * len(rows) + r]
      _overlay(line[0], image, None)
      line[0].set_ylabel(row_name, fontsize=7)
      for c, (label, cams) in enumerate(maps.items(), start=1):
        _overlay(line[c], image, cams[i])
        line[c].set_title(label, fontsize=7)
      for c in range(len(maps) + 1, columns):
        line[c].axis("off")
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


def save_line_plot(path: str, xlabel: str, ylabel: str, series: dict, *, logx=False) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  figure, ax = plt.subplots(figsize=(4.8, 3.4))
  for name, (xs, ys) in series.items():
    ax.plot(xs, ys, marker="o", label=name)
  if logx:
    ax.set_xscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


def _finite(value: float, cap: float) -> float:
  return cap if math.isinf(value) else value


# ------------------------------------------------------------------------------ main

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
           "seeded from --seed",
           "Laplace models at laplace_accounting='pure' report min(pure epsilon, PLD epsilon at "
           "delta); their pure (delta = 0) epsilon is in the tables"]
  return report.write_privacy_report(workdir, shown.releases(), randomness,
                                     not_covered=shown.not_covered(), notes=notes)


def train_and_evaluate(config: Config, workdir: str) -> dict:
  os.makedirs(workdir, exist_ok=True)
  randomness = randomness_lib.from_flag(config.reproducible_private_randomness, config.seed)
  _write(workdir, "config.json", json.dumps(randomness_lib.redact(dataclasses.asdict(config),
                                                                  randomness),
                                            indent=2, default=str))
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

  def run(name, **kwargs):
    cfg = classifier_config(config, train_size=train_size, **kwargs)
    result = train_one(name, cfg, dataset, workdir)
    shown.add(name, result)
    return result

  # Per-epsilon tables (study Tables 1-2, Fig. 3) and grid maps.
  trained, grid_maps = {}, {"Gaussian": {}, "Laplace": {}}
  for mechanism in ("gaussian", "laplace"):
    rows = {}
    for epsilon in config.epsilons:
      name = f"{mechanism}_eps{_label(epsilon)}" if not math.isinf(epsilon) else "nonprivate"
      result = trained.get(name) or run(name, epsilon=epsilon, mechanism=mechanism)
      trained[name] = result
      explained = explain(config, result, explain_images)
      rows[_label(epsilon)] = metrics_row(result, explained)
      grid_maps[mechanism.capitalize()][f"eps={_label(epsilon)}"] = (
          explain(config, result, grid_images)["gradcam_maps"])
      shown.show(name, f"table_{mechanism}.md", "gradcam_grid.png", "accuracy.png")
    results["tables"][mechanism] = rows
    _write(workdir, f"table_{mechanism}.md", epsilon_table(rows))
  save_grid(os.path.join(workdir, "gradcam_grid.png"), grid_images, grid_maps)
  cap = 2 * max(e for e in config.epsilons if not math.isinf(e)) if any(
      not math.isinf(e) for e in config.epsilons) else 1.0
  save_line_plot(os.path.join(workdir, "accuracy.png"), "epsilon (inf plotted at 2x max)",
                 "test accuracy %",
                 {m: ([_finite(e, cap) for e in config.epsilons],
                      [results["tables"][m][_label(e)]["test_accuracy"] for e in config.epsilons])
                  for m in ("gaussian", "laplace")}, logx=True)

  # Clip-norm sweep at epsilon 1 (study Fig. 6b).
  sweep = {}
  for clip in config.clip_norms:
    name = f"gaussian_eps{_label(config.clip_sweep_epsilon)}"
    if clip != config.clip_norm or name not in trained:  # the main sweep's model when S matches
      name = f"{name}_clip{clip:g}"
      trained[name] = run(name, epsilon=config.clip_sweep_epsilon, clip_norm=clip)
    result = trained[name]
    sweep[f"{clip:g}"] = metrics_row(result, explain(config, result, explain_images))
    shown.show(name, "clip_sweep.md", "clip_sweep.png")
  results["tables"]["clip_sweep"] = sweep
  _write(workdir, "clip_sweep.md", _markdown(
      ["clip norm S", "test accuracy %", "Grad-CAM masked score %", "Grad-CAM average drop %"],
      [[s, r["test_accuracy"], r["gradcam_masked_score"], r["gradcam_average_drop"]]
       for s, r in sweep.items()]))
  save_line_plot(os.path.join(workdir, "clip_sweep.png"), "clip norm S", "%",
                 {"test accuracy": ([float(s) for s in sweep],
                                    [r["test_accuracy"] for r in sweep.values()]),
                  "masked-input score": ([float(s) for s in sweep],
                                         [r["gradcam_masked_score"] for r in sweep.values()])},
                 logx=True)

  # Global DP (DP-SGD, Gaussian) beside local DP (Laplace-perturbed training images).
  local, ldp_maps = {}, {}
  num_pixels = int(np.prod(dataset.image_shape))
  for epsilon in config.ldp_epsilons:
    name = f"ldp_eps{_label(epsilon)}"
    result = run(name, ldp_scale=1.0 / epsilon)
    local[_label(epsilon)] = metrics_row(
        result, explain(config, result, explain_images),
        {"per_image_epsilon": epsilon * num_pixels, "per_label_epsilon": result.ldp.per_label})
    ldp_maps[f"pixel eps={_label(epsilon)}"] = explain(config, result, grid_images)["gradcam_maps"]
    shown.show(name, "global_vs_local.md", "ldp_grid.png")
  ldp_maps["non-private"] = grid_maps["Gaussian"].get("eps=inf", explain(
      config, trained.get("nonprivate") or run("nonprivate"), grid_images)["gradcam_maps"])
  shown.show("nonprivate", "ldp_grid.png")
  for label in results["tables"]["gaussian"]:
    shown.show("nonprivate" if label == "inf" else f"gaussian_eps{label}", "global_vs_local.md")
  save_grid(os.path.join(workdir, "ldp_grid.png"), grid_images, {"local DP": ldp_maps})
  results["tables"]["local_dp"] = local
  side = [["global (DP-SGD Gaussian)", f"{e} per image", r["test_accuracy"],
           r["gradcam_average_drop"], r["gradcam_increase_in_confidence"],
           r["gradcam_masked_score"]] for e, r in results["tables"]["gaussian"].items()]
  side += [["local (Laplace pixels" + (", labels in clear)" if r["per_label_epsilon"] is None
                                      else f", labels RR eps {r['per_label_epsilon']:g})"),
            f"{e} per pixel ({r['per_image_epsilon']:g} per image)",
            r["test_accuracy"], r["gradcam_average_drop"], r["gradcam_increase_in_confidence"],
            r["gradcam_masked_score"]] for e, r in local.items()]
  _write(workdir, "global_vs_local.md", _markdown(
      ["setting", "epsilon", "test accuracy %", "average drop %", "increase in confidence %",
       "masked score %"], side))

  # Robustness and certificates on DP and non-DP models.
  robust_images = dataset.test_images[:config.num_robust]
  robust = {}
  for epsilon in config.robust_epsilons:
    name = "nonprivate" if math.isinf(epsilon) else f"gaussian_eps{_label(epsilon)}"
    result = trained.get(name) or run(name, epsilon=epsilon)
    logging.info("robustness and certificates: %s", name)
    robust[name] = robustness(config, result, robust_images, jax.random.fold_in(key, 7))
    shown.show(name, "robustness.md", "certified.md", "certified_fraction.png")
  results["robustness"] = robust
  table = []
  for name, r in robust.items():
    for row_name, v in r["table"].items():
      method, attack = row_name.split("/")
      table.append([name, method, attack, v["topk_intersection"], v["cosine"], v["cosine_min"]])
  _write(workdir, "robustness.md", _markdown(
      ["model", "attribution", "perturbation (l2 = %g)" % config.attack_radius,
       "top-k intersection", "cosine", "min cosine"], table))
  cert_rows = []
  for name, r in robust.items():
    for bound in ("rdp", "rdp_exact", "gaussian"):
      cert_rows.append([name, bound] + list(r["certified_fraction"][bound]))
  _write(workdir, "certified.md", _markdown(
      ["model", "bound"] + [f"L={x:g}" for x in config.certify_radii], cert_rows) +
      "\nrdp, gaussian: Clopper-Pearson (confidence %g, Bonferroni); rdp_exact: Monte Carlo "
      "estimates taken as exact.\n" % config.confidence +
      "\nmedian certified radius at fraction %g: " % config.certify_fraction +
      ", ".join(f"{n} rdp {np.median(r['certified_radius_rdp']):.4f} / gaussian "
                f"{np.median(r['certified_radius_gaussian']):.4f}" for n, r in robust.items())
      + "\n")
  save_line_plot(os.path.join(workdir, "certified_fraction.png"), "l2 radius L",
                 "certified top-k fraction",
                 {f"{n} {b}": (list(config.certify_radii), r["certified_fraction"][b])
                  for n, r in robust.items() for b in ("rdp", "rdp_exact", "gaussian")})
  cost_name = "nonprivate" if "nonprivate" in trained else next(iter(trained))
  cost_model = trained[cost_name]
  shown.show(cost_name, "cost.md")
  cost = cost_vs_samples(config, cost_model, robust_images[0], jax.random.fold_in(key, 11))
  results["cost"] = cost
  _write(workdir, "cost.md", _markdown(
      ["T", "sampling s/image", "certify s/image", "certified radius (rdp)"],
      [[c["T"], c["sampling_seconds"], c["certify_seconds"], c["certified_radius"]]
       for c in cost]))
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2, default=_json_default)
  results["privacy_report"] = write_privacy_report(config, workdir, shown)
  return results


def _json_default(value):
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  return str(value)


# ------------------------------------------------------------------------------ CLI

def _define_flags():
  flags.DEFINE_string("workdir", None, "Output directory (models are reused from it).")
  flags.DEFINE_enum("preset", "quick", sorted(PRESETS), "Configuration preset.")
  flags.DEFINE_string("data_dir", None, "Data directory (default: dpjax default_data_dir).")
  flags.DEFINE_integer("seed", None, "Seed (default: the preset's).")
  flags.DEFINE_float("epochs", None, "Training epochs per model.")
  flags.DEFINE_integer("num_samples", None, "T, noisy copies per smoothed map.")
  flags.DEFINE_float("smoothing_sigma", None, "Gaussian smoothing sigma (input units).")
  flags.DEFINE_string("dataset", None, "Dataset name (see dpjax.data.images).")
  flags.DEFINE_bool("reproducible_private_randomness", None,
                    "Derive batches and DP noise from --seed (to rerun bit for bit); the seed "
                    "then becomes a secret, kept in private/ and out of config.json.")
  flags.DEFINE_float("ldp_label_epsilon", None,
                     "Randomised response on the local-DP models' training labels (default: "
                     "labels in clear, listed as not covered).")
  devices.define_flags()


def main(argv):
  del argv
  values = flags.FLAGS
  if not values.workdir:
    raise app.UsageError("--workdir is required")
  try:
    devices.use_cpu_devices(values.cpu_devices)
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  overrides = {name: getattr(values, name) for name in
               ("seed", "epochs", "num_samples", "smoothing_sigma", "dataset", "data_parallel",
                "reproducible_private_randomness", "ldp_label_epsilon")
               if getattr(values, name) is not None}
  data_dir = values.data_dir or paths.default_data_dir()
  overrides["data_dir"] = str(data_dir) if data_dir else None  # None: the digits fallback
  try:
    config = dataclasses.replace(PRESETS[values.preset], **overrides)
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  results = train_and_evaluate(config, values.workdir)
  logging.info("tables written to %s", values.workdir)
  print(json.dumps(results["tables"]["gaussian"], indent=1, default=_json_default)[:2000])


if __name__ == "__main__":
  _define_flags()
  flags.mark_flag_as_required("workdir")
  app.run(main)
