"""Tests for experiments.gan.models: the SPRINT_gan AC-GAN and its losses.

Compilation dominates on 2 CPU cores (Flax's truncated-normal initialisers alone take seconds),
so behaviour tests use narrow versions of the study's architecture with NumPy-drawn parameters,
each test compiles one or two functions, and the full size is checked by parameter count and one
forward pass.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dpjax.data import trials
from experiments.gan import models

GENERATOR = models.Generator(coarse_channels=8, conv_channels=16)
DISCRIMINATOR = models.Discriminator(dense_width=32)
loss_per_example = functools.partial(models.discriminator_loss_per_example,
                                     discriminator=DISCRIMINATOR)


def _numpy_params(init_fn, *dummy_inputs, seed):
  """LeCun-normal parameters of the shapes `init_fn` makes, drawn in NumPy (no compilation)."""
  shapes = jax.eval_shape(init_fn, jax.random.key(0), *dummy_inputs)["params"]
  rng = np.random.default_rng(seed)

  def draw(leaf):
    fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
    return jnp.asarray(rng.normal(0, 1 / np.sqrt(fan_in), leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map(draw, shapes)


def _random_models(generator=GENERATOR, discriminator=DISCRIMINATOR, seed=0):
  latent = jnp.zeros((1, generator.latent_dim))
  g_params = _numpy_params(generator.init, latent, jnp.zeros((1,), jnp.int32), seed=seed)
  grid = jnp.zeros((1, generator.features, generator.visits))
  d_params = _numpy_params(discriminator.init, grid, seed=seed + 1)
  return g_params, d_params


@pytest.fixture(scope="module")
def params():
  return _random_models()


def _bce(logit, label):
  """Binary cross-entropy written out, independent of optax."""
  p = 1.0 / (1.0 + np.exp(-np.asarray(logit, np.float64)))
  return -(label * np.log(p) + (1 - label) * np.log(1 - p))


def test_parameter_counts_match_the_study_architecture():
  g_params, d_params = jax.eval_shape(models.init_params, jax.random.key(0))
  # Generator: embedding 2x100, Dense 100->256, Dense 256->32*3*4, conv 5x5 32->256,
  # conv 4x4 256->1 (weights + biases), as in SPRINT_gan dp_gan.py.
  expected_generator = (2 * 100 + (100 * 256 + 256) + (256 * 384 + 384)
                        + (25 * 32 * 256 + 256) + (16 * 256 + 1))
  # Discriminator: conv 3x3 1->32 (stride 2 leaves a 2x6 grid), conv 3x3 32->64, Dense
  # 2*6*64->1024, Dense 1024->1024, two 1024->1 heads.
  expected_discriminator = ((9 * 32 + 32) + (9 * 32 * 64 + 64) + (768 * 1024 + 1024)
                            + (1024 * 1024 + 1024) + 2 * (1024 + 1))
  assert models.count_params(g_params) == expected_generator
  assert models.count_params(d_params) == expected_discriminator
  # Only parameters: no BatchNorm statistics, so per-example gradients stay per example.
  variables = jax.eval_shape(models.Discriminator().init, jax.random.key(1),
                             jnp.zeros((1, 3, 12)))
  assert set(variables) == {"params"}


def test_full_size_models_on_a_batch_of_one():
  g_params, d_params = _random_models(models.Generator(), models.Discriminator())

  @jax.jit
  def generate_and_score(latent, arm):
    x = models.generate(g_params, latent, arm)
    return x, models.discriminator_loss_per_example(d_params, x[0], arm[0], 0.0)

  latent = np.random.default_rng(1).uniform(-1, 1, (1, 100)).astype(np.float32)
  x, loss = generate_and_score(latent, np.ones((1,), np.int32))
  x = np.asarray(x)
  assert x.shape == (1, 3, 12)
  assert np.all((x > 0) & (x < 1)) and np.isfinite(loss)


@pytest.mark.parametrize("features,visits", [(6, 4), (1, 5)])
def test_shapes_and_range_for_other_grids(features, visits):
  generator = models.Generator(features=features, visits=visits, coarse_channels=8,
                               conv_channels=16)
  g_params, d_params = _random_models(generator)

  @jax.jit
  def generate_and_classify(latent, arm):
    x = models.generate(g_params, latent, arm, generator)
    return x, models.discriminator_logits(d_params, x, DISCRIMINATOR)

  latent = np.random.default_rng(1).uniform(-1, 1, (2, 100)).astype(np.float32)
  x, (real_logit, arm_logit) = generate_and_classify(latent, np.array([0, 1]))
  x = np.asarray(x)
  assert x.shape == (2, features, visits)
  assert np.all((x > 0) & (x < 1))
  assert real_logit.shape == (2,) and arm_logit.shape == (2,)


def test_same_key_same_samples_and_arm_conditioning(params):
  g_params, _ = params
  draw = jax.jit(functools.partial(models.sample, g_params, n=16, generator=GENERATOR))
  x, arm = draw(jax.random.key(5))
  x_again, arm_again = draw(jax.random.key(5))
  x_other, _ = draw(jax.random.key(6))
  chex.assert_trees_all_equal((x, arm), (x_again, arm_again))
  assert not np.allclose(x, x_other)
  assert x.shape == (16, 3, 12) and set(np.unique(arm)) <= {0, 1}
  # The arm changes the output for the same latent noise.
  latent = np.random.default_rng(7).uniform(-1, 1, (2, 100)).astype(np.float32)
  both_arms = jax.jit(functools.partial(models.generate, g_params, generator=GENERATOR))(
      np.concatenate([latent, latent]), np.array([0, 0, 1, 1]))
  both_arms = np.asarray(both_arms)
  assert np.max(np.abs(both_arms[:2] - both_arms[2:])) > 1e-4


def test_sample_arms_follow_arm_probs():
  draw = jax.jit(models.sample_arms, static_argnames="n")
  key = jax.random.key(0)
  assert np.asarray(draw(key, 20_000, (0.0, 1.0))).sum() == 20_000
  assert np.asarray(draw(key, 20_000, (1.0, 0.0))).sum() == 0
  assert abs(np.asarray(draw(key, 20_000, (0.7, 0.3))).mean() - 0.3) < 0.015
  # A scalar is P(arm = 1).
  np.testing.assert_array_equal(draw(key, 20_000, 0.3), draw(key, 20_000, (0.7, 0.3)))
  with pytest.raises(ValueError, match="arm_probs"):
    models.sample_arms(key, 3, (0.2, 0.3, 0.5))


def test_per_example_loss_matches_hand_computation_and_vmaps_independently(params):
  """The DP step vmaps a one-example loss: each value and gradient depends on its example only."""
  _, d_params = params
  x = np.random.default_rng(2).uniform(size=(4, 3, 12)).astype(np.float32)
  arm = np.array([0, 1, 1, 0])
  is_real = np.array([1.0, 1.0, 0.0, 0.0], np.float32)

  @jax.jit
  def everything(d_params, x, arm, is_real):
    logits = models.discriminator_logits(d_params, x, DISCRIMINATOR)
    batched = loss_per_example(d_params, x, arm, is_real)
    vmapped = jax.vmap(loss_per_example, in_axes=(None, 0, 0, 0))(d_params, x, arm, is_real)
    grads = jax.vmap(jax.grad(loss_per_example), in_axes=(None, 0, 0, 0))(
        d_params, x, arm, is_real)
    return logits, batched, vmapped, grads

  (real_logit, arm_logit), batched, vmapped, grads = jax.tree_util.tree_map(
      np.asarray, everything(d_params, x, arm, is_real))
  expected = _bce(real_logit, is_real) + _bce(arm_logit, arm)
  assert batched.shape == (4,) and np.all(np.isfinite(batched))
  np.testing.assert_allclose(batched, expected, rtol=1e-5)
  np.testing.assert_allclose(vmapped, expected, rtol=1e-5)

  # Example 1's gradient, from a batch of one, equals its row of the vmapped gradients.
  _, _, _, one_grads = everything(d_params, x[1:2].repeat(4, 0), arm[1:2].repeat(4),
                                  is_real[1:2].repeat(4))
  chex.assert_trees_all_close(jax.tree_util.tree_map(lambda g: g[1], grads),
                              jax.tree_util.tree_map(lambda g: np.asarray(g)[0], one_grads),
                              rtol=1e-5, atol=1e-7)


def test_dropout_only_with_a_key(params):
  _, d_params = params
  x = np.random.default_rng(4).uniform(size=(3, 12)).astype(np.float32)
  loss = jax.jit(functools.partial(loss_per_example, d_params, x, 1, 1.0))
  deterministic = float(loss())
  with_dropout = float(loss(dropout_key=jax.random.key(1)))
  assert with_dropout == float(loss(dropout_key=jax.random.key(1)))
  assert with_dropout != deterministic
  assert deterministic == float(loss())


@pytest.mark.slow  # trains for several seconds
def test_non_private_training_steps_reduce_both_losses(params):
  """Adam steps: D learns to tell simulated SPRINT data from G's samples and to read their arms;
  then G, against that D, lowers its own (finite) loss without touching D."""
  g_params, d_params = params
  data = trials.simulate_sprint_like(seed=0, n=256)
  optimizer = optax.adam(1e-3)
  generator_loss = functools.partial(models.generator_loss, generator=GENERATOR,
                                     discriminator=DISCRIMINATOR)

  def mean_d_loss(d_params, x, arm, is_real):
    return jnp.mean(loss_per_example(d_params, x, arm, is_real))

  @jax.jit
  def d_step(d_params, opt_state, x, arm, is_real):
    loss, grads = jax.value_and_grad(mean_d_loss)(d_params, x, arm, is_real)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(d_params, updates), opt_state, loss

  @jax.jit
  def g_step(g_params, opt_state, d_params, key):
    loss, (g_grads, d_grads) = jax.value_and_grad(generator_loss, argnums=(0, 1))(
        g_params, d_params, key, batch_size=128)
    updates, opt_state = optimizer.update(g_grads, opt_state)
    largest_d_grad = jnp.max(jnp.stack([jnp.max(jnp.abs(g))
                                        for g in jax.tree_util.tree_leaves(d_grads)]))
    return optax.apply_updates(g_params, updates), opt_state, loss, largest_d_grad

  rng = np.random.default_rng(2)
  fake_arm = rng.integers(0, 2, 256)
  fake_x = jax.jit(functools.partial(models.generate, generator=GENERATOR))(
      g_params, rng.uniform(-1, 1, (256, 100)).astype(np.float32), fake_arm)
  x = np.concatenate([data.x, np.asarray(fake_x)])
  arm = np.concatenate([data.arm, fake_arm])
  is_real = np.concatenate([np.ones(256), np.zeros(256)]).astype(np.float32)

  # Full-batch steps: the loss returned is the one before each update, on all 512 examples.
  opt_state = jax.jit(optimizer.init)(d_params)
  d_losses = []
  for _ in range(40):
    d_params, opt_state, loss = d_step(d_params, opt_state, x, arm, is_real)
    d_losses.append(float(loss))
  assert d_losses[-1] < 0.7 * d_losses[0], d_losses

  # A fixed key: the same generated batch before and after, so the drop is the generator's.
  opt_state = jax.jit(optimizer.init)(g_params)
  g_losses = []
  for _ in range(10):
    g_params, opt_state, loss, largest_d_grad = g_step(g_params, opt_state, d_params,
                                                       jax.random.key(3))
    g_losses.append(float(loss))
    # The generator's loss only reads D: no gradient reaches D's parameters.
    assert float(largest_d_grad) == 0.0
  assert np.all(np.isfinite(g_losses)) and g_losses[-1] < g_losses[0], g_losses


def test_the_mlp_discriminator_is_small_and_per_example():
  """The DP-friendly discriminator: ~2.5k parameters at width 32 (the conv one: ~55k at 64),
  and each example's logits depend on that example alone (what per-example clipping needs)."""
  discriminator = models.MlpDiscriminator(dense_width=32)
  d_params = discriminator.init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 12)))["params"]
  assert models.count_params(d_params) == 36 * 32 + 32 + 32 * 32 + 32 + 2 * 33
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 3, 12))
  real, arm = models.discriminator_logits(d_params, x, discriminator)
  assert real.shape == arm.shape == (4,)
  one, _ = models.discriminator_logits(d_params, x[:1], discriminator)
  np.testing.assert_allclose(one, real[:1], rtol=1e-5)
