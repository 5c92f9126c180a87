"""Empirical privacy audit: membership inference and canary lower bounds vs the accountant.

  python -m experiments.audit --workdir=/tmp/audit --preset=quick

For each target epsilon (default 1, 4, 8), a non-private baseline and a deliberately broken
"no-clip" run (clip norm 1e6 with the noise calibrated to clip norm 1, claiming epsilon 1):

  * canary audit (`dpjax.audit.dirac_canary_audit`): one `train.train` run of softmax
    regression on digits plus m Dirac canaries; the one-run lower bound (Steinke et al. 2023) at
    95% confidence against the ledger's epsilon;
  * membership inference: M shadow MLPs on a digits subset, each on a random half; loss-threshold
    attack and LiRA (online/offline), leave-one-model-out; AUC and TPR at FPR 0.1% and 1%.

Writes config.json, results.json and results.md in --workdir.
"""

from __future__ import annotations

import dataclasses
import json
import math
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
from dpjax import train
from dpjax.data import validate

NO_CLIP_NORM = 1e6  # "clipping off"


@dataclasses.dataclass(frozen=True)
class Config:
  epsilons: tuple[float, ...] = (1.0, 4.0, 8.0)
  include_no_clip: bool = True
  no_clip_claimed_epsilon: float = 1.0
  delta: float = 1e-5
  accountant: str = "rdp"
  confidence: float = 0.95
  seed: int = 0
  # Canary audit (softmax regression on all 1,797 digits + canaries).
  num_canaries: int = 1000
  canary_steps: int = 200
  canary_batch_size: int = 256
  canary_learning_rate: float = 1.0
  # Membership inference (shadow MLPs on a digits subset).
  num_models: int = 16
  mia_examples: int = 400
  mia_hidden: int = 32
  mia_steps: int = 300
  mia_sampling_rate: float = 0.25
  mia_learning_rate: float = 0.01

  def validate(self) -> None:
    validate.check_positive(num_canaries=self.num_canaries, canary_steps=self.canary_steps,
                            canary_batch_size=self.canary_batch_size, mia_steps=self.mia_steps,
                            mia_examples=self.mia_examples, mia_hidden=self.mia_hidden,
                            canary_learning_rate=self.canary_learning_rate,
                            mia_learning_rate=self.mia_learning_rate,
                            no_clip_claimed_epsilon=self.no_clip_claimed_epsilon,
                            **{f"epsilons[{i}]": e for i, e in enumerate(self.epsilons)})
    if self.num_models < 3:
      raise ValueError(f"--num_models={self.num_models} must be >= 3 (target + shadows).")
    if not 0 < self.mia_sampling_rate <= 1:
      raise ValueError(f"--mia_sampling_rate={self.mia_sampling_rate} must be in (0, 1].")
    if not 0 < self.delta < 1:
      raise ValueError(f"--delta={self.delta} must be in (0, 1).")
    if self.mia_examples > 1797:
      raise ValueError(f"--mia_examples={self.mia_examples}: digits has only 1797 examples.")


PRESETS = {
    "tiny": dict(epsilons=(1.0, 8.0), num_canaries=100, canary_steps=30, canary_batch_size=64,
                 num_models=4, mia_examples=80, mia_hidden=8, mia_steps=20),
    "quick": {},
    "full": dict(num_canaries=2000, canary_steps=500, num_models=32, mia_examples=600,
                 mia_steps=500),
}


def make_config(preset: str, **overrides) -> Config:
  validate.check_choice("preset", preset, PRESETS)
  config = Config(**{**PRESETS[preset], **overrides})
  config.validate()
  return config


def settings(config: Config) -> list[dict]:
  """(name, claimed epsilon, bug) of every audited run; 'nonprivate' is membership inference only."""
  rows = [{"setting": "nonprivate", "target_epsilon": math.inf, "bug": None}]
  rows += [{"setting": f"eps={e:g}", "target_epsilon": e, "bug": "none"} for e in config.epsilons]
  if config.include_no_clip:
    rows.append({"setting": "no_clip", "target_epsilon": config.no_clip_claimed_epsilon,
                 "bug": "no_clip"})
  return rows


def run_canary_audit(config: Config, target_epsilon: float, bug: str) -> dict:
  num_real = 1797
  expected_size = num_real + config.num_canaries // 2
  phase = accounting.PrivacyPhase(1.0, expected_size, config.canary_batch_size,
                                  steps=config.canary_steps)
  sigma = accounting.calibrate_noise_multiplier(target_epsilon, config.delta, phase, config.accountant)
  canary_config = audit.CanaryAuditConfig(
      num_canaries=config.num_canaries, noise_multiplier=sigma, batch_size=config.canary_batch_size,
      num_steps=config.canary_steps, learning_rate=config.canary_learning_rate, delta=config.delta,
      accountant=config.accountant, confidence=config.confidence, bug=bug, seed=config.seed)
  return audit.dirac_canary_audit(canary_config)


def mia_model(hidden: int):
  init = lambda key, num_features, num_classes: audit.init_mlp(key, num_features, hidden,
                                                               num_classes)
  return init, audit.mlp_logits


def run_membership_inference(config: Config, target_epsilon: float, bug: str | None) -> dict:
  x, y = audit.digits_features()
  subset = np.random.default_rng(config.seed).permutation(len(x))[: config.mia_examples]
  x, y = x[subset], y[subset]
  init, logits = mia_model(config.mia_hidden)

  def loss_fn(params, example):
    return audit.cross_entropy(logits(params, example[0]), example[1])

  per_model_size = config.mia_examples // 2
  expected_batch = config.mia_sampling_rate * per_model_size
  dp, sigma, epsilon = None, 0.0, math.inf
  if bug is not None:
    phase = accounting.PrivacyPhase(1.0, per_model_size, max(1, round(expected_batch)),
                                    steps=config.mia_steps)
    sigma = accounting.calibrate_noise_multiplier(target_epsilon, config.delta, phase,
                                                  config.accountant)
    epsilon = accounting.compute_epsilon([dataclasses.replace(phase, noise_multiplier=sigma)],
                                         config.delta, config.accountant)
    clip, noise = (NO_CLIP_NORM, sigma / NO_CLIP_NORM) if bug == "no_clip" else (1.0, sigma)
    dp = train.DPConfig(clipping.ClippingConfig(clip), noise, expected_batch)
  membership = audit.random_halves(config.seed, config.num_models, config.mia_examples)
  params = audit.train_models(
      loss_fn, init(jax.random.PRNGKey(config.seed), x.shape[1], 10), (x, y), membership,
      optimizer=optax.adam(config.mia_learning_rate), num_steps=config.mia_steps,
      sampling_rate=config.mia_sampling_rate, dp=dp, key=jax.random.PRNGKey(config.seed + 1))
  all_logits = jax.vmap(lambda p: logits(p, x))(params)
  labels = jnp.broadcast_to(y, membership.shape)
  stats = np.asarray(audit.logit_confidence(all_logits, labels))
  losses = np.asarray(audit.cross_entropy(all_logits, labels))
  correct = np.asarray(jnp.argmax(all_logits, -1) == labels)
  return {"accountant_epsilon": epsilon, "noise_multiplier": sigma,
          "train_accuracy": float(correct[membership].mean()),
          "heldout_accuracy": float(correct[~membership].mean()),
          **audit.membership_inference(stats, losses, membership)}


def train_and_evaluate(config: Config, workdir: str) -> dict:
  config.validate()
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(dataclasses.asdict(config), f, indent=2)
  rows = []
  for row in settings(config):
    start = time.perf_counter()
    if row["bug"] is not None:
      row["canary"] = run_canary_audit(config, row["target_epsilon"], row["bug"])
    row["membership_inference"] = run_membership_inference(config, row["target_epsilon"], row["bug"])
    row["seconds"] = time.perf_counter() - start
    logging.info("%s: %s", row["setting"], _summary(row))
    rows.append(row)
  results = {"rows": rows, "delta": config.delta, "confidence": config.confidence}
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2, default=_json_default)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(markdown_table(rows))
  return results


def _summary(row: dict) -> str:
  mia = row["membership_inference"]
  text = f"LiRA AUC={mia['lira_online']['auc']:.3f} loss AUC={mia['loss']['auc']:.3f}"
  if "canary" in row:
    c = row["canary"]
    text += (f" canary eps_lb={c['epsilon_lower_bound']:.3f} vs accountant "
             f"{c['accountant_epsilon']:.3f}")
  return text


def _json_default(value):
  if isinstance(value, (np.generic,)):
    return value.item()
  raise TypeError(f"not JSON serialisable: {type(value)}")


def markdown_table(rows: list[dict]) -> str:
  lines = ["| setting | accountant eps (canary run) | eps lower bound (95%) | correct/guesses | "
           "canary AUC | MIA accountant eps | LiRA AUC | LiRA TPR@0.1% | LiRA TPR@1% | "
           "loss AUC | loss TPR@1% |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for row in rows:
    c = row.get("canary")
    mia = row["membership_inference"]
    lira, loss = mia["lira_online"], mia["loss"]
    canary_cells = (f"{c['accountant_epsilon']:.3g} | {c['epsilon_lower_bound']:.3g} | "
                    f"{c['num_correct']}/{c['num_guesses']} | {c['canary_auc']:.3f}"
                    if c else "inf | - | - | -")
    lines.append(f"| {row['setting']} | {canary_cells} | {mia['accountant_epsilon']:.3g} | "
                 f"{lira['auc']:.3f} | {lira['tpr_at_fpr_0.001']:.4f} | "
                 f"{lira['tpr_at_fpr_0.01']:.4f} | {loss['auc']:.3f} | "
                 f"{loss['tpr_at_fpr_0.01']:.4f} |")
  return "\n".join(lines) + "\n"


FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined on demand, so tests can import several entry points into one process."""
  flags.DEFINE_string("workdir", None, "Output directory.")
  flags.DEFINE_string("preset", "quick", f"One of {sorted(PRESETS)}.")
  flags.DEFINE_integer("seed", 0, "Seed of data splits, sampling and noise.")
  flags.DEFINE_list("epsilons", None, "Override the target epsilons, e.g. 1,4,8.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required.")
  overrides = {"seed": FLAGS.seed}
  try:
    if FLAGS.epsilons:
      overrides["epsilons"] = tuple(float(e) for e in FLAGS.epsilons)
    config = make_config(FLAGS.preset, **overrides)
    results = train_and_evaluate(config, FLAGS.workdir)
  except ValueError as e:
    sys.exit(f"audit: error: {e}")
  print(markdown_table(results["rows"]))


if __name__ == "__main__":
  define_flags()
  app.run(main)
