"""DP image classifiers: one config, one function that trains and evaluates, resumable.

`train_classifier(ClassifierConfig(...))` loads an image dataset by name, optionally perturbs the
training records with local DP (Laplace noise on every pixel, randomised response on the label),
builds a model from the registry, and trains it with DP-SGD on `dpjax.engine` (secret Poisson
batches, clipping, noise, privacy ledger, checkpoints) or without privacy.

What is released and what stays private: test accuracy and loss (held-out data), epsilon, steps
and throughput are public (`ClassifierResult.to_dict`, `.history`). Everything measured on the
training data (training accuracy and loss, the batch loss, gradient norms, clipped fraction,
realised batch sizes) is a private diagnostic: `ClassifierResult.private`, written to
`<workdir>/private/diagnostics.json` beside the checkpoint, never to a released file.

Randomness: `config.seed` steers only public choices (initialisation, the data subset and split).
Batch selection, DP-SGD noise and local-DP noise come from `dpjax.randomness` (the OS CSPRNG by
default); `reproducible_private_randomness=True` derives them from the seed instead, which then
becomes a secret.

The per-example loss is softmax cross-entropy of `model.apply(params, x[None])[0]`, the
convention of `dpjax.clipping` (one example, no batch axis).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from dpjax import accounting
from dpjax import augment
from dpjax import clipping
from dpjax import ema
from dpjax import engine
from dpjax import randomness as randomness_lib
from dpjax import report
from dpjax import sampling
from dpjax import train
from dpjax import user_level
from dpjax.data import images as images_lib
from dpjax.models import registry
from experiments.classify import ldp
from experiments.common import outputs

PyTree = Any

OPTIMIZERS = ("sgd", "momentum", "adam")
MECHANISMS = ("gaussian", "laplace")
PER_EXAMPLE_METHODS = ("vmap", "ghost", "auto")
ACCOUNTANTS = ("auto", "rdp", "pld")


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  """Everything that defines one classifier run (saved as the run's config).

  Length: `steps` if set, else `epochs` passes of the expected batch size over the training set.
  Privacy: `private=False` trains without clipping or noise (epsilon inf). Otherwise the noise is
  `noise_multiplier`, or calibrated to `target_epsilon` at `delta` for the run's length
  (`target_epsilon=inf` means non-private). `mechanism="gaussian"` clips in L2 ((eps, delta)-DP
  by the RDP accountant), "laplace" clips in L1 (pure DP per step; PLD accountant for epsilon at
  delta, and the pure epsilon is reported too). `max_epsilon` keeps the noise and stops training
  before a step would spend more. `ldp_scale > 0` adds Laplace noise of that scale
  to every training pixel once, before training (local DP; test images stay clean);
  `ldp_label_epsilon` then also applies k-ary randomised response to the training labels (None:
  labels in clear, which the privacy report lists as not covered).

  `seed` steers the public choices only (initialisation, data subset and split). With
  `reproducible_private_randomness` it also derives the batches and all noise, and is then a
  secret (kept out of released files).
  """
  model: str = "cnn"
  dataset: str = "digits"
  data_dir: str | None = None
  model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  init_weights: str | None = None  # local weights file (fine-tuning); nothing is downloaded
  keep_init: tuple[str, ...] = ("head",)  # parameters not taken from init_weights
  epochs: float = 2.0
  steps: int | None = None
  batch_size: int = 64
  learning_rate: float = 0.1
  decay_steps: int = 0  # > 0: learning_rate * decay_rate ** (step / decay_steps)
  decay_rate: float = 1.0
  optimizer: str = "sgd"
  momentum: float = 0.9
  clip_norm: float = 1.0
  noise_multiplier: float | None = 1.0
  target_epsilon: float | None = None
  max_epsilon: float | None = None  # stop before a step would take epsilon past this budget
  delta: float = 1e-5
  mechanism: str = "gaussian"
  accountant: str = "auto"  # rdp for gaussian, pld for laplace
  sampling: str = "poisson"
  ldp_scale: float = 0.0
  ldp_clip: bool = False  # clip perturbed pixels back to [0, 1] (post-processing)
  ldp_label_epsilon: float | None = None  # randomised response on labels; None: labels in clear
  private: bool = True
  seed: int = 0
  reproducible_private_randomness: bool = False  # opt-in: private draws from `seed` (then secret)
  eval_every: int = 0  # steps between evaluations; 0: once per epoch
  eval_batch_size: int = 512
  train_eval_size: int | None = 10_000  # private train accuracy on at most this many examples
  log_every: int = 50
  checkpoint_every: int = 0  # 0: once per epoch
  max_per_class: int | None = None
  resize: int | None = None
  microbatch_size: int | None = None
  per_example: str = "auto"  # ghost norms where the model allows (tested equal to vmap)
  data_parallel: bool = False  # shard batches over all local devices (on CPU: dpjax.devices)
  # Loss weight per class (e.g. inverse class frequencies from a noisy histogram or a public
  # prior); applied to each example's loss before clipping, so the clipping bound is unchanged.
  class_weights: tuple[float, ...] | None = None
  # > 0: privacy per person (dpjax.user_level): Poisson over the persons named by the data
  # (Kermany file names, an npz train_ids), at most this many records per person per step, the
  # mean of a person's gradients clipped once; epsilon is per person. 0: per record.
  records_per_person: int = 0
  # Augmentation multiplicity (De et al. 2022; dpjax.augment): > 0: each example's gradient is the
  # mean over this many augmented copies (random crop after padding by augment_crop_pad pixels,
  # reflect or zero; flip only with augment_flip), averaged before clipping, so the sensitivity
  # is unchanged. Per-example gradients then come from vmap, not ghost norms. Flip is off by
  # default: many medical images are not mirror-invariant (a flipped chest X-ray has its heart on
  # the right), nor are digits. 0: no augmentation.
  augmult: int = 0
  augment_crop_pad: int = 4
  augment_pad: str = "reflect"
  augment_flip: bool = False
  # > 0: evaluate and release an exponential moving average of the DP iterates with this decay
  # (De et al.'s warm-up min(decay, (1 + t) / (10 + t))), post-processing: no privacy cost.
  ema_decay: float = 0.0

  def __post_init__(self):
    _check_choice("optimizer", self.optimizer, OPTIMIZERS)
    _check_choice("mechanism", self.mechanism, MECHANISMS)
    _check_choice("per_example", self.per_example, PER_EXAMPLE_METHODS)
    _check_choice("accountant", self.accountant, ACCOUNTANTS)
    _check_choice("model", self.model, registry.model_names())
    for name in ("batch_size", "learning_rate", "clip_norm", "eval_batch_size"):
      if not getattr(self, name) > 0:
        _bad(name, getattr(self, name), "must be > 0.")
    if self.steps is None and not self.epochs > 0:
      _bad("epochs", self.epochs, "must be > 0 (or set --config.steps).")
    if self.steps is not None and self.steps < 1:
      _bad("steps", self.steps, "must be >= 1 (or leave it unset and give --config.epochs).")
    if self.noise_multiplier is not None and self.noise_multiplier < 0:
      _bad("noise_multiplier", self.noise_multiplier, "must be >= 0.")
    if self.target_epsilon is not None and not self.target_epsilon > 0:
      _bad("target_epsilon", self.target_epsilon, "must be > 0 (inf: non-private).")
    if self.max_epsilon is not None and not self.max_epsilon > 0:
      _bad("max_epsilon", self.max_epsilon, "must be > 0 (or unset: no budget stop).")
    if self.private and self.noise_multiplier is None and self.target_epsilon is None:
      raise ValueError("a private run needs --config.noise_multiplier or "
                       "--config.target_epsilon.")
    if self.ldp_scale < 0:
      _bad("ldp_scale", self.ldp_scale, "must be >= 0 (0: no local DP).")
    if self.ldp_label_epsilon is not None:
      if not self.ldp_scale > 0:
        _bad("ldp_label_epsilon", self.ldp_label_epsilon, "needs local DP on the images too: "
             "set --config.ldp_scale > 0 (or drop ldp_label_epsilon).")
      if not 0 <= self.ldp_label_epsilon < math.inf:
        _bad("ldp_label_epsilon", self.ldp_label_epsilon, "must be finite and >= 0 (unset: "
             "labels in clear, reported as not covered).")
    if self.decay_steps < 0:
      _bad("decay_steps", self.decay_steps, "must be >= 0 (0: no decay).")
    if not 0 < self.decay_rate <= 1:
      _bad("decay_rate", self.decay_rate, "must be in (0, 1].")
    if not 0 < self.delta < 1:
      _bad("delta", self.delta, "must be in (0, 1), e.g. 1e-5 (below 1 / training-set size).")
    if self.class_weights is not None and (not self.class_weights
                                           or min(self.class_weights) < 0):
      _bad("class_weights", self.class_weights, "needs one weight >= 0 per class (or None).")
    if self.records_per_person < 0:
      _bad("records_per_person", self.records_per_person, "must be >= 0 (0: per-record DP).")
    if self.augmult < 0:
      _bad("augmult", self.augmult, "must be >= 0 (0: no augmentation multiplicity).")
    if self.augment_crop_pad < 0:
      _bad("augment_crop_pad", self.augment_crop_pad, "must be >= 0 (0: no random crop).")
    _check_choice("augment_pad", self.augment_pad, augment.PAD_MODES)
    if self.augmult and not (self.augment_crop_pad or self.augment_flip):
      _bad("augmult", self.augmult, "averages copies of an identity augmentation: set "
           "augment_crop_pad > 0 or augment_flip=True (or augmult=0).")
    if self.augmult and self.records_per_person:
      _bad("augmult", self.augmult, "is not supported with per-person privacy "
           "(records_per_person > 0): set one of them to 0.")
    if not 0 <= self.ema_decay < 1:
      _bad("ema_decay", self.ema_decay, "must be in [0, 1), e.g. 0.999 (0: no EMA).")
    if self.records_per_person and (self.ldp_scale > 0 or self.sampling != "poisson"):
      _bad("records_per_person", self.records_per_person, "per-person DP runs DP-SGD with "
           "Poisson sampling: set ldp_scale=0 and sampling='poisson' (or records_per_person=0).")

  @property
  def is_private(self) -> bool:
    return self.private and not (self.target_epsilon is not None and math.isinf(self.target_epsilon))

  @property
  def resolved_accountant(self) -> str:
    if self.accountant != "auto":
      return self.accountant
    return "pld" if self.mechanism == "laplace" else "rdp"

  def to_dict(self) -> dict:
    """Every field, the seed included: keep it private when it keys private randomness."""
    out = dataclasses.asdict(self)
    out["model_kwargs"] = dict(self.model_kwargs)
    out["keep_init"] = list(self.keep_init)
    return out

  def randomness(self) -> randomness_lib.PrivateRandomness:
    """The source of the run's secret randomness (OS CSPRNG unless opted into the seed)."""
    return randomness_lib.from_flag(self.reproducible_private_randomness, self.seed)

  def public_dict(self) -> dict:
    """`to_dict()` fit for a released file: the seed hidden when it keys private randomness."""
    return randomness_lib.redact(self.to_dict(), self.randomness())


def _bad(name: str, value, why: str):
  raise ValueError(f"--config.{name}={value!r} {why}")


def _check_choice(name: str, value, valid) -> None:
  if value not in valid:
    _bad(name, value, f"is unknown; valid: {', '.join(map(str, valid))}")


@dataclasses.dataclass
class ClassifierResult:
  """A trained classifier, how well it does on held-out data, and what its training cost.

  Everything but `private` may be released. `private` holds what was measured on the training
  data (training accuracy and loss, the batch statistics of every logged step): diagnostics for
  the person running the study, written under `<workdir>/private/` and never to a table.
  """
  params: PyTree
  model: nn.Module
  config: ClassifierConfig
  history: list[dict]  # public: step, epoch, epsilon, examples/s, test accuracy and loss
  test_accuracy: float
  test_loss: float
  epsilon: float  # (epsilon, delta)-DP of DP-SGD; inf without noise
  delta: float
  noise_multiplier: float  # 0 when non-private
  steps: int
  steps_per_epoch: int
  epochs: float
  examples_per_sec: float
  pure_epsilon: float | None = None  # delta = 0 bound of Laplace DP-SGD
  ldp: ldp.LdpEpsilon | None = None  # local DP of the training records (None: no LDP)
  dataset: images_lib.ImageDataset | None = None  # as trained on (LDP-perturbed if ldp)
  num_params: int = 0
  stopped_by_budget: bool = False
  train_seconds: float = 0.0
  ledger: accounting.PrivacyLedger | None = None
  clip_norm: float | None = None
  # With ema_decay > 0, `params` is the EMA (evaluated and released) and this is the last DP
  # iterate (also DP: for comparisons); None otherwise.
  last_iterate_params: PyTree = None
  private: dict = dataclasses.field(default_factory=dict)  # PRIVATE: training-data diagnostics

  def to_dict(self) -> dict:
    """The JSON-able public summary (no parameters, no data, nothing measured on training data)."""
    out = {
        "model": self.config.model, "dataset": self.config.dataset,
        "test_accuracy": self.test_accuracy, "test_loss": self.test_loss,
        "epsilon": self.epsilon, "delta": self.delta, "noise_multiplier": self.noise_multiplier,
        "mechanism": self.config.mechanism if self.config.is_private else "none",
        "pure_epsilon": self.pure_epsilon, "steps": self.steps,
        "steps_per_epoch": self.steps_per_epoch, "epochs": self.epochs,
        "examples_per_sec": self.examples_per_sec, "num_params": self.num_params,
        "stopped_by_budget": self.stopped_by_budget, "train_seconds": self.train_seconds,
        "ldp_scale": self.config.ldp_scale,
        "ldp_epsilon_per_pixel": self.ldp.per_pixel if self.ldp else None,
        "ldp_epsilon_per_image": self.ldp.per_image if self.ldp else None,
        "ldp_epsilon_per_label": self.ldp.per_label if self.ldp else None,
        "ldp_labels": None if not self.ldp else (
            "randomised response" if self.ldp.labels_covered else "in clear (not covered)"),
        "released_params": (f"EMA of the DP iterates (decay {self.config.ema_decay:g})"
                            if self.config.ema_decay else "last DP iterate"),
        "augmult": self.config.augmult,
    }
    return outputs.json_safe(out)

  def release(self, name: str, files: list[str]) -> dict:
    """The privacy-report entry of outputs of this run (`files`): DP-SGD, local DP or none."""
    return privacy_release(name, files, self.config, self.ledger, self.ldp, self.clip_norm)

  def not_covered(self) -> list[str]:
    """What of this run the guarantee does not cover (for the privacy report)."""
    items = list(self.ldp.not_covered) if self.ldp else []
    if self.config.init_weights:
      items.append(f"the initial weights ({self.config.init_weights}) are assumed public: "
                   "not trained on the private data")
    return items


def privacy_release(name: str, files: list[str], config: ClassifierConfig,
                    ledger: accounting.PrivacyLedger | None, ldp_epsilon: ldp.LdpEpsilon | None,
                    clip_norm: float | None = None) -> dict:
  """The report entry of a classifier run.

  DP-SGD runs are covered by their ledger. A non-private run on local-DP data is covered by the
  local-DP guarantee of its training records (the model is post-processing of them): per image,
  plus the label's epsilon when labels went through randomised response. A non-private run on
  clean data releases with epsilon inf.
  """
  local = None
  if ldp_epsilon is not None:
    local = {"epsilon_per_pixel": ldp_epsilon.per_pixel, "epsilon_per_image": ldp_epsilon.per_image,
             "epsilon_per_label": ldp_epsilon.per_label, "laplace_scale": config.ldp_scale,
             "labels": ("randomised response" if ldp_epsilon.labels_covered
                        else "in clear: NOT covered (per-record epsilon inf)")}
  if ledger is not None and (config.is_private or ldp_epsilon is None):
    entry = report.release_from_ledger(name, files, ledger, config.delta,
                                       config.resolved_accountant, clip_norm=clip_norm)
    if local:
      entry["local_dp"] = local
    return entry
  if ldp_epsilon is None:  # resumed from a file without a ledger: nothing to account
    return report.release(name, files, epsilon=math.inf, delta=config.delta,
                          mechanism="none (non-private)")
  covered = ldp_epsilon.labels_covered
  return report.release(
      name, files, epsilon=ldp_epsilon.per_record if covered else ldp_epsilon.per_image,
      delta=0.0, unit="training record (image, label)" if covered else "training image (pixels)",
      mechanism="local DP Laplace per pixel" + (
          " + randomised response on the label" if covered else " (labels in clear)"),
      **local)


# ------------------------------------------------------------------------------ loss, evaluation


def example_loss(model: nn.Module, class_weights: tuple[float, ...] | None = None):
  """`loss(params, example) -> scalar` for one {"image", "label"} example (no batch axis),
  times `class_weights[label]` when given."""
  weights = None if class_weights is None else jnp.asarray(class_weights, jnp.float32)

  def loss_fn(params, example):
    logits = model.apply({"params": params}, example["image"][None])[0]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, example["label"])
    return loss if weights is None else weights[example["label"]] * loss
  return loss_fn


@functools.partial(jax.jit, static_argnums=0)
def _logits(model: nn.Module, params, images):
  return model.apply({"params": params}, images)


@functools.partial(jax.jit, static_argnums=0)
def _eval_batch(model: nn.Module, params, images, labels, mask):
  logits = model.apply({"params": params}, images)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = jnp.argmax(logits, axis=-1) == labels
  return (jnp.sum(jnp.where(mask, correct, False).astype(jnp.float32)),
          jnp.sum(jnp.where(mask, losses, 0.0)))


def _padded_chunks(num: int, batch_size: int, multiple_of: int = 1):
  """(start, length) of each chunk; every chunk is padded to one size so one compilation serves."""
  size = max(1, min(batch_size, num))
  size = -(-size // multiple_of) * multiple_of
  return size, [(start, min(size, num - start)) for start in range(0, num, size)]


def _batch_placement(params):
  """(devices, place): evaluation batches sharded over the devices `params` are replicated on.

  After data-parallel training the parameters live on every device of a mesh; without this each
  device would evaluate the whole batch (the same work twice on a CPU split in two).
  """
  sharding = getattr(jax.tree.leaves(params)[0], "sharding", None)
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or mesh.devices.size < 2 or len(mesh.axis_names) != 1:
    return 1, lambda *arrays: arrays
  batch = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
  return mesh.devices.size, lambda *arrays: tuple(jax.device_put(a, batch) for a in arrays)


def _pad(array: np.ndarray, size: int) -> np.ndarray:
  return np.pad(array, [(0, size - len(array))] + [(0, 0)] * (array.ndim - 1))


def predict_logits(model: nn.Module, params, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
  """Logits (N, num_classes) of `images` (NHWC in [0, 1]), in padded batches of `batch_size`."""
  images = np.asarray(images, np.float32)
  devices, place = _batch_placement(params)
  size, chunks = _padded_chunks(len(images), batch_size, devices)
  parts = [np.asarray(_logits(model, params, *place(_pad(images[s:s + n], size))))[:n]
           for s, n in chunks]
  return np.concatenate(parts) if parts else np.zeros((0, model.num_classes), np.float32)


def evaluate(model: nn.Module, params, images: np.ndarray, labels: np.ndarray,
             batch_size: int = 512) -> dict:
  """{"accuracy", "loss"} (mean cross-entropy) of the model on a labelled set."""
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels, np.int32)
  if len(images) != len(labels) or len(images) == 0:
    raise ValueError(f"evaluate needs as many labels as images, and at least one: got "
                     f"{len(images)} images, {len(labels)} labels.")
  devices, place = _batch_placement(params)
  size, chunks = _padded_chunks(len(images), batch_size, devices)
  correct = loss = 0.0
  for start, n in chunks:
    mask = np.arange(size) < n
    c, l = _eval_batch(model, params, *place(_pad(images[start:start + n], size),
                                             _pad(labels[start:start + n], size), mask))
    correct += float(c)
    loss += float(l)
  return {"accuracy": correct / len(images), "loss": loss / len(images)}


# ------------------------------------------------------------------------------ training


def make_optimizer(config: ClassifierConfig) -> optax.GradientTransformation:
  """The configured optimizer, followed by the EMA of the parameters when ema_decay > 0."""
  learning_rate = config.learning_rate
  if config.decay_steps:
    learning_rate = optax.exponential_decay(config.learning_rate, config.decay_steps,
                                            config.decay_rate)
  if config.optimizer == "sgd":
    optimizer = optax.sgd(learning_rate)
  elif config.optimizer == "momentum":
    optimizer = optax.sgd(learning_rate, momentum=config.momentum)
  else:
    optimizer = optax.adam(learning_rate)
  return ema.with_ema(optimizer, config.ema_decay)


def make_augmult(config: ClassifierConfig) -> augment.Multiplicity | None:
  """The augmentation multiplicity of the run's steps (None when augmult=0)."""
  if not config.augmult:
    return None
  return augment.Multiplicity(config.augmult, augment.ImageAugmentation(
      crop_pad=config.augment_crop_pad, flip=config.augment_flip, pad_mode=config.augment_pad))


def load_dataset(config: ClassifierConfig) -> images_lib.ImageDataset:
  return images_lib.load_image_dataset(config.dataset, config.data_dir, resize=config.resize,
                                       max_per_class=config.max_per_class, seed=config.seed,
                                       person_ids=config.records_per_person > 0)


def _init_key(seed: int) -> jax.Array:
  """The initialisation key: a public choice, so it may come from the public seed."""
  return jax.random.PRNGKey(seed)


LDP_CACHE = "ldp_train.npz"


def _perturb(config: ClassifierConfig, dataset: images_lib.ImageDataset,
             randomness: randomness_lib.PrivateRandomness, stream: str):
  return ldp.perturb_dataset(randomness.key("ldp", stream), dataset, config.ldp_scale,
                             label_epsilon=config.ldp_label_epsilon, clip=config.ldp_clip)


def apply_local_dp(config: ClassifierConfig, dataset: images_lib.ImageDataset, *,
                   randomness: randomness_lib.PrivateRandomness | None = None,
                   stream: str = "model", workdir: str | None = None):
  """The dataset with its training records perturbed by local DP, and the LDP epsilon (or None).

  The noise is secret (`randomness.key("ldp", stream)`). With `workdir` the perturbed training
  set is kept in `<workdir>/private/` and reused on resume: perturbing the same records twice
  with fresh noise would release two independent copies and double their epsilon.
  """
  if not config.ldp_scale:
    return dataset, None
  randomness = randomness or config.randomness()
  epsilon = ldp.ldp_epsilon(config.ldp_scale, num_pixels=int(np.prod(dataset.image_shape)),
                            label_epsilon=config.ldp_label_epsilon,
                            num_classes=dataset.num_classes)
  cache = os.path.join(report.private_dir(workdir), LDP_CACHE) if workdir else None
  if cache and os.path.exists(cache):
    with np.load(cache) as saved:
      perturbed = dataclasses.replace(dataset, train_images=saved["train_images"],
                                      train_labels=saved["train_labels"],
                                      name=str(saved["name"]))
    if perturbed.train_images.shape != dataset.train_images.shape:
      raise ValueError(f"{cache} holds {perturbed.train_images.shape} training images, the data "
                       f"has {dataset.train_images.shape}: the data changed; use a new workdir.")
    logging.info("local DP: reusing the perturbed training set of %s", cache)
  else:
    perturbed = _perturb(config, dataset, randomness, stream)
    if cache:
      tmp = cache + ".tmp.npz"
      np.savez(tmp, train_images=perturbed.train_images, train_labels=perturbed.train_labels,
               name=perturbed.name)
      os.replace(tmp, cache)
  logging.info("local DP on the training records: %s", epsilon.describe())
  return perturbed, epsilon


def resolve_noise_multiplier(config: ClassifierConfig, sampler: sampling.BatchSampler,
                             num_steps: int) -> float:
  """The noise multiplier of a private run: given, or calibrated to `target_epsilon`."""
  if config.target_epsilon is None:
    return float(config.noise_multiplier)
  phase = sampler.privacy_phase(1.0, config.mechanism).with_steps(num_steps)
  sigma = accounting.calibrate_noise_multiplier(config.target_epsilon, config.delta, phase,
                                                config.resolved_accountant)
  logging.info("noise multiplier %.4f gives epsilon <= %g at delta=%g after %d steps",
               sigma, config.target_epsilon, config.delta, num_steps)
  return sigma


def _clipping_config(config: ClassifierConfig) -> clipping.ClippingConfig:
  clip = clipping.ClippingConfig(
      clip_norm=config.clip_norm, norm="l1" if config.mechanism == "laplace" else "l2",
      microbatch_size=config.microbatch_size, method=config.per_example)
  return user_level.clipping_config(clip) if config.records_per_person else clip


def initial_params(config: ClassifierConfig, model: nn.Module, image_shape) -> PyTree:
  params = registry.init_params(model, _init_key(config.seed), image_shape)
  if config.init_weights:
    params = registry.load_params(config.init_weights, params, keep_from_like=config.keep_init)
    logging.info("initialised from %s (kept fresh: %s)", config.init_weights, config.keep_init)
  return params


def make_sampler(config: ClassifierConfig, train_size: int,
                 train_ids: np.ndarray | None = None) -> sampling.BatchSampler:
  """The run's batch sampler (no seed: the engine draws the batches from secret randomness);
  with `records_per_person`, over the persons of `train_ids`."""
  if config.records_per_person:
    persons = len(np.unique(train_ids))
    return user_level.PersonSampler(
        train_ids, min(config.batch_size, persons), config.records_per_person,
        multiple_of=jax.local_device_count() if config.data_parallel else 1)
  return sampling.BatchSampler(train_size, min(config.batch_size, train_size), config.sampling,
                               multiple_of=jax.local_device_count() if config.data_parallel else 1)


def num_steps(config: ClassifierConfig, sampler: sampling.BatchSampler) -> int:
  """`steps`, else `epochs` passes by the one rule of `sampling.steps_for_epochs`."""
  return config.steps if config.steps is not None else sampler.steps_for_epochs(config.epochs)


def _test_eval_fn(config, model, dataset):
  """Test accuracy and loss: held-out data only, so what it returns may be released."""
  def eval_fn(params) -> dict:
    start = time.perf_counter()
    metrics = evaluate(model, params, dataset.test_images, dataset.test_labels,
                       config.eval_batch_size)
    return {"test_accuracy": metrics["accuracy"], "test_loss": metrics["loss"],
            "eval_seconds": time.perf_counter() - start}
  return eval_fn


def _train_eval_fn(config, model, dataset):
  """Accuracy and loss on (a fixed subset of) the training set as trained on: PRIVATE."""
  images, labels = dataset.train_images, dataset.train_labels
  if config.train_eval_size and len(labels) > config.train_eval_size:
    subset = np.sort(np.random.default_rng(config.seed).choice(len(labels), config.train_eval_size,
                                                               replace=False))
    images, labels = images[subset], labels[subset]

  def eval_fn(params) -> dict:
    metrics = evaluate(model, params, images, labels, config.eval_batch_size)
    return {"train_accuracy": metrics["accuracy"], "train_loss": metrics["loss"]}
  return eval_fn


def _with_private_side(public_fn, private_fn, private_log: list):
  """The engine's eval_fn: returns the public metrics, records the private ones beside them.

  The engine releases whatever its eval_fn returns, so the training-set metrics go to
  `private_log` (in call order, one per evaluation) instead.
  """
  def eval_fn(params) -> dict:
    private_log.append(private_fn(params))
    return public_fn(params)
  return eval_fn


DIAGNOSTICS = "diagnostics.json"


def write_private(workdir: str, result: ClassifierResult) -> str:
  """`<workdir>/private/diagnostics.json`: the run's training-data diagnostics."""
  return outputs.write_json(os.path.join(report.private_dir(workdir), DIAGNOSTICS),
                            result.private, indent=1)


def train_classifier(config: ClassifierConfig, workdir: str | None = None,
                     dataset: images_lib.ImageDataset | None = None, *,
                     randomness: randomness_lib.PrivateRandomness | None = None,
                     stream: str = "model") -> ClassifierResult:
  """Trains and evaluates the configured classifier; resumes from `workdir`'s checkpoint.

  `dataset` (already loaded) skips loading `config.dataset`. `randomness` (default:
  `config.randomness()`) is the source of the batches, the DP-SGD noise and the local-DP noise,
  drawn under the name `stream`: give each run of a sweep its own. With `workdir`, the public
  progress goes to `workdir/progress.jsonl`; the checkpoint (parameters, optimizer, secret noise
  key, privacy ledger), the batch metrics and the training-data diagnostics go to
  `workdir/private/`, so a run killed at any point continues with its epsilon intact.
  """
  randomness = randomness or config.randomness()
  if dataset is None:
    dataset = load_dataset(config)
  logging.info("data: %s", dataset.summary())
  if workdir:
    report.save_secret_seed(workdir, randomness)
  dataset, ldp_epsilon = apply_local_dp(config, dataset, randomness=randomness, stream=stream,
                                        workdir=workdir)

  if config.class_weights is not None and len(config.class_weights) != dataset.num_classes:
    _bad("class_weights", config.class_weights, f"needs {dataset.num_classes} weights, one "
         f"per class of {dataset.name}.")
  model = registry.build_model(config.model, dataset.num_classes, **dict(config.model_kwargs))
  params = initial_params(config, model, dataset.image_shape)
  num_params = registry.count_params(params)

  sampler = make_sampler(config, len(dataset.train_labels), dataset.train_ids)
  steps_per_epoch = sampler.steps_per_epoch
  total_steps = num_steps(config, sampler)

  dp = None
  noise_multiplier = 0.0
  if config.is_private:
    noise_multiplier = resolve_noise_multiplier(config, sampler, total_steps)
    dp = train.DPConfig(clipping=_clipping_config(config), noise_multiplier=noise_multiplier,
                        expected_batch_size=sampler.expected_batch_size)
  logging.info("%s: %d parameters; %d steps (%d per epoch), batch %d, %s", config.model,
               num_params, total_steps, steps_per_epoch, config.batch_size,
               f"DP-SGD {config.mechanism} clip {config.clip_norm} noise {noise_multiplier:.4g}"
               if dp else "non-private")

  loop = engine.LoopConfig(
      num_steps=total_steps, delta=config.delta, accountant=config.resolved_accountant,
      max_epsilon=config.max_epsilon, workdir=workdir,
      checkpoint_every=config.checkpoint_every or steps_per_epoch,
      eval_every=config.eval_every or steps_per_epoch, log_every=config.log_every,
      data_parallel=config.data_parallel)
  data = {"image": dataset.train_images, "label": dataset.train_labels}
  run_config = {**config.to_dict(), "resolved_noise_multiplier": noise_multiplier}
  test_eval = _test_eval_fn(config, model, dataset)
  train_eval = _train_eval_fn(config, model, dataset)
  train_log: list[dict] = []
  start = time.perf_counter()
  loss_fn = example_loss(model, config.class_weights)
  if config.records_per_person:
    loss_fn = user_level.person_loss(loss_fn)
  result = engine.train(loss_fn, params, make_optimizer(config), data,
                        sampler=sampler, dp=dp, loop=loop, randomness=randomness, stream=stream,
                        eval_fn=_with_private_side(test_eval, train_eval, train_log),
                        run_config=run_config, augmult=make_augmult(config))
  seconds = time.perf_counter() - start

  history = [{**entry, "epoch": entry["step"] / steps_per_epoch} for entry in result.history]
  evaluated = [entry for entry in history if "test_accuracy" in entry]
  train_history = [{"step": e["step"], **m} for e, m in zip(evaluated, train_log)]
  steps_done = int(result.state.step)
  if evaluated and evaluated[-1]["step"] == steps_done:
    last, last_train = evaluated[-1], train_history[-1]
  else:  # resumed a finished run, or stopped by a budget: evaluate now
    last = test_eval(result.released_params)
    last_train = {"step": steps_done, **train_eval(result.released_params)}
  epsilon = result.ledger.epsilon(config.delta, config.resolved_accountant) if dp else math.inf
  pure = accounting.pure_epsilon(result.ledger.phases) if dp and config.mechanism == "laplace" else None
  rates = [entry["examples_per_sec"] for entry in history if "examples_per_sec" in entry]
  private = {"train_accuracy": last_train["train_accuracy"], "train_loss": last_train["train_loss"],
             "train_eval_history": train_history, "batch_history": result.private_history,
             "randomness": randomness.describe()}
  out = ClassifierResult(
      params=result.released_params, model=model, config=config, history=history,
      test_accuracy=last["test_accuracy"], test_loss=last["test_loss"], epsilon=epsilon,
      delta=config.delta, noise_multiplier=noise_multiplier, steps=steps_done,
      steps_per_epoch=steps_per_epoch, epochs=steps_done / steps_per_epoch,
      examples_per_sec=float(np.median(rates)) if rates else 0.0, pure_epsilon=pure,
      ldp=ldp_epsilon, dataset=dataset, num_params=num_params,
      stopped_by_budget=result.stopped_by_budget, train_seconds=seconds, ledger=result.ledger,
      clip_norm=result.clip_norm, private=private,
      last_iterate_params=result.state.params if config.ema_decay else None)
  if workdir:
    write_private(workdir, out)
  return out
