"""A small, fast DP-SGD run for reliability checks: kill and resume, privacy changes, budgets.

Trains softmax regression (or a small MLP) on scikit-learn's embedded digits (or an .npz file with
arrays `x` (N, features) and `y` (N,)) with `dpjax.engine.train`: Poisson batches, the privacy
ledger, atomic checkpoints and resume from the workdir.

Batches and noise come from the OS CSPRNG: a resumed run keeps its ledger (every step counted
once) but is not bit-identical to an uninterrupted one. `reproducible_private_randomness`
derives them from `seed` instead (then a secret: hidden in config.json, kept in
private/secret_seed.json), and a killed-and-resumed run then matches an uninterrupted one bit
for bit.

Released: `config.json`, `progress.jsonl` (step, epsilon, throughput), `results.json` (epsilon,
steps, the ledger, a SHA-256 of the final parameters), `params.npz` and
`privacy_report.{json,md}`. Private, under `private/`: the checkpoint (with the secret noise key),
`metrics.jsonl` (training loss, clipped fraction, gradient norms, batch sizes) and
`diagnostics.json` (final training accuracy and loss).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Mapping

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dpjax import accounting
from dpjax import clipping
from dpjax import engine
from dpjax import report
from dpjax import sampling
from dpjax import train
from dpjax.data import validate
from experiments.audit import digits
from experiments.common import configs
from experiments.common import outputs

MODELS = ("linear", "mlp")


@dataclasses.dataclass(frozen=True)
class Config(configs.PrivateRunSettings):
  """The run's settings; their values are in experiments/train_small/configs/default.py."""
  num_steps: int
  checkpoint_every: int
  noise_multiplier: float
  clip_norm: float
  batch_size: int
  learning_rate: float
  delta: float
  accountant: str
  max_epsilon: float | None
  allow_privacy_change: bool
  model: str
  data: str  # "digits" or an .npz path (relative paths are under data_dir)
  data_dir: str | None
  seed: int  # initialisation; also the secret of batches and noise with the flag below
  reproducible_private_randomness: bool
  sleep_per_step: float  # tests only: slows the loop so a kill lands mid-run

  def __post_init__(self):
    validate.check_positive(**configs.as_flags(
        num_steps=self.num_steps, checkpoint_every=self.checkpoint_every,
        clip_norm=self.clip_norm, batch_size=self.batch_size, learning_rate=self.learning_rate,
        max_epsilon=self.max_epsilon))
    validate.check_nonnegative(**configs.as_flags(noise_multiplier=self.noise_multiplier,
                                        sleep_per_step=self.sleep_per_step))
    if not 0 < self.delta < 1:
      raise ValueError(f"--config.delta={self.delta} must be in (0, 1).")
    validate.check_choice("config.model", self.model, MODELS)
    validate.check_choice("config.accountant", self.accountant, accounting.ACCOUNTANTS)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict | Mapping[str, Any]) -> Config:
    """The dataclass of a config file's ConfigDict; unknown or missing fields are refused."""
    return configs.settings_from(cls, config, require_all=True)



@dataclasses.dataclass(frozen=True)
class SlowSampler(sampling.BatchSampler):
  """A BatchSampler that sleeps before each batch; the batches themselves are unchanged."""
  sleep_per_step: float = 0.0

  def batch(self, step: int) -> sampling.Batch:
    time.sleep(self.sleep_per_step)
    return super().batch(step)


def load_data(config: Config) -> tuple[np.ndarray, np.ndarray]:
  if config.data == "digits":
    x, y = digits.digits_features()
  else:
    path = config.data
    if config.data_dir is not None:
      data_dir = os.path.expanduser(config.data_dir)
      if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--config.data_dir={config.data_dir} is not a directory (for a "
                                "relative --config.data); pass an existing folder.")
      path = os.path.join(data_dir, path)
    x, y = validate.load_npz_arrays(path)
  validate.check_classification_data(x, y, name=f"--config.data={config.data}")
  return x.astype(np.float32).reshape(len(x), -1), y.astype(np.int32)


def init_params(model: str, num_features: int, num_classes: int, key: jax.Array):
  if model == "linear":
    return {"w": jnp.zeros((num_features, num_classes)), "b": jnp.zeros(num_classes)}
  return digits.init_mlp(key, num_features, 32, num_classes)


def logits(params, x):
  if "w" in params:
    return x @ params["w"] + params["b"]
  return digits.mlp_logits(params, x)


def loss_fn(params, example):
  x, y = example
  return digits.cross_entropy(logits(params, x), y)


def params_digest(params) -> str:
  digest = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params)[0],
                           key=lambda item: jax.tree_util.keystr(item[0])):
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return digest.hexdigest()


DIAGNOSTICS = "diagnostics.json"
RELEASED = ("params.npz", "results.json", "progress.jsonl", "config.json")
NOT_COVERED = (
    "the number of training examples and classes, treated as public (they set the sampling rate "
    "and the model's shape)",
    "the default hyperparameters were not chosen by a DP procedure",
)


def train_and_evaluate(config: ml_collections.ConfigDict | Config, workdir: str) -> dict:
  """Trains (or resumes from `workdir`'s checkpoint) and writes the released and private files."""
  if not isinstance(config, Config):
    config = Config.from_config(config)
  x, y = load_data(config)
  num_classes = int(y.max()) + 1
  if config.batch_size > len(x):
    raise ValueError(f"--config.batch_size={config.batch_size} is larger than the dataset "
                     f"({len(x)} examples from --config.data={config.data}); lower it or add "
                     "data.")
  os.makedirs(workdir, exist_ok=True)
  randomness = config.randomness()
  outputs.write_json(os.path.join(workdir, "config.json"), config.public_dict())
  report.save_secret_seed(workdir, randomness)

  sampler = SlowSampler(len(x), config.batch_size, "poisson", sleep_per_step=config.sleep_per_step)
  dp = train.DPConfig(clipping.ClippingConfig(config.clip_norm), config.noise_multiplier,
                      sampler.expected_batch_size)
  loop = engine.LoopConfig(num_steps=config.num_steps, delta=config.delta,
                           accountant=config.accountant, max_epsilon=config.max_epsilon,
                           workdir=workdir, checkpoint_every=config.checkpoint_every,
                           log_every=config.checkpoint_every,
                           allow_privacy_change=config.allow_privacy_change)
  params = init_params(config.model, x.shape[1], num_classes, jax.random.PRNGKey(config.seed + 1))
  # No eval_fn: all the data trains, and what eval_fn returns is released.
  result = engine.train(loss_fn, params, optax.sgd(config.learning_rate, momentum=0.9), (x, y),
                        sampler=sampler, dp=dp, loop=loop, randomness=randomness,
                        run_config=dataclasses.asdict(config))
  final = jax.tree.map(np.asarray, result.state.params)
  np.savez(os.path.join(workdir, "params.npz"), **final)
  results = {
      "epsilon": result.epsilon(config.delta, config.accountant),
      "delta": config.delta,
      "steps": int(result.state.step),
      "stopped_by_budget": result.stopped_by_budget,
      "ledger": result.ledger.to_dict(),
      "params_sha256": params_digest(final),
  }
  outputs.write_json(os.path.join(workdir, "results.json"), results)
  outputs.write_json(os.path.join(report.private_dir(workdir), DIAGNOSTICS), {
      "train_accuracy": float(jnp.mean(jnp.argmax(logits(final, x), -1) == y)),
      "last_logged_step": result.private_history[-1] if result.private_history else None})
  release = result.release("trained parameters", list(RELEASED), config.delta, config.accountant)
  report.write_privacy_report(workdir, [release], randomness, not_covered=NOT_COVERED)
  if result.stopped_by_budget:
    logging.warning("stopped at step %d of %d: --config.max_epsilon=%g reached (epsilon=%.4f).",
                    results["steps"], config.num_steps, config.max_epsilon, results["epsilon"])
  logging.info("done: %s", json.dumps({k: v for k, v in results.items() if k != "ledger"}))
  return results
