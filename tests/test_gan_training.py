"""The private discriminator step and the GAN training loop (dpjax.gan_training).

Tiny networks keep compilation (which dominates on 2 cores) to a few functions; the training
runs share one compiled step through `make_train_step`'s cache.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import accounting
from dpjax import clipping
from dpjax import gan_training
from dpjax import train
from dpjax.data import trials
from dpjax.models import gan

GENERATOR = gan.Generator(coarse_channels=4, conv_channels=8)
DISCRIMINATOR = gan.Discriminator(dense_width=16)


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


def test_pair_clipping_at_batch_4_equals_a_loop_of_single_pair_clipped_gradients():
  d_params = _numpy_d_params()
  pairs = _pairs(5)
  mask = jnp.array([True, True, True, True, False])  # 4 real pairs and one padding slot
  single_grad = jax.jit(jax.grad(
      lambda p, pair: gan_training.pair_loss(p, pair, DISCRIMINATOR)))
  flat = lambda tree: np.concatenate([np.ravel(l) for l in jax.tree.leaves(tree)]).astype(np.float64)
  per_pair = [flat(single_grad(d_params, jax.tree.map(lambda a: a[i], pairs))) for i in range(4)]
  norms = np.array([np.linalg.norm(g) for g in per_pair])
  clip_norm = float(np.median(norms))  # some pairs clipped, some not
  expected_batch_size = 4.0
  expected = sum(g * min(1.0, clip_norm / n) for g, n in zip(per_pair, norms)) / expected_batch_size

  dp = train.DPConfig(clipping.ClippingConfig(clip_norm), 0.0, expected_batch_size)
  grad_fn = jax.jit(lambda p, b, m, k: gan_training.discriminator_gradient(
      p, b, m, k, DISCRIMINATOR, dp, expected_batch_size))
  grad, metrics = grad_fn(d_params, pairs, mask, jax.random.PRNGKey(1))
  np.testing.assert_allclose(flat(grad), expected, rtol=1e-3, atol=1e-5)
  assert float(metrics["clipped_fraction"]) == pytest.approx(np.mean(norms > clip_norm))
  assert float(metrics["batch_size"]) == 4

  # The noise is added once to the sum: its standard deviation is sigma * C / expected batch.
  sigma = 3.0
  noisy_dp = dataclasses.replace(dp, noise_multiplier=sigma)
  noisy, _ = jax.jit(lambda p, b, m, k: gan_training.discriminator_gradient(
      p, b, m, k, DISCRIMINATOR, noisy_dp, expected_batch_size))(d_params, pairs, mask,
                                                                 jax.random.PRNGKey(2))
  residual = flat(noisy) - expected
  assert np.std(residual) == pytest.approx(sigma * clip_norm / expected_batch_size, rel=0.05)

  # Without privacy: the unclipped mean over real pairs, divided by the same expected size.
  plain, _ = jax.jit(lambda p, b, m, k: gan_training.discriminator_gradient(
      p, b, m, k, DISCRIMINATOR, None, expected_batch_size))(d_params, pairs, mask,
                                                             jax.random.PRNGKey(1))
  np.testing.assert_allclose(flat(plain), sum(per_pair) / expected_batch_size, rtol=1e-3,
                             atol=1e-5)


CONFIG = gan_training.GanTrainConfig(batch_size=8, learning_rate=1e-3, clip_norm=0.1,
                                     noise_multiplier=1.1)
DELTA = 1e-3


def _train(workdir=None, epochs=2, seed=0):
  data = trials.simulate_sprint_like(0, 48)
  return gan_training.train_gan(data.x, data.arm, generator=GENERATOR,
                                discriminator=DISCRIMINATOR, config=CONFIG, epochs=epochs,
                                seed=seed, delta=DELTA, workdir=workdir)


@pytest.fixture(scope="module")
def two_epochs():
  return _train()


def test_epsilon_is_the_accountants_for_the_steps_run(two_epochs):
  steps_per_epoch = round(48 / 8)
  assert two_epochs.steps_per_epoch == steps_per_epoch
  assert two_epochs.ledger.steps == 2 * steps_per_epoch == int(two_epochs.state.step)
  phase = accounting.PrivacyPhase(noise_multiplier=1.1, dataset_size=48, batch_size=8,
                                  steps=steps_per_epoch)
  for epoch, entry in enumerate(two_epochs.history, start=1):
    expected = accounting.compute_epsilon([phase.with_steps(epoch * steps_per_epoch)], DELTA)
    assert entry["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert math.isfinite(entry["loss"]) and math.isfinite(entry["g_loss"])
  assert two_epochs.history[1]["epsilon"] > two_epochs.history[0]["epsilon"] > 0


def test_the_step_compiles_once(two_epochs):
  step = gan_training.make_train_step(GENERATOR, DISCRIMINATOR, CONFIG, 8.0)
  assert step._cache_size() == 1  # pylint: disable=protected-access


def test_same_seed_same_generator_and_resume_matches_an_uninterrupted_run(two_epochs, tmp_path):
  workdir = str(tmp_path / "run")
  first = _train(workdir, epochs=1)
  assert first.ledger.steps == 6
  resumed = _train(workdir, epochs=2)
  assert resumed.ledger.steps == 12  # the ledger carried the first epoch's steps
  assert [h["epoch"] for h in resumed.history] == [1, 2]
  assert resumed.history[-1]["epsilon"] == pytest.approx(two_epochs.history[-1]["epsilon"])
  for a, b in zip(jax.tree.leaves(resumed.state.g_params), jax.tree.leaves(two_epochs.state.g_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  key = jax.random.PRNGKey(5)
  same = gan.sample(resumed.state.g_params, key, 16, generator=GENERATOR)[0]
  np.testing.assert_array_equal(np.asarray(same),
                                np.asarray(gan.sample(two_epochs.state.g_params, key, 16,
                                                      generator=GENERATOR)[0]))
  other_seed = _train(epochs=1, seed=1)
  assert not np.allclose(np.asarray(jax.tree.leaves(other_seed.state.g_params)[0]),
                         np.asarray(jax.tree.leaves(first.state.g_params)[0]))


def test_calibrated_noise_spends_the_target_over_the_run():
  sigma = gan_training.calibrate_noise(1.5, 1e-5, num_train=5000, batch_size=16, epochs=3)
  phase = accounting.PrivacyPhase(sigma, 5000, 16, steps=3 * round(5000 / 16))
  assert 1.5 * 0.98 <= accounting.compute_epsilon([phase], 1e-5) <= 1.5


def test_bad_inputs_say_what_to_fix():
  with pytest.raises(ValueError, match="noise_multiplier > 0"):
    gan_training.GanTrainConfig(noise_multiplier=0.0)
  with pytest.raises(ValueError, match="features= and visits="):
    gan_training.train_gan(np.zeros((10, 6, 4), np.float32), np.zeros(10, np.int32),
                           generator=GENERATOR, discriminator=DISCRIMINATOR, config=CONFIG,
                           epochs=1, seed=0, delta=1e-3)
