"""Empirical privacy audit: membership inference and canary lower bounds vs the accountant.

For each target epsilon (`target_epsilons`), a non-private baseline and a deliberately broken
"no-clip" run (clip norm 1e6 with the noise calibrated to clip norm 1, claiming
`no_clip_claimed_epsilon`):

  * canary audit (`experiments.audit.canary.dirac_canary_audit`): one `engine.train` run of
    softmax regression on digits plus m Dirac canaries; the one-run lower bound (Steinke et al.
    2023) at `confidence` against the ledger's epsilon;
  * membership inference: `num_models` shadow MLPs on a digits subset, each on a random half;
    loss-threshold attack and LiRA (online/offline), leave-one-model-out; AUC and TPR at FPR 0.1%
    and 1% (`dpjax.auditing`).

Every audited model draws its batches and noise from its own secret stream (the OS CSPRNG;
`reproducible_private_randomness` derives them from `seed`, which then becomes a secret of the
training, though the auditor knows it). `seed` otherwise sets the auditor's design: the digits
subset, which examples each model holds, the canaries' labels and inclusion, and the
initialisation.

Writes config.json, results.json and results.md in the workdir, and two figures beside them
(`experiments.audit.figures`). results.json lists the figures under "plots" and holds no
per-example membership scores nor training-set statistics; the shadow models' training accuracy
is a private diagnostic in private/diagnostics.json. privacy_report.{json,md} lists each audited
training and what the audit's numbers are (measurements made with the membership, not DP
outputs).
"""

from __future__ import annotations

import dataclasses
import math
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
from dpjax import auditing
from dpjax import clipping
from dpjax import report
from dpjax import train
from dpjax.data import validate
from experiments.audit import canary
from experiments.audit import digits
from experiments.audit import figures
from experiments.audit import shadow_models
from experiments.common import configs
from experiments.common import outputs

DIAGNOSTICS = "diagnostics.json"


@dataclasses.dataclass(frozen=True)
class Config(configs.PrivateRunSettings):
  """The audit's settings; the values of each preset are in experiments/audit/configs/."""
  target_epsilons: tuple[float, ...]
  include_no_clip: bool
  no_clip_claimed_epsilon: float
  delta: float
  accountant: str
  confidence: float
  seed: int  # the auditor's design; the secret of noise and batches only with the flag below
  reproducible_private_randomness: bool
  # Canary audit (softmax regression on all 1,797 digits + canaries).
  num_canaries: int
  canary_steps: int
  canary_batch_size: int
  canary_learning_rate: float
  # Membership inference (shadow MLPs on a digits subset).
  num_models: int
  mia_examples: int
  mia_hidden: int
  mia_steps: int
  mia_sampling_rate: float
  mia_learning_rate: float

  def __post_init__(self):
    validate.check_positive(**configs.as_flags(
        num_canaries=self.num_canaries, canary_steps=self.canary_steps,
        canary_batch_size=self.canary_batch_size, mia_steps=self.mia_steps,
        mia_examples=self.mia_examples, mia_hidden=self.mia_hidden,
        canary_learning_rate=self.canary_learning_rate, mia_learning_rate=self.mia_learning_rate,
        no_clip_claimed_epsilon=self.no_clip_claimed_epsilon,
        **{f"target_epsilons[{i}]": e for i, e in enumerate(self.target_epsilons)}))
    if self.num_models < 3:
      raise ValueError(f"--config.num_models={self.num_models} must be >= 3 (target + shadows).")
    if not 0 < self.mia_sampling_rate <= 1:
      raise ValueError(f"--config.mia_sampling_rate={self.mia_sampling_rate} must be in (0, 1].")
    if not 0 < self.delta < 1:
      raise ValueError(f"--config.delta={self.delta} must be in (0, 1).")
    if not 0 < self.confidence < 1:
      raise ValueError(f"--config.confidence={self.confidence} must be in (0, 1).")
    if self.mia_examples > digits.NUM_EXAMPLES:
      raise ValueError(f"--config.mia_examples={self.mia_examples}: digits has only "
                       f"{digits.NUM_EXAMPLES} examples.")
    validate.check_choice("config.accountant", self.accountant, accounting.ACCOUNTANTS)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict | Mapping[str, Any]) -> Config:
    """The dataclass of a config file's ConfigDict; unknown or missing fields are refused."""
    return configs.settings_from(cls, config, require_all=True,
                                 target_epsilons=lambda eps: tuple(float(e) for e in eps))



def settings(config: Config) -> list[dict]:
  """(name, claimed epsilon, bug) of every audited run; 'nonprivate' is membership inference
  only."""
  rows = [{"setting": "nonprivate", "target_epsilon": math.inf, "bug": None}]
  rows += [{"setting": f"eps={e:g}", "target_epsilon": e, "bug": "none"}
           for e in config.target_epsilons]
  if config.include_no_clip:
    rows.append({"setting": "no_clip", "target_epsilon": config.no_clip_claimed_epsilon,
                 "bug": "no_clip"})
  return rows


def run_canary_audit(config: Config, target_epsilon: float, bug: str, setting: str = "") -> dict:
  expected_size = digits.NUM_EXAMPLES + config.num_canaries // 2
  phase = accounting.PrivacyPhase(1.0, expected_size, config.canary_batch_size,
                                  steps=config.canary_steps)
  sigma = accounting.calibrate_noise_multiplier(target_epsilon, config.delta, phase,
                                                config.accountant)
  canary_config = canary.CanaryAuditConfig(
      num_canaries=config.num_canaries, noise_multiplier=sigma,
      batch_size=config.canary_batch_size, num_steps=config.canary_steps,
      learning_rate=config.canary_learning_rate, delta=config.delta, accountant=config.accountant,
      confidence=config.confidence, bug=bug, seed=config.seed,
      reproducible_private_randomness=config.reproducible_private_randomness)
  return canary.dirac_canary_audit(canary_config, stream=f"canary audit {setting}")


def run_membership_inference(config: Config, target_epsilon: float, bug: str | None,
                             setting: str = "") -> tuple[dict, dict, dict]:
  """(summary for results.json, {attack: (fpr, tpr)} ROC curves for the figure, private
  diagnostics).

  The per-example scores stay in memory: only their ROC curves and metrics leave this function.
  The shadow models' accuracy on their own training examples is a private diagnostic.
  """
  x, y = digits.digits_features()
  subset = np.random.default_rng(config.seed).permutation(len(x))[: config.mia_examples]
  x, y = x[subset], y[subset]

  def loss_fn(params, example):
    return digits.cross_entropy(digits.mlp_logits(params, example[0]), example[1])

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
    clip, noise = ((canary.NO_CLIP_NORM, sigma / canary.NO_CLIP_NORM) if bug == "no_clip"
                   else (1.0, sigma))
    dp = train.DPConfig(clipping.ClippingConfig(clip), noise, expected_batch)
  membership = auditing.random_halves(config.seed, config.num_models, config.mia_examples)
  init = digits.init_mlp(jax.random.PRNGKey(config.seed), x.shape[1], config.mia_hidden, 10)
  params = shadow_models.train_models(
      loss_fn, init, (x, y), membership, optimizer=optax.adam(config.mia_learning_rate),
      num_steps=config.mia_steps, sampling_rate=config.mia_sampling_rate, dp=dp,
      randomness=config.randomness(), stream=f"membership inference {setting}")
  all_logits = jax.vmap(lambda p: digits.mlp_logits(p, x))(params)
  labels = jnp.broadcast_to(y, membership.shape)
  stats = np.asarray(auditing.logit_confidence(all_logits, labels))
  losses = np.asarray(digits.cross_entropy(all_logits, labels))
  correct = np.asarray(jnp.argmax(all_logits, -1) == labels)
  scores = auditing.membership_inference_scores(stats, losses, membership)
  is_member = membership.reshape(-1)
  summary = {"accountant_epsilon": epsilon, "noise_multiplier": sigma,
             "heldout_accuracy": float(correct[~membership].mean()),
             **{name: auditing.attack_metrics(s, is_member) for name, s in scores.items()}}
  diagnostics = {"train_accuracy": float(correct[membership].mean()),
                 "train_loss": float(losses[membership].mean())}
  return (summary, {name: auditing.roc_curve(s, is_member) for name, s in scores.items()},
          diagnostics)


def train_and_evaluate(config: ml_collections.ConfigDict | Config, workdir: str) -> dict:
  """Runs every setting of `config` and writes the results, figures and privacy report."""
  if not isinstance(config, Config):
    config = Config.from_config(config)
  os.makedirs(workdir, exist_ok=True)
  outputs.write_json(os.path.join(workdir, "config.json"), config.public_dict())
  report.save_secret_seed(workdir, config.randomness())
  rows, roc_curves, diagnostics = [], {}, {}
  for row in settings(config):
    start = time.perf_counter()
    name = row["setting"]
    if row["bug"] is not None:
      row["canary"] = run_canary_audit(config, row["target_epsilon"], row["bug"], name)
    row["membership_inference"], roc_curves[name], diagnostics[name] = run_membership_inference(
        config, row["target_epsilon"], row["bug"], name)
    row["seconds"] = time.perf_counter() - start
    logging.info("%s: %s", name, _summary(row))
    rows.append(row)
  results = {"rows": rows, "delta": config.delta, "confidence": config.confidence,
             "plots": figures.write_plots(rows, roc_curves, workdir, config.confidence)}
  outputs.write_json(os.path.join(workdir, "results.json"), results)
  outputs.atomic_write_text(os.path.join(workdir, "results.md"), results_table(rows))
  outputs.write_json(os.path.join(report.private_dir(workdir), DIAGNOSTICS),
                     {"shadow_models_on_their_training_examples": diagnostics})
  write_privacy_report(config, rows, workdir, results["plots"])
  return results


# ---------------------------------------------------------------------------------------------
# Privacy report.

NOT_COVERED = (
    "the audit's numbers (attack AUCs and TPRs, ROC curves, canary guesses and epsilon lower "
    "bounds) are measurements the auditor makes with the membership of every example and "
    "canary (its experimental design): they are not DP outputs, and their aggregate form is "
    "what keeps per-example scores out of the released files",
    "the held-out accuracy of the membership-inference models is measured on the examples each "
    "model did not train on, from the same public digits subset",
    "the design comes from --config.seed and is public to the auditor: the digits subset, each "
    "model's half of it, the canaries' labels and inclusion, the initialisation",
    "the data: scikit-learn's public digits set plus synthetic canaries; no private data is used",
)


def releases(config: Config, rows: list[dict], files: list[str]) -> list[dict]:
  """One report entry per audited training: its parameters stay in memory, and only the
  audit's aggregate numbers (in `files`) leave it."""
  entries = []
  for row in rows:
    mia = row["membership_inference"]
    bugged = row["bug"] not in (None, "none")
    claim = {"claimed_epsilon": mia["accountant_epsilon"]} if bugged else {}
    mechanism = ("none (non-private)" if row["bug"] is None else
                 f"DP-SGD with a planted bug ({row['bug']}): the claimed epsilon does not hold"
                 if bugged else "DP-SGD, gaussian noise")
    # The mechanism as it ran: the no-clip bug clips at NO_CLIP_NORM with the claimed noise.
    clip_norm = None if row["bug"] is None else canary.NO_CLIP_NORM if bugged else 1.0
    scale = canary.NO_CLIP_NORM if bugged else 1.0
    trainings = [("membership-inference models", config.num_models, mia, config.mia_steps)]
    if "canary" in row:
      trainings.insert(0, ("canary-audit model", 1, row["canary"], row["canary"]["num_steps"]))
    for what, count, numbers, steps in trainings:
      epsilon = math.inf if (row["bug"] is None or bugged) else numbers["accountant_epsilon"]
      entries.append(report.release(
          f"{row['setting']}: {count} {what} (parameters not released)", files,
          epsilon=epsilon, delta=config.delta, mechanism=mechanism,
          accountant=config.accountant, sampling="poisson", steps=steps,
          noise_multiplier=numbers["noise_multiplier"] / scale, clip_norm=clip_norm, **claim))
  return entries


def write_privacy_report(config: Config, rows: list[dict], workdir: str, plots: list[str]
                         ) -> tuple[str, str]:
  randomness = config.randomness()
  files = ["results.json", "results.md", *plots]
  not_covered = list(NOT_COVERED)
  if any(row["bug"] is None for row in rows):
    not_covered.insert(0, "the 'nonprivate' models train without any privacy (epsilon inf)")
  if any(row["bug"] not in (None, "none") for row in rows):
    not_covered.insert(0, "the planted-bug runs (no_clip) break the mechanism on purpose: no "
                          "guarantee, whatever epsilon they claim; they show what the audit "
                          "catches")
  notes = ["each model's epsilon holds for that model; the models of one setting train on "
           "overlapping halves of the same examples"]
  if not randomness.secure:
    notes.append("--config.reproducible_private_randomness: --config.seed "
                 "(private/secret_seed.json) derives every batch and noise draw, and is also the "
                 "auditor's design seed; the guarantees assume it secret from anyone but the "
                 "auditor")
  return report.write_privacy_report(workdir, releases(config, rows, files), randomness,
                                     not_covered=not_covered, notes=notes)


# ---------------------------------------------------------------------------------------------
# Tables.

TABLE_HEADERS = {
    "setting": "setting", "canary_epsilon": "accountant eps (canary run)",
    "lower_bound": "eps lower bound (95%)", "guesses": "correct/guesses",
    "canary_auc": "canary AUC", "mia_epsilon": "MIA accountant eps", "lira_auc": "LiRA AUC",
    "lira_tpr_0.001": "LiRA TPR@0.1%", "lira_tpr_0.01": "LiRA TPR@1%", "loss_auc": "loss AUC",
    "loss_tpr_0.01": "loss TPR@1%",
}


def results_table(rows: list[dict]) -> str:
  """results.md: one markdown row per setting ("-" where no canary audit ran)."""
  table = []
  for row in rows:
    c = row.get("canary")
    mia = row["membership_inference"]
    lira, loss = mia["lira_online"], mia["loss"]
    table.append({
        "setting": row["setting"],
        "canary_epsilon": c["accountant_epsilon"] if c else math.inf,
        "lower_bound": c["epsilon_lower_bound"] if c else "-",
        "guesses": f"{c['num_correct']}/{c['num_guesses']}" if c else "-",
        "canary_auc": c["canary_auc"] if c else "-",
        "mia_epsilon": mia["accountant_epsilon"], "lira_auc": lira["auc"],
        "lira_tpr_0.001": lira["tpr_at_fpr_0.001"], "lira_tpr_0.01": lira["tpr_at_fpr_0.01"],
        "loss_auc": loss["auc"], "loss_tpr_0.01": loss["tpr_at_fpr_0.01"]})
  return outputs.markdown_table(table, list(TABLE_HEADERS), TABLE_HEADERS, digits=3)


def _summary(row: dict) -> str:
  mia = row["membership_inference"]
  text = f"LiRA AUC={mia['lira_online']['auc']:.3f} loss AUC={mia['loss']['auc']:.3f}"
  if "canary" in row:
    c = row["canary"]
    text += (f" canary eps_lb={c['epsilon_lower_bound']:.3f} vs accountant "
             f"{c['accountant_epsilon']:.3f}")
  return text


def summarize(results: dict) -> str:
  """What the command line prints at the end: the results table."""
  return results_table(results["rows"])
