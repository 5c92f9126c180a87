"""Empirical privacy audit: membership inference and canary lower bounds vs the accountant.

  python -m experiments.audit --workdir=/tmp/audit --preset=quick

For each target epsilon (default 1, 4, 8), a non-private baseline and a deliberately broken
"no-clip" run (clip norm 1e6 with the noise calibrated to clip norm 1, claiming epsilon 1):

  * canary audit (`dpjax.audit.dirac_canary_audit`): one `engine.train` run of softmax
    regression on digits plus m Dirac canaries; the one-run lower bound (Steinke et al. 2023) at
    95% confidence against the ledger's epsilon;
  * membership inference: M shadow MLPs on a digits subset, each on a random half; loss-threshold
    attack and LiRA (online/offline), leave-one-model-out; AUC and TPR at FPR 0.1% and 1%.

Every audited model draws its batches and noise from its own secret stream (the OS CSPRNG;
`--reproducible_private_randomness` derives them from `--seed`, which then becomes a secret of
the training, though the auditor knows it). `--seed` otherwise sets the auditor's design: the
digits subset, which examples each model holds, the canaries' labels and inclusion, and the
initialisation.

Writes config.json, results.json and results.md in --workdir, and two figures beside them:
roc_curves.png (each attack's ROC curve per setting, log-log, Carlini et al. 2022) and
epsilon_lower_bound.png (canary lower bound against the accountant's epsilon, with y = x).
results.json lists the figures under "plots" and holds no per-example membership scores nor
training-set statistics; the shadow models' training accuracy is a private diagnostic in
private/diagnostics.json. privacy_report.{json,md} lists each audited training and what the
audit's numbers are (measurements made with the membership, not DP outputs).
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
from dpjax import randomness as randomness_lib
from dpjax import report
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
  seed: int = 0  # the auditor's design; the secret of noise and batches only with the flag below
  reproducible_private_randomness: bool = False
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

  def randomness(self) -> randomness_lib.PrivateRandomness:
    return randomness_lib.from_flag(self.reproducible_private_randomness, self.seed)

  def public_dict(self) -> dict:
    """The config fit for the released config.json: the seed hidden when it keys the noise."""
    return randomness_lib.redact(dataclasses.asdict(self), self.randomness())


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


def run_canary_audit(config: Config, target_epsilon: float, bug: str, setting: str = "") -> dict:
  num_real = 1797
  expected_size = num_real + config.num_canaries // 2
  phase = accounting.PrivacyPhase(1.0, expected_size, config.canary_batch_size,
                                  steps=config.canary_steps)
  sigma = accounting.calibrate_noise_multiplier(target_epsilon, config.delta, phase, config.accountant)
  canary_config = audit.CanaryAuditConfig(
      num_canaries=config.num_canaries, noise_multiplier=sigma, batch_size=config.canary_batch_size,
      num_steps=config.canary_steps, learning_rate=config.canary_learning_rate, delta=config.delta,
      accountant=config.accountant, confidence=config.confidence, bug=bug, seed=config.seed,
      reproducible_private_randomness=config.reproducible_private_randomness)
  return audit.dirac_canary_audit(canary_config, stream=f"canary audit {setting}")


def mia_model(hidden: int):
  init = lambda key, num_features, num_classes: audit.init_mlp(key, num_features, hidden,
                                                               num_classes)
  return init, audit.mlp_logits


def run_membership_inference(config: Config, target_epsilon: float, bug: str | None,
                             setting: str = "") -> tuple[dict, dict, dict]:
  """(summary for results.json, {attack: (fpr, tpr)} ROC curves for the figure, private
  diagnostics).

  The per-example scores stay in memory: only their ROC curves and metrics leave this function.
  The shadow models' accuracy on their own training examples is a private diagnostic.
  """
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
      sampling_rate=config.mia_sampling_rate, dp=dp, randomness=config.randomness(),
      stream=f"membership inference {setting}")
  all_logits = jax.vmap(lambda p: logits(p, x))(params)
  labels = jnp.broadcast_to(y, membership.shape)
  stats = np.asarray(audit.logit_confidence(all_logits, labels))
  losses = np.asarray(audit.cross_entropy(all_logits, labels))
  correct = np.asarray(jnp.argmax(all_logits, -1) == labels)
  scores = audit.membership_inference_scores(stats, losses, membership)
  is_member = membership.reshape(-1)
  summary = {"accountant_epsilon": epsilon, "noise_multiplier": sigma,
             "heldout_accuracy": float(correct[~membership].mean()),
             **{name: audit.attack_metrics(s, is_member) for name, s in scores.items()}}
  diagnostics = {"train_accuracy": float(correct[membership].mean()),
                 "train_loss": float(losses[membership].mean())}
  return (summary, {name: audit.roc_curve(s, is_member) for name, s in scores.items()},
          diagnostics)


DIAGNOSTICS = "diagnostics.json"


def train_and_evaluate(config: Config, workdir: str) -> dict:
  config.validate()
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config.public_dict(), f, indent=2)
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
             "plots": write_plots(rows, roc_curves, workdir, config.confidence)}
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2, default=_json_default)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(markdown_table(rows))
  with open(os.path.join(report.private_dir(workdir), DIAGNOSTICS), "w") as f:
    json.dump({"shadow_models_on_their_training_examples": diagnostics}, f, indent=2)
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
    "the design comes from --seed and is public to the auditor: the digits subset, each model's "
    "half of it, the canaries' labels and inclusion, the initialisation",
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
    clip_norm = None if row["bug"] is None else NO_CLIP_NORM if bugged else 1.0
    scale = NO_CLIP_NORM if bugged else 1.0
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
                          "guarantee, whatever epsilon they claim; they show what the audit catches")
  notes = ["each model's epsilon holds for that model; the models of one setting train on "
           "overlapping halves of the same examples"]
  if not randomness.secure:
    notes.append("--reproducible_private_randomness: --seed (private/secret_seed.json) derives "
                 "every batch and noise draw, and is also the auditor's design seed; the "
                 "guarantees assume it secret from anyone but the auditor")
  return report.write_privacy_report(workdir, releases(config, rows, files), randomness,
                                     not_covered=not_covered, notes=notes)


# ---------------------------------------------------------------------------------------------
# Figures.

ATTACK_NAMES = {"loss": "loss threshold", "lira_online": "LiRA online",
                "lira_offline": "LiRA offline"}


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def roc_figure(panels: dict[str, list[tuple[str, np.ndarray, np.ndarray]]], floor: float):
  """Log-log ROC curves, TPR against FPR: one panel per title, one (label, fpr, tpr) curve each.

  Rates of 0 are raised to `floor` (below the smallest nonzero rate) so log axes can show them.
  The dashed diagonal is the random guess; dotted verticals mark the low FPRs of the table.
  """
  plt = _pyplot()
  columns = min(3, len(panels))
  num_rows = math.ceil(len(panels) / columns)
  figure, axes = plt.subplots(num_rows, columns, squeeze=False, layout="constrained",
                              figsize=(5.2 * columns, 4.8 * num_rows))
  for axis, (title, curves) in zip(axes.flat, panels.items()):
    axis.plot([floor, 1], [floor, 1], color="gray", linestyle="--", linewidth=1,
              label="random guess")
    for fpr in audit.LOW_FPRS:
      axis.axvline(fpr, color="lightgray", linestyle=":", linewidth=1, zorder=0)
    for label, fpr, tpr in curves:
      axis.plot(np.maximum(fpr, floor), np.maximum(tpr, floor), linewidth=1.5, label=label)
    axis.set(xscale="log", yscale="log", xlim=(floor, 1), ylim=(floor, 1), title=title,
             xlabel="false positive rate", ylabel="true positive rate")
    axis.legend(fontsize=7, loc="lower right", framealpha=0.9)
  for axis in axes.flat[len(panels):]:
    axis.remove()
  figure.suptitle("Membership inference ROC (pooled leave-one-model-out)")
  return figure


def epsilon_figure(labels: list[str], accountant_epsilon: np.ndarray, lower_bound: np.ndarray,
                   planted_bug: np.ndarray, confidence: float):
  """The canary audit's empirical lower bound (y) against the accountant's epsilon (x), with y = x.

  Points above the line refute the accountant's claim; an infinite bound is drawn on the top edge.
  """
  plt = _pyplot()
  x = np.asarray(accountant_epsilon, np.float64)
  bound = np.asarray(lower_bound, np.float64)
  planted_bug = np.asarray(planted_bug, bool)
  finite = np.isfinite(bound)
  top = 1.15 * max(x.max(), bound[finite].max(initial=0.0), 1.0)
  y = np.where(finite, bound, top)
  figure, axis = plt.subplots(figsize=(5.4, 5.4))
  axis.plot([0, top], [0, top], color="gray", linestyle="--", linewidth=1,
            label="y = x (accountant's epsilon)")
  axis.fill_between([0, top], [0, top], top, color="tab:red", alpha=0.07,
                    label="lower bound exceeds the claim")
  for mask, style in ((~planted_bug, dict(marker="o", color="tab:blue", label="correct DP-SGD")),
                      (planted_bug, dict(marker="X", color="tab:red", label="planted bug"))):
    if mask.any():
      axis.scatter(x[mask], y[mask], s=60, zorder=3, clip_on=False, **style)
  for label, xi, yi, value in zip(labels, x, y, bound):
    axis.annotate(f"{label}: {value:.3g}", (xi, yi), textcoords="offset points", fontsize=8,
                  xytext=(6, 6) if math.isfinite(value) else (8, -12))  # inf: below the top edge
  axis.set(xlim=(0, top), ylim=(0, top), aspect="equal", xlabel="accountant epsilon (claimed)",
           ylabel=f"empirical epsilon lower bound ({confidence:.0%} confidence)",
           title="Canary audit: lower bound vs accountant")
  axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
  return figure


def _save(figure, workdir: str, file_name: str) -> str:
  plt = _pyplot()
  figure.savefig(os.path.join(workdir, file_name), format="png", dpi=100, bbox_inches="tight")
  plt.close(figure)
  return file_name


def _attack_label(name: str, metrics: dict) -> str:
  return (f"{ATTACK_NAMES.get(name, name)}: AUC {metrics['auc']:.3f}, TPR "
          f"{metrics['tpr_at_fpr_0.001']:.1%} @0.1%, {metrics['tpr_at_fpr_0.01']:.1%} @1%")


def _setting_title(row: dict) -> str:
  epsilon = row["membership_inference"]["accountant_epsilon"]
  if row["bug"] not in (None, "none"):
    return f"{row['setting']} (planted bug, claims eps {epsilon:.3g})"
  return f"{row['setting']} (accountant eps {epsilon:.3g})"


def write_plots(rows: list[dict], roc_curves: dict[str, dict], workdir: str,
                confidence: float) -> list[str]:
  """Draws roc_curves.png and (when a canary audit ran) epsilon_lower_bound.png into `workdir`;
  returns their file names, relative to `workdir`."""
  panels = {_setting_title(row): [(_attack_label(name, row["membership_inference"][name]),
                                   *roc_curves[row["setting"]][name])
                                  for name in roc_curves[row["setting"]]] for row in rows}
  num_scores = max(row["membership_inference"]["loss"]["num_members"]
                   + row["membership_inference"]["loss"]["num_nonmembers"] for row in rows)
  # Below the smallest nonzero rate, 1 / (num_scores / 2), and below the table's lowest FPR.
  floor = min(1.0 / num_scores, 0.5 * min(audit.LOW_FPRS))
  written = [_save(roc_figure(panels, floor), workdir, "roc_curves.png")]
  audited = [row for row in rows if "canary" in row]
  if audited:
    figure = epsilon_figure([row["setting"] for row in audited],
                            np.array([row["canary"]["accountant_epsilon"] for row in audited]),
                            np.array([row["canary"]["epsilon_lower_bound"] for row in audited]),
                            np.array([row["bug"] != "none" for row in audited]), confidence)
    written.append(_save(figure, workdir, "epsilon_lower_bound.png"))
  return written


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
  flags.DEFINE_integer("seed", 0, "Seed of the audit's design (data subset, memberships, "
                       "canaries, initialisation); of the noise and batches only with "
                       "--reproducible_private_randomness.")
  flags.DEFINE_bool("reproducible_private_randomness", False,
                    "Derive every model's batches and noise from --seed (then a secret, kept "
                    "in private/secret_seed.json) instead of the OS CSPRNG.")
  flags.DEFINE_list("epsilons", None, "Override the target epsilons, e.g. 1,4,8.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required.")
  overrides = {"seed": FLAGS.seed,
               "reproducible_private_randomness": FLAGS.reproducible_private_randomness}
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
