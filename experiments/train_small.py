"""A small, fast DP-SGD run for reliability checks: kill and resume, privacy changes, budgets.

  python -m experiments.train_small --workdir=/tmp/small --num_steps=200 --checkpoint_every=20

Trains softmax regression (or a small MLP) on scikit-learn's embedded digits (or an .npz file with
arrays `x` (N, features) and `y` (N,)) with `dpjax.train.train`: Poisson batches, the privacy
ledger, atomic checkpoints and resume from `--workdir`. Writes `config.json`, `metrics.jsonl`,
`results.json` (epsilon, steps, the ledger, a SHA-256 of the final parameters) and `params.npz`.
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
  seed: int = 0
  secure_noise: bool = False
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


def train_and_evaluate(config: Config, workdir: str) -> dict:
  config.validate()
  x, y = load_data(config)
  num_classes = int(y.max()) + 1
  if config.batch_size > len(x):
    raise ValueError(f"--batch_size={config.batch_size} is larger than the dataset "
                     f"({len(x)} examples from --data={config.data}); lower it or add data.")
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(dataclasses.asdict(config), f, indent=2)

  sampler = SlowSampler(len(x), config.batch_size, "poisson", seed=config.seed,
                        sleep_per_step=config.sleep_per_step)
  dp = train.DPConfig(clipping.ClippingConfig(config.clip_norm), config.noise_multiplier,
                      sampler.expected_batch_size)
  loop = train.LoopConfig(num_steps=config.num_steps, delta=config.delta,
                          accountant=config.accountant, max_epsilon=config.max_epsilon,
                          workdir=workdir, checkpoint_every=config.checkpoint_every,
                          log_every=config.checkpoint_every,
                          allow_privacy_change=config.allow_privacy_change)
  noise_key = audit.secure_noise_key() if config.secure_noise else jax.random.PRNGKey(config.seed)
  params = init_params(config.model, x.shape[1], num_classes, jax.random.PRNGKey(config.seed + 1))

  def accuracy(p):
    return {"accuracy": float(jnp.mean(jnp.argmax(logits(p, x), -1) == y))}

  result = train.train(loss_fn, params, optax.sgd(config.learning_rate, momentum=0.9), (x, y),
                       sampler=sampler, dp=dp, loop=loop, noise_key=noise_key, eval_fn=accuracy,
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
      **accuracy(final),
  }
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
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
  flags.DEFINE_integer("seed", Config.seed, "Seed of sampling, noise and initialisation.")
  flags.DEFINE_bool("secure_noise", False,
                    "Draw the noise key from the OS CSPRNG (not reproducible; see dpjax/audit.py).")
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
