"""DP image classifiers: one config, one function that trains and evaluates, resumable.

`train_classifier(ClassifierConfig(...))` loads an image dataset by name, optionally perturbs the
training images with local-DP Laplace noise, builds a model from the registry, and trains it with
DP-SGD (`dpjax.train.train`: Poisson batches, clipping, noise, privacy ledger, checkpoints) or
without privacy. Train and test accuracy and loss are measured once per epoch by a jitted batched
evaluator and logged with epsilon spent so far, examples/s and the clipped fraction.

The per-example loss is softmax cross-entropy of `model.apply(params, x[None])[0]`, the
convention of `dpjax.clipping` (one example, no batch axis).
"""

from __future__ import annotations

import dataclasses
import functools
import math
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
from dpjax import clipping
from dpjax import ldp
from dpjax import sampling
from dpjax import train
from dpjax.data import images as images_lib
from dpjax.models import registry

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
  to every training pixel once, before training (local DP; test images stay clean).
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
  private: bool = True
  seed: int = 0
  eval_every: int = 0  # steps between evaluations; 0: once per epoch
  eval_batch_size: int = 512
  train_eval_size: int | None = 10_000  # train accuracy on at most this many training examples
  log_every: int = 50
  checkpoint_every: int = 0  # 0: once per epoch
  max_per_class: int | None = None
  resize: int | None = None
  microbatch_size: int | None = None
  per_example: str = "auto"  # ghost norms where the model allows (tested equal to vmap)
  data_parallel: bool = False  # shard batches over all local devices (on CPU: dpjax.devices)

  def __post_init__(self):
    _check_choice("optimizer", self.optimizer, OPTIMIZERS)
    _check_choice("mechanism", self.mechanism, MECHANISMS)
    _check_choice("per_example", self.per_example, PER_EXAMPLE_METHODS)
    _check_choice("accountant", self.accountant, ACCOUNTANTS)
    _check_choice("model", self.model, registry.model_names())
    for name in ("batch_size", "learning_rate", "clip_norm", "eval_batch_size"):
      if not getattr(self, name) > 0:
        raise ValueError(f"{name}={getattr(self, name)} must be > 0.")
    if self.steps is None and not self.epochs > 0:
      raise ValueError(f"epochs={self.epochs} must be > 0 (or set steps).")
    if self.steps is not None and self.steps < 1:
      raise ValueError(f"steps={self.steps} must be >= 1.")
    if self.noise_multiplier is not None and self.noise_multiplier < 0:
      raise ValueError(f"noise_multiplier={self.noise_multiplier} must be >= 0.")
    if self.target_epsilon is not None and not self.target_epsilon > 0:
      raise ValueError(f"target_epsilon={self.target_epsilon} must be > 0 (inf: non-private).")
    if self.max_epsilon is not None and not self.max_epsilon > 0:
      raise ValueError(f"max_epsilon={self.max_epsilon} must be > 0.")
    if self.private and self.noise_multiplier is None and self.target_epsilon is None:
      raise ValueError("a private run needs noise_multiplier or target_epsilon.")
    if self.ldp_scale < 0:
      raise ValueError(f"ldp_scale={self.ldp_scale} must be >= 0 (0: no local DP).")
    if self.decay_steps < 0 or not 0 < self.decay_rate <= 1:
      raise ValueError(f"decay_steps={self.decay_steps} must be >= 0 and decay_rate="
                       f"{self.decay_rate} in (0, 1].")
    accounting.check_delta(self.delta)

  @property
  def is_private(self) -> bool:
    return self.private and not (self.target_epsilon is not None and math.isinf(self.target_epsilon))

  @property
  def resolved_accountant(self) -> str:
    if self.accountant != "auto":
      return self.accountant
    return "pld" if self.mechanism == "laplace" else "rdp"

  def to_dict(self) -> dict:
    out = dataclasses.asdict(self)
    out["model_kwargs"] = dict(self.model_kwargs)
    out["keep_init"] = list(self.keep_init)
    return out


def _check_choice(name: str, value, valid) -> None:
  if value not in valid:
    raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(map(str, valid))}")


@dataclasses.dataclass
class ClassifierResult:
  """A trained classifier, how well it does, and what its training cost in privacy."""
  params: PyTree
  model: nn.Module
  config: ClassifierConfig
  history: list[dict]  # logged entries (every eval has train_/test_ accuracy and loss)
  train_accuracy: float
  test_accuracy: float
  train_loss: float
  test_loss: float
  epsilon: float  # (epsilon, delta)-DP of DP-SGD; inf without noise
  delta: float
  noise_multiplier: float  # 0 when non-private
  steps: int
  steps_per_epoch: int
  epochs: float
  examples_per_sec: float
  pure_epsilon: float | None = None  # delta = 0 bound of Laplace DP-SGD
  ldp: ldp.LdpEpsilon | None = None  # local DP of the training images (None: no LDP)
  dataset: images_lib.ImageDataset | None = None  # as trained on (LDP-perturbed if ldp)
  num_params: int = 0
  stopped_by_budget: bool = False
  train_seconds: float = 0.0

  def to_dict(self) -> dict:
    """The JSON-able summary (no parameters, no data)."""
    out = {
        "model": self.config.model, "dataset": self.config.dataset,
        "train_accuracy": self.train_accuracy, "test_accuracy": self.test_accuracy,
        "train_loss": self.train_loss, "test_loss": self.test_loss,
        "epsilon": self.epsilon, "delta": self.delta, "noise_multiplier": self.noise_multiplier,
        "mechanism": self.config.mechanism if self.config.is_private else "none",
        "pure_epsilon": self.pure_epsilon, "steps": self.steps,
        "steps_per_epoch": self.steps_per_epoch, "epochs": self.epochs,
        "examples_per_sec": self.examples_per_sec, "num_params": self.num_params,
        "stopped_by_budget": self.stopped_by_budget, "train_seconds": self.train_seconds,
        "ldp_scale": self.config.ldp_scale,
        "ldp_epsilon_per_pixel": self.ldp.per_pixel if self.ldp else None,
        "ldp_epsilon_per_image": self.ldp.per_image if self.ldp else None,
    }
    return {k: _json_number(v) for k, v in out.items()}


def _json_number(value):
  """inf/nan as strings ("inf"), since JSON has no such numbers."""
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


# ------------------------------------------------------------------------------ loss, evaluation


def example_loss(model: nn.Module):
  """`loss(params, example) -> scalar` for one {"image", "label"} example (no batch axis)."""
  def loss_fn(params, example):
    logits = model.apply({"params": params}, example["image"][None])[0]
    return optax.softmax_cross_entropy_with_integer_labels(logits, example["label"])
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
  learning_rate = config.learning_rate
  if config.decay_steps:
    learning_rate = optax.exponential_decay(config.learning_rate, config.decay_steps,
                                            config.decay_rate)
  if config.optimizer == "sgd":
    return optax.sgd(learning_rate)
  if config.optimizer == "momentum":
    return optax.sgd(learning_rate, momentum=config.momentum)
  return optax.adam(learning_rate)


def load_dataset(config: ClassifierConfig) -> images_lib.ImageDataset:
  return images_lib.load_image_dataset(config.dataset, config.data_dir, resize=config.resize,
                                       max_per_class=config.max_per_class, seed=config.seed)


def _keys(seed: int):
  """Independent keys for initialisation, DP-SGD noise and local-DP noise.

  Raw uint32 keys (`PRNGKey`), since the checkpoint stores the noise key as a plain array.
  """
  init_key, noise_key, ldp_key = jax.random.split(jax.random.PRNGKey(seed), 3)
  return init_key, noise_key, ldp_key


def apply_local_dp(config: ClassifierConfig, dataset: images_lib.ImageDataset):
  """The dataset with Laplace noise on its training images, and the LDP epsilon (or None)."""
  if not config.ldp_scale:
    return dataset, None
  _, _, ldp_key = _keys(config.seed)
  perturbed = ldp.perturb_dataset(ldp_key, dataset, config.ldp_scale, clip=config.ldp_clip)
  epsilon = ldp.ldp_epsilon(config.ldp_scale, num_pixels=int(np.prod(dataset.image_shape)))
  logging.info("local DP on the training images: %s", epsilon.describe())
  return perturbed, epsilon


def _num_steps(config: ClassifierConfig, steps_per_epoch: int) -> int:
  if config.steps is not None:
    return config.steps
  return max(1, round(config.epochs * steps_per_epoch))


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
  options = dict(clip_norm=config.clip_norm, norm="l1" if config.mechanism == "laplace" else "l2",
                 microbatch_size=config.microbatch_size)
  if config.per_example != "vmap":
    if "method" not in {f.name for f in dataclasses.fields(clipping.ClippingConfig)}:
      raise ValueError(f"per_example={config.per_example!r} needs dpjax.clipping with ghost "
                       "clipping (ClippingConfig.method); use per_example='vmap'.")
    options["method"] = config.per_example
  return clipping.ClippingConfig(**options)


def initial_params(config: ClassifierConfig, model: nn.Module, image_shape) -> PyTree:
  init_key, _, _ = _keys(config.seed)
  params = registry.init_params(model, init_key, image_shape)
  if config.init_weights:
    params = registry.load_params(config.init_weights, params, keep_from_like=config.keep_init)
    logging.info("initialised from %s (kept fresh: %s)", config.init_weights, config.keep_init)
  return params


def _eval_fn(config, model, dataset):
  """Train (a fixed subset, as trained on) and test accuracy and loss, as logged entries."""
  train_images, train_labels = dataset.train_images, dataset.train_labels
  if config.train_eval_size and len(train_labels) > config.train_eval_size:
    subset = np.random.default_rng(config.seed).choice(len(train_labels), config.train_eval_size,
                                                       replace=False)
    train_images, train_labels = train_images[np.sort(subset)], train_labels[np.sort(subset)]

  def eval_fn(params) -> dict:
    start = time.perf_counter()
    train_metrics = evaluate(model, params, train_images, train_labels, config.eval_batch_size)
    test_metrics = evaluate(model, params, dataset.test_images, dataset.test_labels,
                            config.eval_batch_size)
    return {"train_accuracy": train_metrics["accuracy"], "train_loss": train_metrics["loss"],
            "test_accuracy": test_metrics["accuracy"], "test_loss": test_metrics["loss"],
            "eval_seconds": time.perf_counter() - start}
  return eval_fn


def train_classifier(config: ClassifierConfig, workdir: str | None = None,
                     dataset: images_lib.ImageDataset | None = None) -> ClassifierResult:
  """Trains and evaluates the configured classifier; resumes from `workdir`'s checkpoint.

  `dataset` (already loaded) skips loading `config.dataset`. With `workdir`, metrics go to
  `workdir/metrics.jsonl` and the checkpoint holds parameters, optimizer, PRNG and the privacy
  ledger, so a run killed at any point continues with its epsilon intact. Same config and seed
  give the same result.
  """
  if dataset is None:
    dataset = load_dataset(config)
  logging.info("data: %s", dataset.summary())
  dataset, ldp_epsilon = apply_local_dp(config, dataset)

  model = registry.build_model(config.model, dataset.num_classes, **dict(config.model_kwargs))
  params = initial_params(config, model, dataset.image_shape)
  num_params = registry.count_params(params)

  train_size = len(dataset.train_labels)
  sampler = sampling.BatchSampler(train_size, min(config.batch_size, train_size), config.sampling,
                                  seed=config.seed,
                                  multiple_of=jax.local_device_count() if config.data_parallel else 1)
  steps_per_epoch = sampler.steps_per_epoch
  num_steps = _num_steps(config, steps_per_epoch)

  dp = None
  noise_multiplier = 0.0
  if config.is_private:
    noise_multiplier = resolve_noise_multiplier(config, sampler, num_steps)
    dp = train.DPConfig(clipping=_clipping_config(config), noise_multiplier=noise_multiplier,
                        expected_batch_size=sampler.expected_batch_size)
  logging.info("%s: %d parameters; %d steps (%d per epoch), batch %d, %s", config.model,
               num_params, num_steps, steps_per_epoch, config.batch_size,
               f"DP-SGD {config.mechanism} clip {config.clip_norm} noise {noise_multiplier:.4g}"
               if dp else "non-private")

  loop = train.LoopConfig(
      num_steps=num_steps, delta=config.delta, accountant=config.resolved_accountant,
      max_epsilon=config.max_epsilon, workdir=workdir,
      checkpoint_every=config.checkpoint_every or steps_per_epoch,
      eval_every=config.eval_every or steps_per_epoch, log_every=config.log_every,
      data_parallel=config.data_parallel)
  _, noise_key, _ = _keys(config.seed)
  data = {"image": dataset.train_images, "label": dataset.train_labels}
  run_config = {**config.to_dict(), "resolved_noise_multiplier": noise_multiplier}
  start = time.perf_counter()
  result = train.train(example_loss(model), params, make_optimizer(config), data,
                       sampler=sampler, dp=dp, loop=loop, noise_key=noise_key,
                       eval_fn=_eval_fn(config, model, dataset), run_config=run_config)
  seconds = time.perf_counter() - start

  history = [{**entry, "epoch": entry["step"] / steps_per_epoch} for entry in result.history]
  final = [entry for entry in history if "test_accuracy" in entry]
  if final and final[-1]["step"] == int(result.state.step):
    last = final[-1]
  else:  # resumed a finished run, or stopped by a budget: evaluate now
    last = {"step": int(result.state.step), **_eval_fn(config, model, dataset)(result.state.params)}
  epsilon = result.ledger.epsilon(config.delta, config.resolved_accountant) if dp else math.inf
  pure = accounting.pure_epsilon(result.ledger.phases) if dp and config.mechanism == "laplace" else None
  rates = [entry["examples_per_sec"] for entry in history if "examples_per_sec" in entry]
  steps_done = int(result.state.step)
  return ClassifierResult(
      params=result.state.params, model=model, config=config, history=history,
      train_accuracy=last["train_accuracy"], test_accuracy=last["test_accuracy"],
      train_loss=last["train_loss"], test_loss=last["test_loss"], epsilon=epsilon,
      delta=config.delta, noise_multiplier=noise_multiplier, steps=steps_done,
      steps_per_epoch=steps_per_epoch, epochs=steps_done / steps_per_epoch,
      examples_per_sec=float(np.median(rates)) if rates else 0.0, pure_epsilon=pure,
      ldp=ldp_epsilon, dataset=dataset, num_params=num_params,
      stopped_by_budget=result.stopped_by_budget, train_seconds=seconds)
