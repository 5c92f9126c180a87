"""The private discriminator step and GAN training on the engine (experiments.gan.training).

Tiny networks keep compilation (which dominates on 2 cores) to a few functions; the training
runs share one compiled step through `make_gan_step`'s cache. The tests that train are marked
slow.
"""

import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dpjax import accounting
from dpjax import clipping
from dpjax import randomness
from dpjax import sampling
from dpjax import train
from dpjax.data import trials
from experiments.gan import models
from experiments.gan import training

GENERATOR = models.Generator(coarse_channels=4, conv_channels=8)
DISCRIMINATOR = models.Discriminator(dense_width=16)


def _numpy_d_params(seed=0):
  """Discriminator parameters drawn in NumPy from the shapes Flax would make (no init compile)."""
  shapes = jax.eval_shape(DISCRIMINATOR.init, jax.random.PRNGKey(0), jnp.zeros((1, 3, 12)))
  rng = np.random.default_rng(seed)
  draw = lambda leaf: jnp.asarray(rng.normal(0, 0.5, leaf.shape), jnp.float32)
  return jax.tree.map(draw, shapes["params"])


def _pairs(batch_size, seed=0):
  rng = np.random.default_rng(seed)
  return {
      "real": jnp.asarray(rng.uniform(size=(batch_size, 3, 12)), jnp.float32),
      "real_arm": jnp.asarray(rng.integers(0, 2, batch_size), jnp.int32),
      "fake": jnp.asarray(rng.uniform(size=(batch_size, 3, 12)), jnp.float32),
      "fake_arm": jnp.asarray(rng.integers(0, 2, batch_size), jnp.int32),
      "dropout_key": jax.random.split(jax.random.PRNGKey(seed), batch_size),
  }


@pytest.mark.slow  # ~30 s of compilation
def test_pair_clipping_at_batch_4_equals_a_loop_of_single_pair_clipped_gradients():
  d_params = _numpy_d_params()
  pairs = _pairs(5)
  mask = jnp.array([True, True, True, True, False])  # 4 real pairs and one padding slot
  single_grad = jax.jit(jax.grad(
      lambda p, pair: training.pair_loss(p, pair, DISCRIMINATOR)))
  flat = lambda tree: np.concatenate([np.ravel(l) for l in jax.tree.leaves(tree)]).astype(np.float64)
  per_pair = [flat(single_grad(d_params, jax.tree.map(lambda a: a[i], pairs))) for i in range(4)]
  norms = np.array([np.linalg.norm(g) for g in per_pair])
  clip_norm = float(np.median(norms))  # some pairs clipped, some not
  expected_batch_size = 4.0
  expected = sum(g * min(1.0, clip_norm / n) for g, n in zip(per_pair, norms)) / expected_batch_size

  dp = train.DPConfig(clipping.ClippingConfig(clip_norm), 0.0, expected_batch_size)
  loss_fn = training.pair_loss_fn(DISCRIMINATOR)
  grad_fn = jax.jit(lambda p, b, m, k: training.discriminator_gradient(
      loss_fn, p, b, m, k, dp, expected_batch_size))
  grad, metrics = grad_fn(d_params, pairs, mask, jax.random.PRNGKey(1))
  np.testing.assert_allclose(flat(grad), expected, rtol=1e-3, atol=1e-5)
  assert float(metrics["clipped_fraction"]) == pytest.approx(np.mean(norms > clip_norm))
  assert float(metrics["batch_size"]) == 4

  # The noise is added once to the sum: its standard deviation is sigma * C / expected batch.
  sigma = 3.0
  noisy_dp = dataclasses.replace(dp, noise_multiplier=sigma)
  noisy, _ = jax.jit(lambda p, b, m, k: training.discriminator_gradient(
      loss_fn, p, b, m, k, noisy_dp, expected_batch_size))(d_params, pairs, mask,
                                                                 jax.random.PRNGKey(2))
  residual = flat(noisy) - expected
  assert np.std(residual) == pytest.approx(sigma * clip_norm / expected_batch_size, rel=0.05)

  # Without privacy: the unclipped mean over real pairs, divided by the same expected size.
  plain, _ = jax.jit(lambda p, b, m, k: training.discriminator_gradient(
      loss_fn, p, b, m, k, None, expected_batch_size))(d_params, pairs, mask,
                                                             jax.random.PRNGKey(1))
  np.testing.assert_allclose(flat(plain), sum(per_pair) / expected_batch_size, rtol=1e-3,
                             atol=1e-5)


CONFIG = training.GanTrainConfig(batch_size=8, learning_rate=1e-3, clip_norm=0.1,
                                 noise_multiplier=1.1)
DELTA = 1e-3
SECRET = randomness.PrivateRandomness(secret_seed=0)  # the opt-in: reproducible private randomness
PRIVATE_KEYS = {"loss", "g_loss", "clipped_fraction", "mean_grad_norm", "num_nonfinite",
                "batch_size"}


def _train(workdir=None, epochs=2, seed=0, source=SECRET, on_eval=None):
  data = trials.simulate_sprint_like(0, 48)
  return training.train_gan(data.x, data.arm, generator=GENERATOR,
                            discriminator=DISCRIMINATOR, config=CONFIG, epochs=epochs,
                            seed=seed, delta=DELTA, workdir=workdir, randomness=source,
                            eval_every_epochs=1 if on_eval else None, on_eval=on_eval)


def _leaves(params):
  return [np.asarray(leaf) for leaf in jax.tree.leaves(params)]


def _same(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b)))


@pytest.fixture(scope="module")
def two_epochs():
  evaluated = []
  result = _train(on_eval=lambda step, params: evaluated.append(step) or {"n": float(step)})
  return result, evaluated


@pytest.mark.slow
def test_steps_come_from_steps_for_epochs_and_epsilon_is_the_accountants(two_epochs):
  result, _ = two_epochs
  steps = sampling.steps_for_epochs(2, 48, 8)
  assert result.num_steps == result.ledger.steps == int(result.run.state.step) == steps == 12
  phase = accounting.PrivacyPhase(noise_multiplier=1.1, dataset_size=48, batch_size=8)
  for entry in result.history:
    expected = accounting.compute_epsilon([phase.with_steps(entry["step"])], DELTA)
    assert entry["epsilon"] == pytest.approx(expected, rel=1e-9)
  assert result.history[-1]["epsilon"] > result.history[0]["epsilon"] > 0


@pytest.mark.slow
def test_on_eval_sees_the_step_and_its_results_are_public_history(two_epochs):
  result, evaluated = two_epochs
  assert evaluated == [6, 12]
  assert [(h["step"], h["epoch"], h["n"]) for h in result.history] == [(6, 1.0, 6.0),
                                                                         (12, 2.0, 12.0)]


@pytest.mark.slow
def test_training_statistics_are_private_not_in_the_public_history(two_epochs):
  result, _ = two_epochs
  for entry in result.history:
    assert not PRIVATE_KEYS & set(entry), entry
  for entry in result.private_history:
    assert {"loss", "g_loss", "clipped_fraction", "batch_size"} <= set(entry)
    assert math.isfinite(entry["loss"]) and math.isfinite(entry["g_loss"])


@pytest.mark.slow
def test_the_step_compiles_once(two_epochs):
  step = training.compiled_step(GENERATOR, DISCRIMINATOR, CONFIG, 8.0)
  assert step._cache_size() == 1  # pylint: disable=protected-access


@pytest.mark.slow
def test_same_seed_gives_different_private_parameters_by_default():
  """--seed only initialises: batches and every training key come from the OS CSPRNG."""
  a = _train(epochs=1, source=randomness.SECURE)
  b = _train(epochs=1, source=randomness.SECURE)
  assert not _same(a.d_params, b.d_params) and not _same(a.g_params, b.g_params)
  phase = accounting.PrivacyPhase(noise_multiplier=1.1, dataset_size=48, batch_size=8, steps=6)
  assert a.ledger.epsilon(DELTA) == b.ledger.epsilon(DELTA) == pytest.approx(
      accounting.compute_epsilon([phase], DELTA), rel=1e-9)


@pytest.mark.slow
def test_reproducible_randomness_is_identical_and_a_resume_matches_an_uninterrupted_run(
    two_epochs, tmp_path):
  uninterrupted, _ = two_epochs
  workdir = str(tmp_path / "run")
  first = _train(workdir, epochs=1)
  again = _train(epochs=1)
  assert _same(first.g_params, again.g_params) and _same(first.d_params, again.d_params)
  assert first.ledger.epsilon(DELTA) == again.ledger.epsilon(DELTA)

  resumed = _train(workdir, epochs=2)
  assert resumed.ledger.steps == 12  # the ledger carried the first epoch's steps
  assert resumed.history[-1]["epsilon"] == pytest.approx(uninterrupted.history[-1]["epsilon"])
  assert _same(resumed.g_params, uninterrupted.g_params)
  assert _same(resumed.d_params, uninterrupted.d_params)
  # The public progress of both processes is read back, one record per logged step.
  assert [h["step"] for h in resumed.history] == [6, 12]


@pytest.mark.slow
def test_workdir_keeps_checkpoint_and_training_statistics_under_private(tmp_path):
  workdir = str(tmp_path / "run")
  _train(workdir, epochs=1)
  private = os.path.join(workdir, "private")
  assert os.path.exists(os.path.join(private, "checkpoint.msgpack"))
  with open(os.path.join(private, "metrics.jsonl")) as f:
    assert "loss" in json.loads(f.readline())
  with open(os.path.join(workdir, training.PROGRESS_FILE)) as f:
    for line in f:
      assert not PRIVATE_KEYS & set(json.loads(line))


def test_calibrated_noise_spends_the_target_over_the_run():
  sigma = training.calibrate_noise(1.5, 1e-5, num_train=5000, batch_size=16, epochs=3)
  phase = accounting.PrivacyPhase(sigma, 5000, 16, steps=sampling.steps_for_epochs(3, 5000, 16))
  assert 1.5 * 0.98 <= accounting.compute_epsilon([phase], 1e-5) <= 1.5


def test_paper_settings_pad_a_batch_of_one_sanely():
  """Batch 1 of ~5200 participants for 500 epochs: 2.6 million steps at one padded shape."""
  num_train = 5202  # 80% of SPRINT's 6502
  sampler = training.make_sampler(num_train, training.GanTrainConfig())
  steps = sampler.steps_for_epochs(500)
  overflow_per_step = stats.binom.sf(sampler.padded_size, num_train, 1 / num_train)
  assert sampler.padded_size <= 12
  assert steps * overflow_per_step < 1e-2  # BatchOverflowError in the whole run: < 1%


def test_bad_inputs_say_what_to_fix():
  with pytest.raises(ValueError, match="noise_multiplier > 0"):
    training.GanTrainConfig(noise_multiplier=0.0)
  with pytest.raises(ValueError, match="features= and visits="):
    training.train_gan(np.zeros((10, 6, 4), np.float32), np.zeros(10, np.int32),
                       generator=GENERATOR, discriminator=DISCRIMINATOR, config=CONFIG,
                       epochs=1, seed=0, delta=1e-3)
