"""The DP GAN study (Beaulieu-Jones et al., SPRINT_gan): synthetic trial participants.

Trains the AC-GAN privately (and, for comparison, non-privately) on a trial's
(participants, features, visits) grids, and every `eval_every` epochs scores the generator by
train-synthetic-test-real: logistic regression and random forest fit on synthetic participants
to predict the arm, tested on held-out real participants, against the same models fit on the
real training participants (TRTR). Writes results.json, a summary table, the study's Figure 2
A-D (median trajectories of the first feature, real vs synthetic) and privacy_report.{json,md}.

  python -m experiments.gan --config=experiments/gan/configs/quick.py --workdir=runs/gan_quick
  python -m experiments.gan --config=experiments/gan/configs/paper.py --workdir=runs/gan_paper \\
      --config.prefix=1_0.0001_2e-05_
  python -m experiments.gan --config=experiments/gan/configs/benchmark.py --workdir=runs/gan_bench

With --config.merf=true (quick.py and the real-trial configs) it also trains DP-MERF
(`merf.py`: one Gaussian release of a class-conditional random-feature mean embedding, then a
generator fit to that release alone), scored the same way. Every table row carries, besides
TSTR, the fidelity to the TEST participants: worst-visit median and interquartile-range error
of the first feature per arm (original units, mmHg for SPRINT) and the visit-to-visit
correlation error. --config.mode=sweep runs all of it once per epsilon of
--config.sweep_epsilons, each in epsilon_<e>/, with sweep.md across them.

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
--config.seed steers public choices only (data split, simulation, initialisation, the latents
of released synthetic data); batches and noise come from the OS CSPRNG unless
--config.reproducible_private_randomness=true makes the seed their secret.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import numpy as np
from absl import logging

from dpjax import accounting
from dpjax import randomness as randomness_lib
from dpjax import report
from dpjax.data import trials
from experiments.common import outputs
from experiments.gan import benchmark
from experiments.gan import evaluation
from experiments.gan import merf
from experiments.gan import models
from experiments.gan import settings
from experiments.gan import training
from experiments.gan.trajectories import plot_trajectories
from experiments.gan.trajectories import trajectory

VARIANT_PRIVATE, VARIANT_NONPRIVATE, VARIANT_MERF = "private", "nonprivate", "merf"
# Not "private/": that folder name is reserved for what must never be released.
VARIANT_DIRS = {VARIANT_PRIVATE: "dp_gan", VARIANT_NONPRIVATE: "nonprivate_gan",
                VARIANT_MERF: "dp_merf"}
VARIANT_LABELS = {VARIANT_PRIVATE: "private GAN", VARIANT_NONPRIVATE: "nonprivate GAN",
                  VARIANT_MERF: "DP-MERF"}
CLASSIFIERS = evaluation.CLASSIFIERS
METRICS = evaluation.METRICS


def load_data(config: settings.Config) -> trials.TrialData:
  """The trial of `config.dataset` (simulated, or read from `config.data_dir`)."""
  if config.dataset == "sprint_sim":
    return trials.simulate_sprint_like(config.seed, config.num_participants
                                       or trials.SPRINT_NUM_PARTICIPANTS)
  data = trials.load_trial_dataset(config.dataset, config.data_dir, config.seed)
  if config.num_participants is not None and config.num_participants < data.num_participants:
    rng = np.random.default_rng(config.seed)
    keep = np.sort(rng.choice(data.num_participants, config.num_participants, replace=False))
    data = trials.subset(data, keep)
  return data


def split(data: trials.TrialData, config: settings.Config):
  """(train, validation, test), stratified by arm; the training set is the one a plain
  train/test split at test_fraction + validation_fraction gives."""
  heldout_fraction = config.test_fraction + config.validation_fraction
  train_data, heldout = trials.train_test_split(data, heldout_fraction, config.seed)
  validation, test = trials.train_test_split(heldout, config.test_fraction / heldout_fraction,
                                             config.seed + 1)
  return train_data, validation, test


def networks(config: settings.Config, data: trials.TrialData):
  _, num_features, num_visits = data.x.shape
  generator = models.Generator(features=num_features, visits=num_visits,
                               coarse_channels=config.generator_coarse_channels,
                               conv_channels=config.generator_conv_channels)
  if config.discriminator_kind == "mlp":
    discriminator = models.MlpDiscriminator(dense_width=config.discriminator_width)
  else:
    discriminator = models.Discriminator(dense_width=config.discriminator_width)
  return generator, discriminator


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


def _nan_low(value: float) -> float:
  return -math.inf if math.isnan(value) else value


def _noise_multiplier(private: bool, config: settings.Config, num_train: int) -> float:
  if not private:
    return 0.0
  if config.target_epsilon is None:
    return config.noise_multiplier
  noise = training.calibrate_noise(config.target_epsilon, config.delta, num_train,
                                   config.batch_size, config.epochs, config.accountant)
  logging.info("noise multiplier %.4f for epsilon %.3g at delta %g over %d epochs", noise,
               config.target_epsilon, config.delta, config.epochs)
  return noise


def _train_variant(name: str, config: settings.Config, splits: Splits, workdir: str,
                   randomness: randomness_lib.PrivateRandomness) -> VariantRun:
  private = name == VARIANT_PRIVATE
  num_train = splits.train.num_participants
  train_config = training.GanTrainConfig(
      batch_size=config.batch_size, learning_rate=config.learning_rate,
      clip_norm=config.clip_norm, noise_multiplier=_noise_multiplier(private, config, num_train),
      private=private, dropout=config.dropout, microbatch_size=config.microbatch_size)
  generator, discriminator = networks(config, splits.train)
  variant_dir = os.path.join(workdir, VARIANT_DIRS[name])
  synthetic_dir = _synthetic_dir(name, workdir)
  os.makedirs(synthetic_dir, exist_ok=True)
  num_synthetic = config.num_synthetic or num_train
  # Public randomness: the latents of released synthetic data are post-processing.
  sample_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 7919)
  sample_fn = jax.jit(lambda g_params, key: models.sample(g_params, key, num_synthetic, 0.5,
                                                          generator))

  def on_eval(step: int, params: dict) -> dict:
    synthetic, arm = jax.device_get(sample_fn(params[training.GENERATOR],
                                              jax.random.fold_in(sample_key, step)))
    np.savez_compressed(_samples_path(synthetic_dir, step), x=synthetic, arm=arm)
    return evaluation.flat_scores(evaluation.classifier_scores(
        synthetic, arm, splits.heldout_sets(), config.seed, config.rf_trees))

  result = training.train_gan(
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
  panel_data = {panel: load(steps) for panel, steps in panels.items()}
  trajectories = {panel: trajectory(*xa, splits.train) for panel, xa in panel_data.items()}
  fidelity = {panel: evaluation.fidelity(*xa, splits.test.x, splits.test.arm,
                                         _to_units(splits.test))
              for panel, xa in panel_data.items()}
  epsilon = result.ledger.epsilon(config.delta, config.accountant) if private else math.inf
  synthetic_files = {os.path.relpath(_samples_path(synthetic_dir, h["step"]), workdir):
                     h["epsilon"] for h in evaluated}
  public = {
      "private": private,
      "label": VARIANT_LABELS[name],
      "epsilon": epsilon,
      "delta": config.delta,
      "noise_multiplier": train_config.noise_multiplier,
      "clip_norm": config.clip_norm if private else None,
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
      "fidelity": fidelity,
      "synthetic_files": list(synthetic_files) if private else [],
      "mean_examples_per_sec": float(np.mean([h["examples_per_sec"] for h in result.history])),
      "history": evaluated,
  }
  final_x, _ = load([final_step])
  diagnostics = {
      "memorisation_final": evaluation.memorisation_check(final_x, splits.train.x,
                                                          splits.test.x, config.seed),
      "training_statistics_file": os.path.relpath(
          os.path.join(report.private_dir(variant_dir), "metrics.jsonl"), workdir),
      "last_training_statistics": result.private_history[-1] if result.private_history else None,
  }
  progress = os.path.relpath(os.path.join(variant_dir, training.PROGRESS_FILE), workdir)
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


def _to_units(data: trials.TrialData):
  """Scaled grids laid out like `data` -> original units (the layout, not the values, of data)."""
  return lambda x: trials.to_original_units(x, data)


def _train_merf(config: settings.Config, splits: Splits, workdir: str,
                randomness: randomness_lib.PrivateRandomness) -> VariantRun:
  """DP-MERF: one Gaussian release of the training participants' embedding, then a generator
  fit to that release alone; scored like the GANs' final epoch (there is no epoch to choose)."""
  num_train = splits.train.num_participants
  epsilon_target = config.target_epsilon
  if epsilon_target is None:
    noise_multiplier = config.noise_multiplier
  else:
    noise_multiplier = merf.calibrate_noise(epsilon_target, config.delta, num_train,
                                            config.accountant)
  merf_config = config.merf_config(noise_multiplier)
  variant_dir = os.path.join(workdir, VARIANT_DIRS[VARIANT_MERF])
  os.makedirs(variant_dir, exist_ok=True)
  # The only read of the training participants:
  released = merf.release_embedding(splits.train.x, splits.train.arm, merf_config, config.seed,
                                    randomness, stream="merf embedding")
  embedding_path = os.path.join(variant_dir, "released_embedding.npz")
  np.savez_compressed(embedding_path, noisy_sum=released.noisy_sum, omega=released.omega,
                      feature_shape=np.asarray(released.feature_shape))
  # Post-processing of `released` with public randomness (the seed):
  params, losses = merf.fit_generator(released, config.seed)
  num_synthetic = config.num_synthetic or num_train
  synthetic, arm = merf.sample(params, released, num_synthetic,
                               jax.random.fold_in(jax.random.PRNGKey(config.seed), 7919))
  synthetic_path = os.path.join(variant_dir, "synthetic.npz")
  np.savez_compressed(synthetic_path, x=synthetic, arm=arm)
  scores = evaluation.classifier_scores(synthetic, arm, splits.heldout_sets(), config.seed,
                                        config.rf_trees)
  ledger = merf.ledger(num_train, noise_multiplier)
  epsilon = ledger.epsilon(config.delta, config.accountant) if noise_multiplier > 0 else math.inf
  public = {
      "private": noise_multiplier > 0,
      "label": VARIANT_LABELS[VARIANT_MERF],
      "epsilon": epsilon,
      "delta": config.delta,
      "noise_multiplier": noise_multiplier,
      "sensitivity": merf_config.sensitivity,
      "adjacency": "add or remove one participant",
      "released_arm_shares": released.arm_shares().tolist(),
      "merf": dataclasses.asdict(merf_config),
      "final": {"step": merf_config.steps, "epoch": "",
                **{clf: scores["test"][clf] for clf in CLASSIFIERS},
                "validation": {clf: scores["validation"][clf] for clf in CLASSIFIERS}},
      "panel_epochs": {"final": [""]},
      "trajectories": {"final": trajectory(synthetic, arm, splits.train)},
      "fidelity": {"final": evaluation.fidelity(synthetic, arm, splits.test.x, splits.test.arm,
                                                _to_units(splits.test))},
      # The fit's loss is a function of the release only (public).
      "generator_loss_every_100_steps": losses,
      "synthetic_files": [os.path.relpath(synthetic_path, workdir)],
  }
  diagnostics = {"memorisation_final": evaluation.memorisation_check(
      synthetic, splits.train.x, splits.test.x, config.seed)}
  files = [os.path.relpath(p, workdir) for p in (embedding_path, synthetic_path)]
  release = report.release(
      "DP-MERF: the noisy class-conditional random-feature embedding, the generator fit to it "
      "alone, its synthetic participants, TSTR scores, Figure 2 A curve and summary row", files,
      epsilon=epsilon, delta=config.delta, mechanism=merf.MECHANISM if noise_multiplier > 0
      else "none (DP-MERF without noise: epsilon = inf)", unit="participant",
      accountant=config.accountant, sampling="full (every training participant, once)",
      steps=1, noise_multiplier=noise_multiplier,
      clip_norm=f"none needed: ||contribution|| <= {merf_config.sensitivity:.4g} by construction",
      sensitivity=merf_config.sensitivity, adjacency="add or remove one participant",
      _ledger=ledger.to_dict())
  return VariantRun(public=public, diagnostics=diagnostics, release=release)


def summary_rows(results: dict) -> list[dict]:
  """TRTR and, per variant, the final and the validation-chosen epochs, scored on test: TSTR
  (LR, RF; accuracy, AUC) and fidelity to the test participants (worst-visit median and IQR
  error of the first feature per arm, in its original units; visit-to-visit correlation error)."""
  rows = []
  if "trtr" in results:
    rows.append({"model": "trained on real (TRTR)", "epoch": "", "epsilon": "inf",
                 **_row_scores(results["trtr"]["test"]),
                 **evaluation.fidelity_columns(results["trtr_fidelity"])})
  for name, v in results["variants"].items():
    epsilon = v["epsilon"]
    for which in ("final", "best_lr", "best_rf"):
      if which not in v:
        continue
      rows.append({"model": f"{v.get('label', name)}, {which} (TSTR)", "epoch": v[which]["epoch"],
                   "epsilon": f"{epsilon:.3f}" if math.isfinite(epsilon) else "inf",
                   **_row_scores(v[which]), **evaluation.fidelity_columns(v["fidelity"][which])})
  return rows


def memorisation_rows(rows: list[dict], results: dict, runs: dict) -> list[dict]:
  """The summary rows with the memorisation check of each final row: a PRIVATE table (it
  measures distances to training participants), written under private/ only."""
  finals = {f"{results['variants'][name].get('label', name)}, final (TSTR)":
            run.diagnostics["memorisation_final"] for name, run in runs.items()}
  out = []
  for row in rows:
    m = finals.get(row["model"])
    out.append({**row, **({} if m is None else {
        "mem_median_ratio": f"{m['median_ratio_train_over_heldout']:.3f}",
        "mem_closer_to_train": f"{m['closer_to_train_fraction']:.3f}",
        "mem_copies": m["exact_copies_of_train"],
        "mem_spread_ratio": f"{m['spread_ratio_synthetic_over_train']:.2f}"})})
  return out


def _row_scores(scores: dict) -> dict:
  return {f"{clf}_{metric}": f"{scores[clf][metric]:.3f}" for clf in CLASSIFIERS
          for metric in METRICS}


def write_tables(rows: list[dict], workdir: str, prefix: str) -> list[str]:
  """summary.csv (the model names hold commas: quoted by `csv`) and summary.md."""
  csv_path = outputs.write_csv(os.path.join(workdir, f"{prefix}summary.csv"), rows)
  md_path = outputs.atomic_write_text(os.path.join(workdir, f"{prefix}summary.md"),
                                      outputs.markdown_table(rows))
  return [csv_path, md_path]


def not_covered(config: settings.Config, data: trials.TrialData) -> list[str]:
  """What the private generators' epsilons do not cover in this study."""
  items = list(data.not_covered)
  if config.private or config.nonprivate_baseline:
    items.append(
        "best-epoch selection: Figure 2 B-D and the best_lr/best_rf rows release the GAN "
        "generator of the step with the best TSTR score on the held-out VALIDATION participants, "
        "read in the clear outside any DP mechanism (post-processing for the training "
        "participants, but unprotected for the validation ones and not accounted); the "
        "final-epoch panel and rows involve no selection (DP-MERF has no epoch to select)")
  items += [
      "held-out participants (validation and test splits) are used in the clear: TSTR and "
      "TRTR scores, the fidelity errors (per-visit quartiles and visit-to-visit correlations "
      "of the test participants) and the real median trajectories of Figure 2 (test "
      "participants only) are exact statistics of them; the guarantee covers the training "
      "participants only",
      "num_train (hence the sampling rate batch_size / num_train that calibrates the noise) is "
      "released in results.json and treated as public",
  ]
  if config.nonprivate_baseline:
    items.append("the non-private baselines (TRTR classifiers fit on the real training "
                 "participants and the TRTR row's fidelity errors, which compare the real "
                 "training participants' quartiles and correlations with the test ones; the "
                 "non-private GAN's TSTR scores and Figure 2 curves) have epsilon = inf; rerun "
                 "with --config.nonprivate_baseline=false to release only DP outputs")
  return items


def _public_description(data: trials.TrialData, config: settings.Config,
                        randomness: randomness_lib.PrivateRandomness) -> str:
  """The data description, without the seed when it is the secret of the private randomness."""
  if randomness.secure:
    return data.description
  return data.description.replace(f"seed {config.seed}", "seed <secret: see private/>")


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains the requested variants, evaluates them, writes every output; returns results.

  `config` is a config file's ConfigDict (or a `settings.Config`); a bad field raises
  ValueError. With `mode="benchmark"` it times the private discriminator step instead.
  """
  config = settings.make_config(config)
  os.makedirs(workdir, exist_ok=True)
  if config.mode == "benchmark":
    return benchmark.run_benchmark(config, workdir)
  if config.mode == "sweep":
    return run_sweep(config, workdir)
  results, _ = _train_and_evaluate(config, workdir)
  return results


def _train_and_evaluate(config: settings.Config, workdir: str) -> tuple[dict, list[dict]]:
  """(results, the privacy report's releases) of one mode="train" run."""
  randomness = randomness_lib.from_flag(config.reproducible_private_randomness, config.seed)
  private_dir = report.private_dir(workdir)
  outputs.write_json(os.path.join(workdir, "config.json"),
                     randomness_lib.redact(dataclasses.asdict(config), randomness))
  report.save_secret_seed(workdir, randomness)
  data = load_data(config)
  splits = Splits(*split(data, config))
  logging.info("%s: %d training, %d validation, %d test participants", data.description,
               splits.train.num_participants, splits.validation.num_participants,
               splits.test.num_participants)
  if config.delta >= 1.0 / splits.train.num_participants:
    logging.warning("--config.delta=%g >= 1/N=%g: use a delta well below 1/N.", config.delta,
                    1.0 / splits.train.num_participants)

  results = {
      "config": config.name,
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
    results["trtr"] = evaluation.classifier_scores(
        splits.train.x, splits.train.arm, {"test": (splits.test.x, splits.test.arm)},
        config.seed, config.rf_trees)
    # The floor of the fidelity errors: real training participants against the test ones.
    results["trtr_fidelity"] = evaluation.fidelity(
        splits.train.x, splits.train.arm, splits.test.x, splits.test.arm, _to_units(splits.test))
  variants = ([VARIANT_PRIVATE] if config.private else []) + (
      [VARIANT_NONPRIVATE] if config.nonprivate_baseline else [])
  runs = {}
  for name in variants:
    runs[name] = _train_variant(name, config, splits, workdir, randomness)
    results["variants"][name] = runs[name].public
  if config.merf:
    runs[VARIANT_MERF] = _train_merf(config, splits, workdir, randomness)
    results["variants"][VARIANT_MERF] = runs[VARIANT_MERF].public
  for name in (VARIANT_PRIVATE, VARIANT_MERF):
    if name in results["variants"] and "epsilon" not in results:
      results["epsilon"] = results["variants"][name]["epsilon"]
      results["delta"] = config.delta
  plots = plot_trajectories(results, data, workdir, config.prefix)
  results["plots"] = plots
  rows = summary_rows(results)
  tables = write_tables(rows, workdir, config.prefix)
  results_path = os.path.join(workdir, f"{config.prefix}results.json")
  outputs.write_json(results_path, results)
  outputs.write_json(os.path.join(private_dir, f"{config.prefix}diagnostics.json"),
                     {name: run.diagnostics for name, run in runs.items()})
  outputs.atomic_write_text(
      os.path.join(private_dir, f"{config.prefix}summary_with_memorisation.md"),
      outputs.markdown_table(memorisation_rows(rows, results, runs)))
  releases = write_report(config, data, workdir, runs, [results_path] + tables + plots,
                          randomness)
  for row in rows:
    logging.info("%s", " ".join(f"{k}={v}" for k, v in row.items()))
  results["summary_md"] = outputs.markdown_table(rows)
  return results, releases


# ----- the epsilon sweep -----------------------------------------------------------------------

def sweep_point(config: settings.Config, epsilon: float) -> settings.Config:
  """The mode="train" config of one sweep epsilon: the private generators at `epsilon`; at inf
  the generators without noise (DP-MERF's exact embedding, the non-private GAN) and TRTR."""
  finite = math.isfinite(epsilon)
  return dataclasses.replace(
      config, mode="train", name=f"{config.name} (epsilon {epsilon:g})", target_epsilon=epsilon,
      private=config.private and finite,
      nonprivate_baseline=not finite and (config.nonprivate_baseline or not config.merf))


def sweep_dir(workdir: str, epsilon: float) -> str:
  return os.path.join(workdir, f"epsilon_{epsilon:g}")


def sweep_rows(results_by_epsilon: dict) -> list[dict]:
  """One row per (epsilon, generator): the final-epoch TSTR and fidelity on the test split."""
  rows = []
  for epsilon, results in results_by_epsilon.items():
    for row in summary_rows(results):
      if "final" in row["model"] or "TRTR" in row["model"]:
        rows.append({"target_epsilon": f"{epsilon:g}", **row})
  return rows


def run_sweep(config: settings.Config, workdir: str) -> dict:
  """The study at each of `config.sweep_epsilons`, each in `epsilon_<e>/` with its own report;
  sweep.{md,csv,json} and a privacy report of all of them released together."""
  results_by_epsilon, releases = {}, []
  for epsilon in config.sweep_epsilons:
    sub_dir = sweep_dir(workdir, epsilon)
    results, sub_releases = _train_and_evaluate(sweep_point(config, epsilon), sub_dir)
    results_by_epsilon[epsilon] = results
    for r in sub_releases:
      releases.append({**r, "name": f"epsilon {epsilon:g}: {r['name']}",
                       "files": [os.path.join(os.path.relpath(sub_dir, workdir), f)
                                 for f in r["files"]]})
  rows = sweep_rows(results_by_epsilon)
  tables = [outputs.write_csv(os.path.join(workdir, f"{config.prefix}sweep.csv"), rows),
            outputs.atomic_write_text(os.path.join(workdir, f"{config.prefix}sweep.md"),
                                      outputs.markdown_table(rows))]
  sweep = {"config": config.name, "epsilons": list(config.sweep_epsilons), "rows": rows,
           "runs": {f"{e:g}": os.path.relpath(sweep_dir(workdir, e), workdir)
                    for e in config.sweep_epsilons}}
  outputs.write_json(os.path.join(workdir, f"{config.prefix}sweep.json"), sweep)
  first = next(iter(results_by_epsilon.values()))
  data_not_covered = [item for item in not_covered(config, load_data(config))]
  report.write_privacy_report(
      workdir, [{**r, "files": r["files"] + [os.path.relpath(t, workdir) for t in tables]}
                for r in releases],
      randomness_lib.from_flag(config.reproducible_private_randomness, config.seed),
      not_covered=data_not_covered, unit="participant",
      notes=[f"each epsilon's run is a separate release from the same {first['num_train']} "
             "training participants: publishing the whole sweep composes them (the total "
             "below); publish one epsilon's folder to spend only its epsilon"])
  sweep["summary_md"] = outputs.markdown_table(rows)
  return sweep


def write_report(config: settings.Config, data: trials.TrialData, workdir: str,
                 runs: dict, shared_files: list[str],
                 randomness: randomness_lib.PrivateRandomness) -> list[dict]:
  """privacy_report.{json,md} (returns its releases): each variant's release (the files it
  shares with the others are
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
  notes = ["synthetic latents and arms are drawn from --config.seed: public randomness, "
           "post-processing"]
  if config.private:
    notes.insert(0, "the DP GAN's synthetic data sets of all evaluated steps are post-processing "
                 "of one private run: its epsilon covers all of them released together; "
                 "'epsilon_at_step' gives each file's own (smaller) epsilon if it alone is "
                 "released")
  if not randomness.secure:
    notes.append("--config.seed also draws the data split, the simulation and the initialisation, "
                 "whose effects are released: a small seed can be found by search; use a large "
                 "random one (e.g. python -c 'import secrets; print(secrets.randbits(63))')")
  if config.merf:
    notes.append("DP-MERF reads the training participants once: the sum of each one's "
                 "contribution [e_arm (x) phi(x), count_weight e_arm] (norm <= sqrt(1 + "
                 "count_weight^2) for every x in [0, 1], the public scaling) plus Gaussian noise "
                 "of standard deviation noise_multiplier x that bound: one GaussianDpEvent under "
                 "add/remove-one adjacency (replace-one would need the larger sensitivity "
                 "max(2, sqrt(2) x bound)). Its generator, synthetic participants, scores and "
                 "curves are post-processing of that release; its random frequencies come "
                 "from the public seed")
  together = private_generators_epsilon(runs, config)
  if together is not None:
    notes.append(f"the private generators (DP GAN and DP-MERF) are separate releases from the "
                 f"same training participants: released together they cost epsilon "
                 f"{together:.4g} at delta {config.delta:g} ({config.accountant}, their ledgers "
                 f"composed); release one of them to spend only its own epsilon")
  report.write_privacy_report(workdir, releases, randomness,
                              not_covered=not_covered(config, data), unit="participant",
                              notes=notes)
  return releases


def private_generators_epsilon(runs: dict, config: settings.Config) -> float | None:
  """Epsilon of the DP GAN and DP-MERF released together (None unless both ran with noise)."""
  ledgers = [run.release.get("_ledger") for name, run in runs.items()
             if name in (VARIANT_PRIVATE, VARIANT_MERF)]
  phases = [accounting.PrivacyPhase(**p) for ledger in ledgers if ledger
            for p in ledger["phases"]]
  if len(ledgers) < 2 or any(p.noise_multiplier == 0 for p in phases):
    return None
  return accounting.compute_epsilon(phases, config.delta, config.accountant)


def summarize(results: dict) -> str:
  """What `main` prints: the summary table (or the benchmark's rows)."""
  if "benchmark" in results:
    return outputs.markdown_table(results["benchmark"]["rows"])
  return results["summary_md"]
