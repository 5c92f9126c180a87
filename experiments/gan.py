"""The DP GAN study (Beaulieu-Jones et al., SPRINT_gan): synthetic trial participants.

Trains the AC-GAN privately (and, for comparison, non-privately) on a trial's
(participants, features, visits) grids, and every `eval_every` epochs scores the generator by
train-synthetic-test-real: logistic regression and random forest fit on synthetic participants
to predict the arm, tested on held-out real participants, against the same models fit on the
real training participants (TRTR). Writes results.json, a summary table, the study's Figure 2
A-D (median trajectories of the first feature, real vs synthetic) and privacy_report.{json,md}.

  python -m experiments.gan --workdir=/tmp/gan --preset=quick
  python -m experiments.gan --workdir=/tmp/gan_paper --preset=paper \\
      --noise 1 --clip_value 0.0001 --epochs 500 --lr 2e-05 --batch_size 1 --prefix 1_0.0001_2e-05_
  python -m experiments.gan --workdir=/tmp/gan_bench --mode=benchmark

What is released and what is not (privacy_report.md says it per file):
  * the private GAN's synthetic participants (`dp_gan/synthetic/`), their TSTR scores, their
    curves in Figure 2: covered by the run's epsilon (every intermediate generator is
    post-processing of the one private run);
  * held-out participants are split in two: the "best" epochs of Figure 2 B-D are chosen by
    TSTR on the VALIDATION participants and reported on the TEST participants, whose median
    trajectories are the real reference curves. Held-out participants are used in the clear:
    the guarantee covers the training participants only;
  * the non-private baselines (TRTR, the non-private GAN) have epsilon = inf; their synthetic
    data stay under private/;
  * private diagnostics (the real-pair discriminator loss and other training statistics, the
    memorisation check against training records, the checkpoints with the secret noise key)
    live under private/ folders, never in results.json, the tables or the plots.
--seed steers public choices only (data split, simulation, initialisation, the latent draws of
released synthetic data); batches and noise come from the OS CSPRNG unless
--reproducible_private_randomness makes --seed their secret.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os

import jax
import numpy as np
from absl import app
from absl import flags
from absl import logging

from dpjax import accounting
from dpjax import gan_training
from dpjax import randomness as randomness_lib
from dpjax import report
from dpjax.data import paths
from dpjax.data import trials
from dpjax.models import gan

PRESETS = ("quick", "paper", "tiny")
VARIANT_PRIVATE, VARIANT_NONPRIVATE = "private", "nonprivate"
# Not "private/": that folder name is reserved for what must never be released.
VARIANT_DIRS = {VARIANT_PRIVATE: "dp_gan", VARIANT_NONPRIVATE: "nonprivate_gan"}
SPLITS = ("validation", "test")
CLASSIFIERS = ("lr", "rf")
METRICS = ("accuracy", "auc")


@dataclasses.dataclass(frozen=True)
class GanExperimentConfig:
  """One study run; `preset()` gives the named configurations.

  Attributes (beyond the study's command line `noise`, `clip_value`, `epochs`, `lr`,
  `batch_size`, `prefix`):
    dataset: one of `trials.DATASET_NAMES` (the study: "sprint"; offline: "sprint_sim").
    num_participants: keep a random subset of this many participants (None: all); for
      "sprint_sim" the simulator draws exactly this many.
    test_fraction: held-out real participants that the TSTR/TRTR scores are reported on (and
      whose median trajectories are Figure 2's real curves).
    validation_fraction: held-out real participants that choose the "best" epochs. Together
      with the test participants they are the study's 20% held out, so training is the same.
    target_epsilon: calibrate `noise` so that the whole run spends this epsilon at `delta`.
    private: train the private GAN; `nonprivate_baseline`: also train a non-private one.
    eval_every: TSTR evaluation every this many epochs (and always at the last).
    num_synthetic: synthetic participants per evaluation (None: as many as training ones).
    generator_conv_channels / discriminator_width: the study's 256 / 1024; narrower for speed.
    dropout: the discriminator's dropout (0.3) in training.
    rf_trees: trees of the random forests.
    top_k: how many best epochs per classifier Figure 2D pools.
    microbatch_size: clip this many pairs at a time (see BUILD_NOTES.md, DP GAN section, on speed).
    reproducible_private_randomness: derive batches and noise from `seed` (then a secret, kept
      out of config.json and results.json) instead of the OS CSPRNG; to debug or rerun bit for bit.
  """
  dataset: str = "sprint_sim"
  num_participants: int | None = None
  test_fraction: float = 0.1
  validation_fraction: float = 0.1
  noise: float = 1.0
  clip_value: float = 1e-4
  epochs: int = 500
  lr: float = 2e-5
  batch_size: int = 1
  prefix: str = ""
  target_epsilon: float | None = None
  delta: float = 1e-5
  accountant: str = "rdp"
  private: bool = True
  nonprivate_baseline: bool = True
  seed: int = 0
  eval_every: int = 10
  num_synthetic: int | None = None
  generator_conv_channels: int = 256
  generator_coarse_channels: int = 32
  discriminator_width: int = 1024
  dropout: bool = True
  rf_trees: int = 100
  top_k: int = 5
  microbatch_size: int | None = None
  reproducible_private_randomness: bool = False

  def __post_init__(self):
    if self.dataset not in trials.DATASET_NAMES:
      raise ValueError(f"--dataset={self.dataset!r}: choose one of {list(trials.DATASET_NAMES)}.")
    if not (self.test_fraction > 0 and self.validation_fraction > 0
            and self.test_fraction + self.validation_fraction < 1):
      raise ValueError(f"--test_fraction={self.test_fraction} and --validation_fraction="
                       f"{self.validation_fraction} must be > 0 with a sum below 1.")
    if self.epochs < 1:
      raise ValueError(f"--epochs={self.epochs} must be >= 1.")
    if self.eval_every < 1:
      raise ValueError(f"--eval_every={self.eval_every} must be >= 1.")
    if not (self.private or self.nonprivate_baseline):
      raise ValueError("--private=false with --nonprivate_baseline=false trains nothing.")
    if self.private and self.target_epsilon is None and not self.noise > 0:
      raise ValueError("--noise must be > 0 for a private run (or pass --target_epsilon, or "
                       "--private=false for a non-private one).")
    if self.target_epsilon is not None and not self.target_epsilon > 0:
      raise ValueError(f"--target_epsilon={self.target_epsilon} must be > 0.")
    accounting.check_delta(self.delta)


def preset(name: str) -> GanExperimentConfig:
  """"paper": the study's command on the full data; "quick": minutes on a CPU; "tiny": tests."""
  if name == "paper":
    return GanExperimentConfig()
  if name == "quick":
    return GanExperimentConfig(
        num_participants=1000, epochs=20, batch_size=32, lr=2e-4, target_epsilon=2.0,
        eval_every=4, generator_conv_channels=64, discriminator_width=64, rf_trees=100,
        num_synthetic=1000)
  if name == "tiny":
    return GanExperimentConfig(
        num_participants=80, epochs=2, batch_size=8, lr=1e-3, target_epsilon=2.0, delta=1e-3,
        eval_every=1, generator_conv_channels=8, generator_coarse_channels=8,
        discriminator_width=16, rf_trees=5, top_k=2, num_synthetic=40)
  raise ValueError(f"--preset={name!r}: choose one of {list(PRESETS)}.")


def load_data(config: GanExperimentConfig, data_dir: str | None) -> trials.TrialData:
  if config.dataset == "sprint_sim":
    return trials.simulate_sprint_like(config.seed, config.num_participants
                                       or trials.SPRINT_NUM_PARTICIPANTS)
  data = trials.load_trial_dataset(config.dataset, data_dir, config.seed)
  if config.num_participants is not None and config.num_participants < data.num_participants:
    rng = np.random.default_rng(config.seed)
    keep = np.sort(rng.choice(data.num_participants, config.num_participants, replace=False))
    data = trials.subset(data, keep)
  return data


def split(data: trials.TrialData, config: GanExperimentConfig):
  """(train, validation, test), stratified by arm; the training set is the one a plain
  train/test split at test_fraction + validation_fraction gives."""
  heldout_fraction = config.test_fraction + config.validation_fraction
  train_data, heldout = trials.train_test_split(data, heldout_fraction, config.seed)
  validation, test = trials.train_test_split(heldout, config.test_fraction / heldout_fraction,
                                             config.seed + 1)
  return train_data, validation, test


def networks(config: GanExperimentConfig, data: trials.TrialData):
  _, num_features, num_visits = data.x.shape
  generator = gan.Generator(features=num_features, visits=num_visits,
                            coarse_channels=config.generator_coarse_channels,
                            conv_channels=config.generator_conv_channels)
  discriminator = gan.Discriminator(dense_width=config.discriminator_width)
  return generator, discriminator


# ----- evaluation ---------------------------------------------------------------------------

def _flat(x: np.ndarray) -> np.ndarray:
  return np.asarray(x, np.float64).reshape(len(x), -1)


def classifier_scores(train_x, train_arm, eval_sets: dict, seed: int, rf_trees: int) -> dict:
  """{set name: {"lr"|"rf": {"accuracy", "auc"}}}: LR and RF fit once on (train_x, train_arm),
  scored on each (x, arm) of `eval_sets`."""
  from sklearn.ensemble import RandomForestClassifier  # pylint: disable=import-outside-toplevel
  from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
  from sklearn.metrics import accuracy_score, roc_auc_score  # pylint: disable=import-outside-toplevel

  models = {
      # Features are already scaled to [0, 1]. Standardising by the SYNTHETIC data's spread
      # would blow up real test values on features a generator made almost constant.
      "lr": LogisticRegression(max_iter=2000),
      "rf": RandomForestClassifier(n_estimators=rf_trees, random_state=seed, n_jobs=1),
  }
  # A generator that produced a single arm gives a constant classifier.
  single_arm = len(np.unique(train_arm)) < 2
  if not single_arm:
    for model in models.values():
      model.fit(_flat(train_x), train_arm)
  scores = {}
  for set_name, (x, arm) in eval_sets.items():
    scores[set_name] = {}
    for name, model in models.items():
      if single_arm:
        probability = np.full(len(arm), float(np.unique(train_arm)[0]))
      else:
        probability = model.predict_proba(_flat(x))[:, 1]
      auc = roc_auc_score(arm, probability) if len(np.unique(arm)) > 1 else math.nan
      scores[set_name][name] = {"accuracy": float(accuracy_score(arm, probability >= 0.5)),
                                "auc": float(auc)}
  return scores


def nearest_distances(queries: np.ndarray, references: np.ndarray, chunk: int = 1024) -> np.ndarray:
  """Euclidean distance from each query to its nearest reference (flattened, scaled units)."""
  q, r = _flat(queries), _flat(references)
  r_sq = np.sum(r * r, axis=1)
  out = np.empty(len(q))
  for start in range(0, len(q), chunk):
    block = q[start:start + chunk]
    sq = np.sum(block * block, axis=1)[:, None] - 2 * block @ r.T + r_sq[None, :]
    out[start:start + chunk] = np.sqrt(np.maximum(sq.min(axis=1), 0.0))
  return out


def memorisation_check(synthetic: np.ndarray, train_x: np.ndarray, heldout_x: np.ndarray,
                       seed: int) -> dict:
  """Nearest-training vs nearest-held-out distances of synthetic records.

  It measures distances to TRAINING records: a private diagnostic (written under private/),
  not a released result.

  A random subset of the training records of the held-out set's size is the reference, so
  both references are equally dense: a generator that does not memorise puts its records as
  close to one as to the other (closer_to_train_fraction ~ 0.5, median ratio ~ 1).
  """
  rng = np.random.default_rng(seed)
  size = min(len(train_x), len(heldout_x))
  train_ref = train_x[rng.choice(len(train_x), size, replace=False)]
  heldout_ref = heldout_x[rng.choice(len(heldout_x), size, replace=False)]
  to_train = nearest_distances(synthetic, train_ref)
  to_heldout = nearest_distances(synthetic, heldout_ref)
  quantiles = lambda d: {f"q{int(100 * q)}": float(np.quantile(d, q)) for q in (0.05, 0.25, 0.5, 0.75)}
  return {
      "reference_size": int(size),
      "to_train": quantiles(to_train),
      "to_heldout": quantiles(to_heldout),
      "median_ratio_train_over_heldout": float(np.median(to_train) / max(np.median(to_heldout), 1e-12)),
      "closer_to_train_fraction": float(np.mean(to_train < to_heldout)),
      "exact_copies_of_train": int(np.sum(to_train < 1e-6)),
      # Collapsed or saturated output makes the fractions above degenerate (the same few
      # extreme reference records are nearest to everything):
      # the synthetic spread over the real one (<< 1 or >> 1) tells when.
      "spread_ratio_synthetic_over_train": float(np.mean(np.std(_flat(synthetic), axis=0))
                                                 / max(np.mean(np.std(_flat(train_x), axis=0)), 1e-12)),
  }


def trajectory(x: np.ndarray, arm: np.ndarray, data: trials.TrialData) -> dict:
  """Median first-feature trajectory (original units) per arm: {"0": [...], "1": [...]}."""
  log1p = data.transforms[0] == "log1p"
  return {str(a): trials.median_trajectory(x[arm == a], 0, data.scale, log1p).tolist()
          for a in (0, 1) if np.any(arm == a)}


# ----- one variant --------------------------------------------------------------------------

@dataclasses.dataclass
class Splits:
  train: trials.TrialData
  validation: trials.TrialData
  test: trials.TrialData

  def heldout_sets(self) -> dict:
    return {"validation": (self.validation.x, self.validation.arm),
            "test": (self.test.x, self.test.arm)}


@dataclasses.dataclass
class VariantRun:
  """One trained GAN: what results.json gets, its private diagnostics, its report entry."""
  public: dict
  diagnostics: dict
  release: dict


def _synthetic_dir(name: str, workdir: str) -> str:
  """Where a variant's synthetic participants go: released for the DP GAN only."""
  variant_dir = os.path.join(workdir, VARIANT_DIRS[name])
  if name == VARIANT_PRIVATE:
    return os.path.join(variant_dir, "synthetic")
  return os.path.join(report.private_dir(variant_dir), "synthetic")


def _samples_path(synthetic_dir: str, step: int) -> str:
  return os.path.join(synthetic_dir, f"step_{step:07d}.npz")


def _flat_scores(scores: dict) -> dict:
  """{"validation_lr_auc": ..., "test_rf_accuracy": ...}: one flat line of the public history."""
  return {f"{split}_{clf}_{metric}": scores[split][clf][metric]
          for split in scores for clf in CLASSIFIERS for metric in METRICS}


def _nan_low(value: float) -> float:
  return -math.inf if math.isnan(value) else value


def _noise_multiplier(private: bool, config: GanExperimentConfig, num_train: int) -> float:
  if not private:
    return 0.0
  if config.target_epsilon is None:
    return config.noise
  noise = gan_training.calibrate_noise(config.target_epsilon, config.delta, num_train,
                                       config.batch_size, config.epochs, config.accountant)
  logging.info("noise multiplier %.4f for epsilon %.3g at delta %g over %d epochs", noise,
               config.target_epsilon, config.delta, config.epochs)
  return noise


def _train_variant(name: str, config: GanExperimentConfig, splits: Splits, workdir: str,
                   randomness: randomness_lib.PrivateRandomness) -> VariantRun:
  private = name == VARIANT_PRIVATE
  num_train = splits.train.num_participants
  train_config = gan_training.GanTrainConfig(
      batch_size=config.batch_size, learning_rate=config.lr, clip_norm=config.clip_value,
      noise_multiplier=_noise_multiplier(private, config, num_train), private=private,
      dropout=config.dropout, microbatch_size=config.microbatch_size)
  generator, discriminator = networks(config, splits.train)
  variant_dir = os.path.join(workdir, VARIANT_DIRS[name])
  synthetic_dir = _synthetic_dir(name, workdir)
  os.makedirs(synthetic_dir, exist_ok=True)
  num_synthetic = config.num_synthetic or num_train
  # Public randomness: the latents of released synthetic data are post-processing.
  sample_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 7919)
  sample_fn = jax.jit(lambda g_params, key: gan.sample(g_params, key, num_synthetic, 0.5,
                                                       generator))

  def on_eval(step: int, params: dict) -> dict:
    synthetic, arm = jax.device_get(sample_fn(params[gan_training.GENERATOR],
                                              jax.random.fold_in(sample_key, step)))
    np.savez_compressed(_samples_path(synthetic_dir, step), x=synthetic, arm=arm)
    return _flat_scores(classifier_scores(synthetic, arm, splits.heldout_sets(), config.seed,
                                          config.rf_trees))

  result = gan_training.train_gan(
      splits.train.x, splits.train.arm, generator=generator, discriminator=discriminator,
      config=train_config, epochs=config.epochs, seed=config.seed, delta=config.delta,
      accountant=config.accountant, randomness=randomness, stream=f"gan {name}",
      workdir=variant_dir, eval_every_epochs=config.eval_every, on_eval=on_eval,
      run_config=randomness_lib.redact(dataclasses.asdict(config), randomness))

  evaluated = [h for h in result.history if "validation_lr_auc" in h]
  by_step = {h["step"]: h for h in evaluated}
  # Chosen on the validation participants by AUC (ties: accuracy, then the earlier step), so
  # the test scores reported for the chosen step are not selected on themselves.
  rank = lambda clf: sorted(evaluated, key=lambda h: (-_nan_low(h[f"validation_{clf}_auc"]),
                                                       -h[f"validation_{clf}_accuracy"], h["step"]))
  top = {clf: [h["step"] for h in rank(clf)[:config.top_k]] for clf in CLASSIFIERS}
  final_step = result.num_steps

  def scores_at(step: int) -> dict:
    h = by_step[step]
    return {"step": step, "epoch": h["epoch"],
            **{clf: {m: h[f"test_{clf}_{m}"] for m in METRICS} for clf in CLASSIFIERS},
            "validation": {clf: {m: h[f"validation_{clf}_{m}"] for m in METRICS}
                           for clf in CLASSIFIERS}}

  def load(steps):
    parts = [np.load(_samples_path(synthetic_dir, s)) for s in steps]
    return np.concatenate([p["x"] for p in parts]), np.concatenate([p["arm"] for p in parts])

  panels = {"final": [final_step], "best_lr": top["lr"][:1], "best_rf": top["rf"][:1],
            "top_k": sorted(set(top["lr"]) | set(top["rf"]))}
  trajectories = {panel: trajectory(*load(steps), splits.train) for panel, steps in panels.items()}
  epsilon = result.ledger.epsilon(config.delta, config.accountant) if private else math.inf
  synthetic_files = {os.path.relpath(_samples_path(synthetic_dir, h["step"]), workdir):
                     h["epsilon"] for h in evaluated}
  public = {
      "private": private,
      "epsilon": epsilon,
      "delta": config.delta,
      "noise_multiplier": train_config.noise_multiplier,
      "clip_norm": config.clip_value if private else None,
      "discriminator_steps": result.ledger.steps,
      "steps_per_epoch": result.steps_per_epoch,
      "final": scores_at(final_step),
      "best_lr": scores_at(top["lr"][0]),
      "best_rf": scores_at(top["rf"][0]),
      "selection": ("best epochs by TSTR AUC on the validation participants; scores on the "
                    "test ones"),
      "top_lr_steps": top["lr"],
      "top_rf_steps": top["rf"],
      "panel_steps": panels,
      "panel_epochs": {p: [by_step[s]["epoch"] for s in steps] for p, steps in panels.items()},
      "trajectories": trajectories,
      "synthetic_files": list(synthetic_files) if private else [],
      "mean_examples_per_sec": float(np.mean([h["examples_per_sec"] for h in result.history])),
      "history": evaluated,
  }
  final_x, _ = load([final_step])
  diagnostics = {
      "memorisation_final": memorisation_check(final_x, splits.train.x, splits.test.x,
                                               config.seed),
      "training_statistics_file": os.path.relpath(
          os.path.join(report.private_dir(variant_dir), "metrics.jsonl"), workdir),
      "last_training_statistics": result.private_history[-1] if result.private_history else None,
  }
  progress = os.path.relpath(os.path.join(variant_dir, gan_training.PROGRESS_FILE), workdir)
  if private:
    release = result.run.release(
        "DP GAN: synthetic participants of every evaluated step, their TSTR scores and Figure 2 "
        "curves, its rows of the summary", list(synthetic_files) + [progress], config.delta,
        config.accountant)
    release["epsilon_at_step"] = synthetic_files
  else:
    release = result.run.release(
        "non-private GAN (baseline): its TSTR scores and Figure 2 curves, its rows of the "
        "summary (its synthetic data stay under private/)", [progress], config.delta,
        config.accountant)
  release["unit"] = "participant"
  return VariantRun(public=public, diagnostics=diagnostics, release=release)


# ----- outputs ------------------------------------------------------------------------------

PANEL_TITLES = {
    "final": "A. Final epoch",
    "best_lr": "B. Best logistic-regression epoch (on validation)",
    "best_rf": "C. Best random-forest epoch (on validation)",
    "top_k": "D. Top epochs of each classifier (pooled)",
}
ARM_NAMES = {"0": "control / standard arm", "1": "active / intensive arm"}
REAL_CURVE_LABEL = "real (held-out test participants)"


def _epoch_label(epoch: float) -> str:
  return str(int(epoch)) if float(epoch).is_integer() else f"{epoch:g}"


def plot_trajectories(results: dict, data: trials.TrialData, workdir: str, prefix: str) -> list[str]:
  """Figure 2 A-D: per panel one PNG with a subplot per arm, real vs each variant."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  visits = list(data.visit_names)
  unit = data.feature_names[0]
  written = []
  for letter, panel in zip("ABCD", PANEL_TITLES):
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, arm in zip(axes, ("0", "1")):
      if arm in results["real_trajectories"]:
        ax.plot(visits, results["real_trajectories"][arm], "k-o", label=REAL_CURVE_LABEL)
      for variant, style in ((VARIANT_PRIVATE, "C0-s"), (VARIANT_NONPRIVATE, "C1-^")):
        if variant not in results["variants"]:
          continue
        v = results["variants"][variant]
        if arm not in v["trajectories"][panel]:
          continue
        label = (f"private (eps={v['epsilon']:.2f})" if v["private"] else "non-private")
        epochs = v["panel_epochs"][panel]
        label += (f", epoch{'s' if len(epochs) > 1 else ''} "
                  f"{','.join(_epoch_label(e) for e in epochs)}")
        ax.plot(visits, v["trajectories"][panel][arm], style, label=label)
      ax.set_title(ARM_NAMES[arm])
      ax.set_xlabel("visit")
      ax.tick_params(axis="x", labelrotation=45)
    axes[0].set_ylabel(f"median {unit}")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{PANEL_TITLES[panel]} ({data.feature_names[0]}, {results['dataset']})")
    fig.tight_layout()
    path = os.path.join(workdir, f"{prefix}figure2{letter}_{panel}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
  return written


def summary_rows(results: dict) -> list[dict]:
  """TRTR and, per variant, the final and the validation-chosen epochs, scored on test."""
  rows = []
  if "trtr" in results:
    rows.append({"model": "trained on real (TRTR)", "epoch": "", "epsilon": "inf",
                 **_row_scores(results["trtr"]["test"])})
  for name, v in results["variants"].items():
    epsilon = v["epsilon"]
    for which in ("final", "best_lr", "best_rf"):
      rows.append({"model": f"{name} GAN, {which} (TSTR)", "epoch": v[which]["epoch"],
                   "epsilon": f"{epsilon:.3f}" if math.isfinite(epsilon) else "inf",
                   **_row_scores(v[which])})
  return rows


def _row_scores(scores: dict) -> dict:
  return {f"{clf}_{metric}": f"{scores[clf][metric]:.3f}" for clf in CLASSIFIERS
          for metric in METRICS}


def write_tables(rows: list[dict], workdir: str, prefix: str) -> list[str]:
  """summary.csv (through `csv`: the model names hold commas) and summary.md."""
  columns = list(rows[0])
  csv_path = os.path.join(workdir, f"{prefix}summary.csv")
  with open(csv_path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
  md_path = os.path.join(workdir, f"{prefix}summary.md")
  with open(md_path, "w") as f:
    f.write("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n")
    for row in rows:
      f.write("| " + " | ".join(str(row[c]) for c in columns) + " |\n")
  return [csv_path, md_path]


def _json_safe(value):
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # "inf": JSON has no infinity
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  return value


def _write_json(path: str, value) -> None:
  with open(path, "w") as f:
    json.dump(_json_safe(value), f, indent=2)


def not_covered(config: GanExperimentConfig, data: trials.TrialData) -> list[str]:
  """What the DP GAN's epsilon does not cover in this study."""
  items = list(data.not_covered) + [
      "best-epoch selection: Figure 2 B-D and the best_lr/best_rf rows release the generator "
      "of the step with the best TSTR score on the held-out VALIDATION participants, read in "
      "the clear outside any DP mechanism (post-processing for the training participants, but "
      "unprotected for the validation ones and not accounted); the final-epoch panel and rows "
      "involve no selection",
      "held-out participants (validation and test splits) are used in the clear: TSTR and "
      "TRTR scores and the real median trajectories of Figure 2 (test participants) are exact "
      "statistics of them; the guarantee covers the training participants only",
      "num_train (hence the sampling rate batch_size / num_train that calibrates the noise) is "
      "released in results.json and treated as public",
  ]
  if config.nonprivate_baseline:
    items.append("the non-private baselines (TRTR classifiers fit on the real training "
                 "participants, the non-private GAN's TSTR scores and Figure 2 curves) have "
                 "epsilon = inf; rerun with --nonprivate_baseline=false to release only DP "
                 "outputs")
  return items


def _public_description(data: trials.TrialData, config: GanExperimentConfig,
                        randomness: randomness_lib.PrivateRandomness) -> str:
  """The data description, without the seed when it is the secret of the private randomness."""
  if randomness.secure:
    return data.description
  return data.description.replace(f"seed {config.seed}", "seed <secret: see private/>")


def train_and_evaluate(config: GanExperimentConfig, workdir: str,
                       data_dir: str | None = None) -> dict:
  """Trains the requested variants, evaluates them, writes every output; returns results."""
  os.makedirs(workdir, exist_ok=True)
  randomness = randomness_lib.from_flag(config.reproducible_private_randomness, config.seed)
  private_dir = report.private_dir(workdir)
  _write_json(os.path.join(workdir, "config.json"),
              randomness_lib.redact(dataclasses.asdict(config), randomness))
  report.save_secret_seed(workdir, randomness)
  data = load_data(config, data_dir)
  splits = Splits(*split(data, config))
  logging.info("%s: %d training, %d validation, %d test participants", data.description,
               splits.train.num_participants, splits.validation.num_participants,
               splits.test.num_participants)
  if config.delta >= 1.0 / splits.train.num_participants:
    logging.warning("delta=%g >= 1/N=%g: use a delta well below 1/N.", config.delta,
                    1.0 / splits.train.num_participants)

  results = {
      "dataset": config.dataset,
      "description": _public_description(data, config, randomness),
      "num_train": splits.train.num_participants,
      "num_validation": splits.validation.num_participants,
      "num_test": splits.test.num_participants,
      "real_trajectories": trajectory(splits.test.x, splits.test.arm, data),
      "real_trajectories_of": "held-out test participants",
      "variants": {},
  }
  if config.nonprivate_baseline:
    results["trtr"] = classifier_scores(splits.train.x, splits.train.arm,
                                        {"test": (splits.test.x, splits.test.arm)}, config.seed,
                                        config.rf_trees)
  variants = ([VARIANT_PRIVATE] if config.private else []) + (
      [VARIANT_NONPRIVATE] if config.nonprivate_baseline else [])
  runs = {}
  for name in variants:
    runs[name] = _train_variant(name, config, splits, workdir, randomness)
    results["variants"][name] = runs[name].public
  if VARIANT_PRIVATE in results["variants"]:
    results["epsilon"] = results["variants"][VARIANT_PRIVATE]["epsilon"]
    results["delta"] = config.delta
  plots = plot_trajectories(results, data, workdir, config.prefix)
  results["plots"] = plots
  rows = summary_rows(results)
  tables = write_tables(rows, workdir, config.prefix)
  results_path = os.path.join(workdir, f"{config.prefix}results.json")
  _write_json(results_path, results)
  _write_json(os.path.join(private_dir, f"{config.prefix}diagnostics.json"),
              {name: run.diagnostics for name, run in runs.items()})
  write_report(config, data, workdir, runs, [results_path] + tables + plots, randomness)
  for row in rows:
    logging.info("%s", " ".join(f"{k}={v}" for k, v in row.items()))
  return results


def write_report(config: GanExperimentConfig, data: trials.TrialData, workdir: str,
                 runs: dict, shared_files: list[str],
                 randomness: randomness_lib.PrivateRandomness) -> None:
  """privacy_report.{json,md}: each variant's release (the files it shares with the others are
  results.json, the summary tables and the figures), the TRTR baseline, what is not covered."""
  shared = [os.path.relpath(f, workdir) for f in shared_files]
  releases = []
  for run in runs.values():
    releases.append({**run.release, "files": run.release["files"] + shared})
  if config.nonprivate_baseline:
    releases.append(report.release(
        "TRTR baseline: classifiers fit on the real training participants, scored on the test "
        "ones", [f"{config.prefix}results.json", f"{config.prefix}summary.csv",
                 f"{config.prefix}summary.md"],
        epsilon=math.inf, delta=0.0, mechanism="none (non-private baseline)",
        unit="participant"))
  notes = [
      "the DP GAN's synthetic data sets of all evaluated steps are post-processing of one "
      "private run: its epsilon covers all of them released together; 'epsilon_at_step' gives "
      "each file's own (smaller) epsilon if it alone is released",
      "synthetic latents and arms are drawn from --seed: public randomness, post-processing",
  ]
  if not randomness.secure:
    notes.append("--seed also draws the data split, the simulation and the initialisation, "
                 "whose effects are released: a small seed can be found by search; use a large "
                 "random one (e.g. python -c 'import secrets; print(secrets.randbits(63))')")
  report.write_privacy_report(workdir, releases, randomness,
                              not_covered=not_covered(config, data), unit="participant",
                              notes=notes)


# ----- command line -------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the command-line flags (only when run as a script, so modules import together)."""
  flags.DEFINE_string("workdir", None, "Output directory (checkpoints, results.json, plots).")
  flags.DEFINE_enum("preset", "quick", PRESETS, "Base configuration; other flags override it.")
  flags.DEFINE_enum("mode", "train", ("train", "benchmark"),
                    "train: the study; benchmark: examples/s of the private discriminator step.")
  flags.DEFINE_string("data_dir", None, "Data folder (default: dpjax.data.paths.default_data_dir()).")
  flags.DEFINE_enum("dataset", None, list(trials.DATASET_NAMES), "Trial data set.")
  flags.DEFINE_integer("num_participants", None, "Random subset of participants.")
  flags.DEFINE_float("noise", None, "Noise multiplier (ignored with --target_epsilon).")
  flags.DEFINE_float("clip_value", None, "Clip norm of each (real, generated) pair's gradient.")
  flags.DEFINE_integer("epochs", None, "Training epochs.")
  flags.DEFINE_float("lr", None, "Adam learning rate (both networks).")
  flags.DEFINE_integer("batch_size", None, "Expected real participants per discriminator step.")
  flags.DEFINE_string("prefix", None, "Prefix of the output file names (the study's --prefix).")
  flags.DEFINE_float("target_epsilon", None, "Calibrate the noise to spend this epsilon.")
  flags.DEFINE_float("delta", None, "Delta of (epsilon, delta)-DP.")
  flags.DEFINE_integer("seed", None, "Public seed: data split, simulation, initialisation and the "
                       "latents of synthetic samples (batches and noise: OS CSPRNG).")
  flags.DEFINE_bool("reproducible_private_randomness", None,
                    "Derive batches and noise from --seed, which then becomes a secret (kept out "
                    "of config.json and results.json, written to private/secret_seed.json).")
  flags.DEFINE_float("test_fraction", None, "Held-out participants the scores are reported on.")
  flags.DEFINE_float("validation_fraction", None,
                     "Held-out participants that choose the best epochs.")
  flags.DEFINE_integer("eval_every", None, "Evaluate every this many epochs.")
  flags.DEFINE_bool("private", None, "Train the private GAN.")
  flags.DEFINE_bool("nonprivate_baseline", None,
                    "Also train the non-private baselines (a non-private GAN, TRTR): epsilon inf.")
  flags.DEFINE_integer("num_synthetic", None, "Synthetic participants per evaluation.")
  flags.DEFINE_integer("generator_conv_channels", None, "Generator conv width (study: 256).")
  flags.DEFINE_integer("discriminator_width", None, "Discriminator dense width (study: 1024).")
  flags.DEFINE_integer("rf_trees", None, "Random forest trees.")
  flags.DEFINE_integer("microbatch_size", None, "Clip this many pairs at a time.")
  flags.DEFINE_list("benchmark_batch_sizes", ["1", "4", "8", "16", "32"],
                    "Batch sizes of --mode=benchmark (the first should be 1).")


_OVERRIDES = ("dataset", "num_participants", "noise", "clip_value", "epochs", "lr", "batch_size",
              "prefix", "target_epsilon", "delta", "seed", "reproducible_private_randomness",
              "test_fraction", "validation_fraction", "eval_every", "private",
              "nonprivate_baseline", "num_synthetic", "generator_conv_channels",
              "discriminator_width", "rf_trees", "microbatch_size")


def config_from_flags() -> GanExperimentConfig:
  overrides = {name: FLAGS[name].value for name in _OVERRIDES if FLAGS[name].present}
  try:
    return dataclasses.replace(preset(FLAGS.preset), **overrides)
  except ValueError as e:
    raise app.UsageError(str(e)) from e


def run_benchmark(config: GanExperimentConfig, workdir: str, batch_sizes) -> list[dict]:
  generator = gan.Generator(coarse_channels=config.generator_coarse_channels,
                            conv_channels=config.generator_conv_channels)
  discriminator = gan.Discriminator(dense_width=config.discriminator_width)
  train_config = gan_training.GanTrainConfig(clip_norm=config.clip_value,
                                             microbatch_size=config.microbatch_size)
  rows = gan_training.discriminator_throughput(generator, discriminator, train_config,
                                               batch_sizes, seed=config.seed)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, f"{config.prefix}benchmark.json"), "w") as f:
    json.dump({"generator_conv_channels": config.generator_conv_channels,
               "discriminator_width": config.discriminator_width,
               "microbatch_size": config.microbatch_size, "rows": rows}, f, indent=2)
  for row in rows:
    logging.info("batch %d: %.1f examples/s (x%.2f vs batch 1)", row["batch_size"],
                 row["examples_per_sec"], row["speedup_vs_batch_1"] or math.nan)
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required.")
  config = config_from_flags()
  if FLAGS.mode == "benchmark":
    try:
      batch_sizes = [int(b) for b in FLAGS.benchmark_batch_sizes]
    except ValueError as e:
      raise app.UsageError(f"--benchmark_batch_sizes must be integers: {e}") from e
    run_benchmark(config, FLAGS.workdir, batch_sizes)
    return
  data_dir = FLAGS.data_dir or paths.default_data_dir()
  train_and_evaluate(config, FLAGS.workdir, data_dir)


if __name__ == "__main__":
  define_flags()
  app.run(main)
