"""A small, fast DP-SGD run for reliability checks: kill and resume, privacy changes, budgets.

  python -m experiments.train_small --workdir=/tmp/small --num_steps=200 --checkpoint_every=20

Trains softmax regression (or a small MLP) on scikit-learn's embedded digits (or an .npz file with
arrays `x` (N, features) and `y` (N,)) with `dpjax.engine.train`: Poisson batches, the privacy
ledger, atomic checkpoints and resume from `--workdir`.

Batches and noise come from the OS CSPRNG: a resumed run keeps its ledger (every step counted
once) but is not bit-identical to an uninterrupted one. `--reproducible_private_randomness`
derives them from `--seed` instead (then a secret: hidden in config.json, kept in
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
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax import accounting
from dpjax import audit
from dpjax import clipping
from dpjax import engine
from dpjax import randomness as randomness_lib
from dpjax import report
from dpjax import sampling
from dpjax import train
from dpjax.data import paths
from dpjax.data import validate

MODELS = ("linear", "mlp")


@dataclasses.dataclass(frozen=True)
class Config:
  num_steps: int = 200
  checkpoint_every: int = 20
  noise_multiplier: float = 1.0
  clip_norm: float = 1.0
  batch_size: int = 64
  learning_rate: float = 0.5
  delta: float = 1e-5
  accountant: str = "rdp"
  max_epsilon: float | None = None
  allow_privacy_change: bool = False
  model: str = "linear"
  data: str = "digits"  # "digits" or an .npz path (relative paths are under data_dir)
  data_dir: str | None = None
  seed: int = 0  # initialisation; also the secret of batches and noise with the flag below
  reproducible_private_randomness: bool = False
  sleep_per_step: float = 0.0  # tests only: slows the loop so a kill lands mid-run

  def validate(self) -> None:
    validate.check_positive(num_steps=self.num_steps, checkpoint_every=self.checkpoint_every,
                            clip_norm=self.clip_norm, batch_size=self.batch_size,
                            learning_rate=self.learning_rate, max_epsilon=self.max_epsilon)
    validate.check_nonnegative(noise_multiplier=self.noise_multiplier,
                               sleep_per_step=self.sleep_per_step)
    if not 0 < self.delta < 1:
      raise ValueError(f"--delta={self.delta} must be in (0, 1).")
    validate.check_choice("model", self.model, MODELS)
    validate.check_choice("accountant", self.accountant, accounting.ACCOUNTANTS)

  def randomness(self) -> randomness_lib.PrivateRandomness:
    return randomness_lib.from_flag(self.reproducible_private_randomness, self.seed)

  def public_dict(self) -> dict:
    """The config fit for the released config.json: the seed hidden when it keys the noise."""
    return randomness_lib.redact(dataclasses.asdict(self), self.randomness())


@dataclasses.dataclass(frozen=True)
class SlowSampler(sampling.BatchSampler):
  """A BatchSampler that sleeps before each batch; the batches themselves are unchanged."""
  sleep_per_step: float = 0.0

  def batch(self, step: int) -> sampling.Batch:
    time.sleep(self.sleep_per_step)
    return super().batch(step)


def load_data(config: Config) -> tuple[np.ndarray, np.ndarray]:
  if config.data == "digits":
    x, y = audit.digits_features()
  else:
    path = config.data
    if config.data_dir is not None:
      data_dir = paths.require_data_dir(config.data_dir, "train_small --data")
      path = os.path.join(data_dir, path)
    x, y = validate.load_npz_arrays(path)
  validate.check_classification_data(x, y, name=f"--data={config.data}")
  return x.astype(np.float32).reshape(len(x), -1), y.astype(np.int32)


def init_params(model: str, num_features: int, num_classes: int, key: jax.Array):
  if model == "linear":
    return {"w": jnp.zeros((num_features, num_classes)), "b": jnp.zeros(num_classes)}
  return audit.init_mlp(key, num_features, 32, num_classes)


def logits(params, x):
  if "w" in params:
    return x @ params["w"] + params["b"]
  return audit.mlp_logits(params, x)


def loss_fn(params, example):
  x, y = example
  return audit.cross_entropy(logits(params, x), y)


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


def _write_json(path: str, value) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2)
  os.replace(tmp, path)


def train_and_evaluate(config: Config, workdir: str) -> dict:
  config.validate()
  x, y = load_data(config)
  num_classes = int(y.max()) + 1
  if config.batch_size > len(x):
    raise ValueError(f"--batch_size={config.batch_size} is larger than the dataset "
                     f"({len(x)} examples from --data={config.data}); lower it or add data.")
  os.makedirs(workdir, exist_ok=True)
  randomness = config.randomness()
  _write_json(os.path.join(workdir, "config.json"), config.public_dict())
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
  _write_json(os.path.join(workdir, "results.json"), results)
  _write_json(os.path.join(report.private_dir(workdir), DIAGNOSTICS), {
      "train_accuracy": float(jnp.mean(jnp.argmax(logits(final, x), -1) == y)),
      "last_logged_step": result.private_history[-1] if result.private_history else None})
  release = result.release("trained parameters", list(RELEASED), config.delta, config.accountant)
  report.write_privacy_report(workdir, [release], randomness, not_covered=NOT_COVERED)
  if result.stopped_by_budget:
    logging.warning("stopped at step %d of %d: --max_epsilon=%g reached (epsilon=%.4f).",
                    results["steps"], config.num_steps, config.max_epsilon, results["epsilon"])
  logging.info("done: %s", json.dumps({k: v for k, v in results.items() if k != "ledger"}))
  return results


FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined on demand, so tests can import several entry points into one process."""
  flags.DEFINE_string("workdir", None, "Output directory; an existing checkpoint there is resumed.")
  flags.DEFINE_integer("num_steps", Config.num_steps, "Total DP-SGD steps.")
  flags.DEFINE_integer("checkpoint_every", Config.checkpoint_every, "Steps between checkpoints.")
  flags.DEFINE_float("noise_multiplier", Config.noise_multiplier, "Noise std / clip norm.")
  flags.DEFINE_float("clip_norm", Config.clip_norm, "Per-example l2 clip norm.")
  flags.DEFINE_integer("batch_size", Config.batch_size, "Expected Poisson batch size.")
  flags.DEFINE_float("learning_rate", Config.learning_rate, "SGD (momentum 0.9) learning rate.")
  flags.DEFINE_float("delta", Config.delta, "Target delta.")
  flags.DEFINE_string("accountant", Config.accountant, "rdp or pld.")
  flags.DEFINE_float("max_epsilon", None, "Stop before the step that would exceed this epsilon.")
  flags.DEFINE_bool("allow_privacy_change", False,
                    "Resume with different privacy parameters; the ledger composes both phases.")
  flags.DEFINE_string("model", Config.model, f"One of {MODELS}.")
  flags.DEFINE_string("data", Config.data, "'digits' (embedded) or an .npz file with arrays x, y.")
  flags.DEFINE_string("data_dir", None, "Directory for a relative --data path.")
  flags.DEFINE_integer("seed", Config.seed, "Seed of the initialisation; of the batches and "
                       "noise too with --reproducible_private_randomness.")
  flags.DEFINE_bool("reproducible_private_randomness", False,
                    "Derive batches and noise from --seed (then a secret, kept in "
                    "private/secret_seed.json) instead of the OS CSPRNG; a resumed run then "
                    "matches an uninterrupted one bit for bit.")
  flags.DEFINE_float("sleep_per_step", 0.0, "Seconds to sleep per step (for kill-and-resume tests).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required.")
  config = Config(**{f.name: getattr(FLAGS, f.name) for f in dataclasses.fields(Config)})
  try:
    train_and_evaluate(config, FLAGS.workdir)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"train_small: error: {e}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
