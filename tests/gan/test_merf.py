"""DP-MERF: the sensitivity bound, the accounting, the noise, and that the generator sees only
the release. Checked against independent computations (a Python loop, dp_accounting called
directly, the noise's sample statistics)."""

import dataclasses
import inspect
import json
import math
import os

import dp_accounting
import jax
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant

from dpjax import randomness
from dpjax.data import trials
from experiments.gan import evaluation
from experiments.gan import experiment
from experiments.gan import merf
from experiments.gan import settings
from experiments.gan.configs import quick

SMALL = merf.MerfConfig(num_frequencies=16, lengthscale=0.5, linear_weight=0.5, count_weight=1.0,
                        noise_multiplier=2.0, generator_width=8, steps=5,
                        generator_batch_size=8)


def _grid(rng, n, features=3, visits=4):
  x = rng.uniform(0, 1, (n, features, visits)).astype(np.float32)
  x[0], x[1] = 0.0, 1.0  # the corners of the public box
  return x, rng.integers(0, 2, n)


@pytest.mark.parametrize("count_weight,linear_weight", [(1.0, 0.5), (0.3, 0.0), (2.0, 0.9)])
def test_one_participants_contribution_is_within_the_sensitivity(count_weight, linear_weight):
  config = dataclasses.replace(SMALL, count_weight=count_weight, linear_weight=linear_weight)
  x, arm = _grid(np.random.default_rng(0), 500)
  omega = merf.frequencies(0, 12, config)
  v = np.asarray(merf.contributions(x.reshape(500, -1), arm, omega, config))
  norms = np.linalg.norm(v, axis=1)
  assert np.all(norms <= config.sensitivity * (1 + 1e-5))
  assert config.sensitivity == pytest.approx(math.sqrt(1 + count_weight ** 2))
  # Tight at the all-ones corner with no linear block: the bound is not loose.
  if linear_weight == 0.0:
    assert norms.max() == pytest.approx(config.sensitivity, rel=1e-5)


def test_the_embedding_sum_equals_a_python_loop():
  x, arm = _grid(np.random.default_rng(1), 7)
  omega = merf.frequencies(3, 12, SMALL).astype(np.float64)
  d, big_d = 12, SMALL.num_frequencies
  expected = np.zeros(2 * (2 * big_d + d) + 2)
  for xi, ai in zip(x.reshape(7, -1).astype(np.float64), arm):
    phi = []
    for w in omega:
      phi.append(math.sqrt((1 - 0.25) / big_d) * math.cos(float(w @ xi)))
    for w in omega:
      phi.append(math.sqrt((1 - 0.25) / big_d) * math.sin(float(w @ xi)))
    phi += list(0.5 * xi / math.sqrt(d))
    block = 2 * big_d + d
    expected[ai * block:(ai + 1) * block] += phi
    expected[2 * block + ai] += SMALL.count_weight
  got = np.asarray(merf.contributions(x.reshape(7, -1), arm, omega.astype(np.float32),
                                      SMALL)).sum(0)
  np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("sigma,delta", [(0.8, 1e-5), (2.0, 1e-5), (5.0, 1e-3)])
def test_epsilon_is_dp_accountings_gaussian_event(sigma, delta):
  accountant = rdp_privacy_accountant.RdpAccountant()
  accountant.compose(dp_accounting.GaussianDpEvent(sigma))
  assert merf.ledger(800, sigma).epsilon(delta) == pytest.approx(accountant.get_epsilon(delta),
                                                                 rel=1e-9)


def test_calibration_reaches_the_target_and_inf_means_no_noise():
  sigma = merf.calibrate_noise(2.0, 1e-5, 800)
  assert 1.98 <= merf.ledger(800, sigma).epsilon(1e-5) <= 2.0
  assert merf.calibrate_noise(math.inf, 1e-5, 800) == 0.0


def test_the_noise_has_the_mechanisms_standard_deviation():
  x, arm = _grid(np.random.default_rng(2), 50)
  config = dataclasses.replace(SMALL, num_frequencies=1000, noise_multiplier=3.0)
  released = merf.release_embedding(x, arm, config, 0, randomness.SECURE)
  exact = np.asarray(merf.contributions(x.reshape(50, -1), arm, released.omega, config)).sum(0)
  residual = released.noisy_sum - exact
  assert released.noisy_sum.dtype == np.float32
  assert abs(residual.mean()) < 0.2  # ~4000 draws of sd ~4.2: the mean's sd is ~0.07
  assert np.std(residual) == pytest.approx(3.0 * config.sensitivity, rel=0.05)
  # Fresh secret noise each time (OS CSPRNG), not a function of the public seed.
  again = merf.release_embedding(x, arm, config, 0, randomness.SECURE)
  assert not np.allclose(again.noisy_sum, released.noisy_sum)


def test_values_outside_the_public_box_are_refused():
  x, arm = _grid(np.random.default_rng(3), 5)
  x[2, 0, 0] = 1.5
  with pytest.raises(ValueError, match="public bounds"):
    merf.release_embedding(x, arm, SMALL, 0, randomness.SECURE)


def test_the_generator_reads_only_the_release():
  assert list(inspect.signature(merf.fit_generator).parameters) == ["released", "seed"]
  x, arm = _grid(np.random.default_rng(4), 40)
  released = merf.release_embedding(x, arm, SMALL, 0, randomness.SECURE)
  # The same release and public seed give the same generator whatever data are around.
  params_a, _ = merf.fit_generator(released, 5)
  params_b, _ = merf.fit_generator(dataclasses.replace(released), 5)
  for a, b in zip(jax.tree_util.tree_leaves(params_a), jax.tree_util.tree_leaves(params_b)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  synthetic, synthetic_arm = merf.sample(params_a, released, 30, jax.random.PRNGKey(0))
  assert synthetic.shape == (30, 3, 4) and np.all((synthetic >= 0) & (synthetic <= 1))
  assert set(np.unique(synthetic_arm)) <= {0, 1}


def test_fidelity_matches_a_per_visit_loop():
  rng = np.random.default_rng(5)
  real = rng.uniform(0.4, 0.7, (60, 2, 5))
  real_arm = np.repeat([0, 1], 30)
  shifted = real.copy()
  shifted[:, 0] += 10 / 233  # +10 mmHg of SBP everywhere
  units = lambda z: np.asarray(z) * np.array([233.0, 137.0])[:, None]
  f = evaluation.fidelity(shifted, real_arm, real, real_arm, units)
  for a in ("0", "1"):
    np.testing.assert_allclose(f["median_error"][a], 10.0, atol=1e-6)
    np.testing.assert_allclose(f["iqr_error"][a], 0.0, atol=1e-6)
  assert f["correlation_error"] == pytest.approx(0.0, abs=1e-9)
  # Against a loop: spread the synthetic SBP of arm 1 by 2x around its visit medians.
  wide = real.copy()
  med = np.median(real[real_arm == 1, 0], axis=0)
  wide[real_arm == 1, 0] = med + 2 * (real[real_arm == 1, 0] - med)
  f = evaluation.fidelity(wide, real_arm, real, real_arm, units)
  for visit in range(5):
    r = real[real_arm == 1, 0, visit] * 233
    w = wide[real_arm == 1, 0, visit] * 233
    iqr = lambda v: np.percentile(v, 75) - np.percentile(v, 25)
    assert f["iqr_error"]["1"][visit] == pytest.approx(iqr(w) - iqr(r), abs=1e-6)


def test_bad_merf_settings_name_the_config_field():
  base = settings.make_config(quick.get_config("tiny"))
  for field, value in [("merf_lengthscale", 0.0), ("merf_linear_weight", 1.0),
                       ("merf_frequencies", 0), ("merf_steps", 0)]:
    with pytest.raises(ValueError, match=f"--config.{field}"):
      dataclasses.replace(base, **{field: value})
  with pytest.raises(ValueError, match="sweep_epsilons"):
    settings.make_config({**quick.get_config("tiny").to_dict(), "mode": "sweep",
                          "sweep_epsilons": "(1, x)"})


@pytest.mark.slow
def test_merf_run_releases_the_embedding_and_a_generator_fit_to_it_alone(tmp_path):
  config = quick.get_config("tiny")
  config.private = False
  config.nonprivate_baseline = False
  workdir = str(tmp_path)
  results = experiment.train_and_evaluate(config, workdir)
  v = results["variants"]["merf"]
  assert 1.98 <= v["epsilon"] <= 2.0
  assert v["epsilon"] == pytest.approx(merf.ledger(results["num_train"],
                                                   v["noise_multiplier"]).epsilon(1e-3))
  # Refit from the released file and the public seed alone: the same synthetic participants.
  saved = np.load(os.path.join(workdir, "dp_merf", "released_embedding.npz"))
  released = merf.ReleasedEmbedding(saved["noisy_sum"], saved["omega"],
                                    tuple(saved["feature_shape"]),
                                    merf.MerfConfig(**v["merf"]))
  params, _ = merf.fit_generator(released, settings.make_config(config).seed)
  synthetic, arm = merf.sample(params, released, config.num_synthetic,
                               jax.random.fold_in(jax.random.PRNGKey(0), 7919))
  published = np.load(os.path.join(workdir, "dp_merf", "synthetic.npz"))
  np.testing.assert_allclose(synthetic, published["x"], atol=1e-6)
  np.testing.assert_array_equal(arm, published["arm"])
  with open(os.path.join(workdir, "privacy_report.json")) as f:
    privacy = json.load(f)
  assert privacy["mechanism"].startswith("Gaussian mechanism") and privacy["steps"] == 1
  assert privacy["epsilon"] == pytest.approx(v["epsilon"])
  assert "dp_merf/released_embedding.npz" in privacy["files"]
  with open(os.path.join(workdir, "private", "summary_with_memorisation.md")) as f:
    assert "mem_closer_to_train" in f.read()
  with open(os.path.join(workdir, "summary.md")) as f:
    table = f.read()
  assert "DP-MERF, final (TSTR)" in table and "median_err_arm0" in table
  assert "mem_" not in table


@pytest.mark.slow
def test_the_sweep_writes_one_table_and_composes_its_releases(tmp_path):
  config = quick.get_config("tiny")
  config.mode = "sweep"
  config.private = False
  config.nonprivate_baseline = False
  config.sweep_epsilons = (1.0, math.inf)
  sweep = experiment.train_and_evaluate(config, str(tmp_path))
  assert [(r["target_epsilon"], r["model"]) for r in sweep["rows"]] == [
      ("1", "DP-MERF, final (TSTR)"), ("inf", "DP-MERF, final (TSTR)")]
  assert sweep["rows"][1]["epsilon"] == "inf"
  with open(tmp_path / "privacy_report.json") as f:
    privacy = json.load(f)
  names = [r["name"] for r in privacy["releases"]]
  assert names[0].startswith("epsilon 1: DP-MERF")
  assert privacy["releases"][0]["files"][0].startswith("epsilon_1/")
  assert os.path.exists(tmp_path / "epsilon_1" / "figure2A_final.png")
  assert os.path.exists(tmp_path / "sweep.md")
