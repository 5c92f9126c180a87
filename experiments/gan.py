"""The DP GAN study (Beaulieu-Jones et al., SPRINT_gan): synthetic trial participants.

Trains the AC-GAN privately (and, for comparison, non-privately) on a trial's
(participants, features, visits) grids, and every `eval_every` epochs scores the generator by
train-synthetic-test-real: logistic regression and random forest fit on synthetic participants
to predict the arm, tested on held-out real participants, against the same models fit on the
real training participants. Writes results.json, a summary table, the study's Figure 2 A-D
(median trajectories of the first feature, real vs synthetic) and a memorisation check.

  python -m experiments.gan --workdir=/tmp/gan --preset=quick
  python -m experiments.gan --workdir=/tmp/gan_paper --preset=paper \\
      --noise 1 --clip_value 0.0001 --epochs 500 --lr 2e-05 --batch_size 1 --prefix 1_0.0001_2e-05_
  python -m experiments.gan --workdir=/tmp/gan_bench --mode=benchmark

Epsilon covers the training of the generator and everything sampled from it. It does NOT cover
choosing the "best" epochs by their scores on the real held-out participants (the study's
Figure 2 B-D): that selection reads real data outside the mechanism; the final epoch is the
honestly private result.
"""

from __future__ import annotations

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
from dpjax.data import paths
from dpjax.data import trials
from dpjax.models import gan

PRESETS = ("quick", "paper", "tiny")
VARIANT_PRIVATE, VARIANT_NONPRIVATE = "private", "nonprivate"


@dataclasses.dataclass(frozen=True)
class GanExperimentConfig:
  """One study run; `preset()` gives the named configurations.

  Attributes (beyond the study's command line `noise`, `clip_value`, `epochs`, `lr`,
  `batch_size`, `prefix`):
    dataset: one of `trials.DATASET_NAMES` (the study: "sprint"; offline: "sprint_sim").
    num_participants: keep a random subset of this many participants (None: all); for
      "sprint_sim" the simulator draws exactly this many.
    test_fraction: held-out real participants for the TSTR/TRTR tests and memorisation check.
    target_epsilon: calibrate `noise` so that the whole run spends this epsilon at `delta`.
    private: train the private GAN; `nonprivate_baseline`: also train a non-private one.
    eval_every: TSTR evaluation every this many epochs (and always at the last).
    num_synthetic: synthetic participants per evaluation (None: as many as training ones).
    generator_conv_channels / discriminator_width: the study's 256 / 1024; narrower for speed.
    dropout: the discriminator's dropout (0.3) in training.
    rf_trees: trees of the random forests.
    top_k: how many best epochs per classifier Figure 2D pools.
    microbatch_size: clip this many pairs at a time (see BUILD_NOTES.md, DP GAN section, on speed).
  """
  dataset: str = "sprint_sim"
  num_participants: int | None = None
  test_fraction: float = 0.2
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

  def __post_init__(self):
    if self.dataset not in trials.DATASET_NAMES:
      raise ValueError(f"--dataset={self.dataset!r}: choose one of {list(trials.DATASET_NAMES)}.")
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


def classifier_scores(train_x, train_arm, test_x, test_arm, seed: int, rf_trees: int) -> dict:
  """Accuracy and AUC on (test_x, test_arm) of LR and RF fit on (train_x, train_arm)."""
  from sklearn.ensemble import RandomForestClassifier  # pylint: disable=import-outside-toplevel
  from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
  from sklearn.metrics import accuracy_score, roc_auc_score  # pylint: disable=import-outside-toplevel

  train_features, test_features = _flat(train_x), _flat(test_x)
  models = {
      # Features are already scaled to [0, 1]. Standardising by the SYNTHETIC data's spread
      # would blow up real test values on features a generator made almost constant.
      "lr": LogisticRegression(max_iter=2000),
      "rf": RandomForestClassifier(n_estimators=rf_trees, random_state=seed, n_jobs=1),
  }
  scores = {}
  for name, model in models.items():
    if len(np.unique(train_arm)) < 2:
      # A generator that produced a single arm gives a constant classifier.
      constant = float(np.unique(train_arm)[0])
      probability = np.full(len(test_arm), constant)
    else:
      model.fit(train_features, train_arm)
      probability = model.predict_proba(test_features)[:, 1]
    auc = roc_auc_score(test_arm, probability) if len(np.unique(test_arm)) > 1 else math.nan
    scores[name] = {"accuracy": float(accuracy_score(test_arm, probability >= 0.5)),
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

def _samples_path(variant_dir: str, epoch: int) -> str:
  return os.path.join(variant_dir, "samples", f"epoch_{epoch:04d}.npz")


def _train_variant(name: str, config: GanExperimentConfig, train_data: trials.TrialData,
                   test_data: trials.TrialData, workdir: str) -> dict:
  private = name == VARIANT_PRIVATE
  num_train = train_data.num_participants
  noise = config.noise
  if private and config.target_epsilon is not None:
    noise = gan_training.calibrate_noise(config.target_epsilon, config.delta, num_train,
                                         config.batch_size, config.epochs, config.accountant)
    logging.info("%s: noise multiplier %.4f for epsilon %.3g at delta %g over %d epochs",
                 name, noise, config.target_epsilon, config.delta, config.epochs)
  train_config = gan_training.GanTrainConfig(
      batch_size=config.batch_size, learning_rate=config.lr, clip_norm=config.clip_value,
      noise_multiplier=noise if private else 0.0, private=private, dropout=config.dropout,
      microbatch_size=config.microbatch_size)
  generator, discriminator = networks(config, train_data)
  variant_dir = os.path.join(workdir, name)
  os.makedirs(os.path.join(variant_dir, "samples"), exist_ok=True)
  num_synthetic = config.num_synthetic or num_train
  sample_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 7919)
  sample_fn = jax.jit(lambda g_params, key: gan.sample(g_params, key, num_synthetic, 0.5,
                                                       generator))

  def on_epoch(epoch: int, state) -> dict:
    if epoch % config.eval_every and epoch != config.epochs:
      return {}
    synthetic, arm = jax.device_get(sample_fn(state.g_params, jax.random.fold_in(sample_key, epoch)))
    np.savez_compressed(_samples_path(variant_dir, epoch), x=synthetic, arm=arm)
    scores = classifier_scores(synthetic, arm, test_data.x, test_data.arm, config.seed,
                               config.rf_trees)
    return {"evaluated": True, "tstr_lr_accuracy": scores["lr"]["accuracy"],
            "tstr_lr_auc": scores["lr"]["auc"], "tstr_rf_accuracy": scores["rf"]["accuracy"],
            "tstr_rf_auc": scores["rf"]["auc"]}

  result = gan_training.train_gan(
      train_data.x, train_data.arm, generator=generator, discriminator=discriminator,
      config=train_config, epochs=config.epochs, seed=config.seed, delta=config.delta,
      accountant=config.accountant, workdir=variant_dir, on_epoch=on_epoch,
      run_config=dataclasses.asdict(config))
  with open(os.path.join(variant_dir, "history.jsonl"), "w") as f:
    for entry in result.history:
      f.write(json.dumps(entry) + "\n")

  evaluated = [h for h in result.history if h.get("evaluated")]
  by_epoch = {h["epoch"]: h for h in evaluated}
  # Ranked by AUC (ties by accuracy, then the earlier epoch): AUC does not depend on a threshold.
  rank = lambda clf: sorted(evaluated, key=lambda h: (-_nan_low(h[f"tstr_{clf}_auc"]),
                                                       -h[f"tstr_{clf}_accuracy"], h["epoch"]))
  top = {clf: [h["epoch"] for h in rank(clf)[:config.top_k]] for clf in ("lr", "rf")}
  final_epoch = config.epochs

  def scores_at(epoch):
    h = by_epoch[epoch]
    return {"epoch": epoch, **{clf: {"accuracy": h[f"tstr_{clf}_accuracy"],
                                     "auc": h[f"tstr_{clf}_auc"]} for clf in ("lr", "rf")}}

  def load(epochs):
    parts = [np.load(_samples_path(variant_dir, e)) for e in epochs]
    return np.concatenate([p["x"] for p in parts]), np.concatenate([p["arm"] for p in parts])

  panels = {"final": [final_epoch], "best_lr": top["lr"][:1], "best_rf": top["rf"][:1],
            "top_k": sorted(set(top["lr"]) | set(top["rf"]))}
  trajectories = {panel: trajectory(*load(epochs), train_data) for panel, epochs in panels.items()}
  final_x, _ = load([final_epoch])
  epsilon = result.ledger.epsilon(config.delta, config.accountant) if private else math.inf
  return {
      "private": private,
      "epsilon": epsilon,
      "delta": config.delta,
      "noise_multiplier": train_config.noise_multiplier,
      "clip_norm": config.clip_value if private else None,
      "discriminator_steps": result.ledger.steps,
      "steps_per_epoch": result.steps_per_epoch,
      "final": scores_at(final_epoch),
      "best_lr": scores_at(top["lr"][0]),
      "best_rf": scores_at(top["rf"][0]),
      "top_lr_epochs": top["lr"],
      "top_rf_epochs": top["rf"],
      "panel_epochs": panels,
      "trajectories": trajectories,
      "memorisation_final": memorisation_check(final_x, train_data.x, test_data.x, config.seed),
      "mean_examples_per_sec": float(np.mean([h["examples_per_sec"] for h in result.history])),
      "history": [{k: v for k, v in h.items() if k != "evaluated"} for h in evaluated],
  }


def _nan_low(value: float) -> float:
  return -math.inf if math.isnan(value) else value


# ----- outputs ------------------------------------------------------------------------------

PANEL_TITLES = {
    "final": "A. Final epoch",
    "best_lr": "B. Best logistic-regression epoch",
    "best_rf": "C. Best random-forest epoch",
    "top_k": "D. Top epochs of each classifier (pooled)",
}
ARM_NAMES = {"0": "control / standard arm", "1": "active / intensive arm"}


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
      ax.plot(visits, results["real_trajectories"][arm], "k-o", label="real (all participants)")
      for variant, style in ((VARIANT_PRIVATE, "C0-s"), (VARIANT_NONPRIVATE, "C1-^")):
        if variant not in results["variants"]:
          continue
        v = results["variants"][variant]
        if arm not in v["trajectories"][panel]:
          continue
        label = (f"private (eps={v['epsilon']:.2f})" if v["private"] else "non-private")
        epochs = v["panel_epochs"][panel]
        label += f", epoch{'s' if len(epochs) > 1 else ''} {','.join(map(str, epochs))}"
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
  rows = [{"model": "trained on real (TRTR)", "epoch": "", "epsilon": "",
           **_flat_scores(results["trtr"])}]
  for name, v in results["variants"].items():
    for which in ("final", "best_lr", "best_rf"):
      rows.append({"model": f"{name} GAN, {which} (TSTR)", "epoch": v[which]["epoch"],
                   "epsilon": f"{v['epsilon']:.3f}", **_flat_scores(v[which])})
  return rows


def _flat_scores(scores: dict) -> dict:
  return {f"{clf}_{metric}": f"{scores[clf][metric]:.3f}" for clf in ("lr", "rf")
          for metric in ("accuracy", "auc")}


def write_tables(rows: list[dict], workdir: str, prefix: str) -> None:
  columns = list(rows[0])
  with open(os.path.join(workdir, f"{prefix}summary.csv"), "w") as f:
    f.write(",".join(columns) + "\n")
    for row in rows:
      f.write(",".join(str(row[c]) for c in columns) + "\n")
  with open(os.path.join(workdir, f"{prefix}summary.md"), "w") as f:
    f.write("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n")
    for row in rows:
      f.write("| " + " | ".join(str(row[c]) for c in columns) + " |\n")


def _json_safe(value):
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # "inf": JSON has no infinity
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  return value


def train_and_evaluate(config: GanExperimentConfig, workdir: str,
                       data_dir: str | None = None) -> dict:
  """Trains the requested variants, evaluates them, writes every output; returns results."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(dataclasses.asdict(config), f, indent=2)
  data = load_data(config, data_dir)
  train_data, test_data = trials.train_test_split(data, config.test_fraction, config.seed)
  logging.info("%s: %d training, %d held-out participants", data.description,
               train_data.num_participants, test_data.num_participants)
  if config.delta >= 1.0 / train_data.num_participants:
    logging.warning("delta=%g >= 1/N=%g: use a delta well below 1/N.", config.delta,
                    1.0 / train_data.num_participants)

  results = {
      "dataset": config.dataset,
      "description": data.description,
      "num_train": train_data.num_participants,
      "num_test": test_data.num_participants,
      "trtr": classifier_scores(train_data.x, train_data.arm, test_data.x, test_data.arm,
                                config.seed, config.rf_trees),
      "real_trajectories": trajectory(data.x, data.arm, data),
      "variants": {},
  }
  variants = ([VARIANT_PRIVATE] if config.private else []) + (
      [VARIANT_NONPRIVATE] if config.nonprivate_baseline else [])
  for name in variants:
    results["variants"][name] = _train_variant(name, config, train_data, test_data, workdir)
  if VARIANT_PRIVATE in results["variants"]:
    results["epsilon"] = results["variants"][VARIANT_PRIVATE]["epsilon"]
    results["delta"] = config.delta
  results["plots"] = plot_trajectories(results, data, workdir, config.prefix)
  rows = summary_rows(results)
  write_tables(rows, workdir, config.prefix)
  with open(os.path.join(workdir, f"{config.prefix}results.json"), "w") as f:
    json.dump(_json_safe(results), f, indent=2)
  for row in rows:
    logging.info("%s", " ".join(f"{k}={v}" for k, v in row.items()))
  return results


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
  flags.DEFINE_integer("seed", None, "Seed: data split, initialisation, batches, noise, samples.")
  flags.DEFINE_integer("eval_every", None, "Evaluate every this many epochs.")
  flags.DEFINE_bool("private", None, "Train the private GAN.")
  flags.DEFINE_bool("nonprivate_baseline", None, "Also train a non-private GAN.")
  flags.DEFINE_integer("num_synthetic", None, "Synthetic participants per evaluation.")
  flags.DEFINE_integer("generator_conv_channels", None, "Generator conv width (study: 256).")
  flags.DEFINE_integer("discriminator_width", None, "Discriminator dense width (study: 1024).")
  flags.DEFINE_integer("rf_trees", None, "Random forest trees.")
  flags.DEFINE_integer("microbatch_size", None, "Clip this many pairs at a time.")
  flags.DEFINE_list("benchmark_batch_sizes", ["1", "4", "8", "16", "32"],
                    "Batch sizes of --mode=benchmark (the first should be 1).")


_OVERRIDES = ("dataset", "num_participants", "noise", "clip_value", "epochs", "lr", "batch_size",
              "prefix", "target_epsilon", "delta", "seed", "eval_every", "private",
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
