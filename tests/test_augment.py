"""Augmentation multiplicity: the mean over K augmented copies, clipped once per example."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dpjax import augment
from dpjax import clipping
from dpjax import engine
from dpjax import randomness
from dpjax import sampling
from dpjax import train

H, W, C, B = 6, 5, 2, 5
IDENTITY = augment.ImageAugmentation(crop_pad=0, flip=False)


class TinyNet(nn.Module):
  """Two Dense layers on the flattened image: cheap to compile, and ghost can see every layer."""
  @nn.compact
  def __call__(self, x):
    x = jnp.tanh(nn.Dense(4)(x.reshape((x.shape[0], -1))))
    return nn.Dense(2)(x)


MODEL = TinyNet()


def loss_fn(params, example):
  logits = MODEL.apply({"params": params}, example["image"][None])[0]
  return optax.softmax_cross_entropy_with_integer_labels(logits, example["label"])


def _data(n=B, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.normal(size=(n, H, W, C)).astype(np.float32),
          "label": rng.integers(0, 2, n).astype(np.int32)}


def _params():
  return MODEL.init(jax.random.PRNGKey(0), jnp.zeros((1, H, W, C)))["params"]


def _state(optimizer, step=0):
  state = train.init_state(_params(), optimizer, jnp.asarray([7, 11], jnp.uint32))
  return state.replace(step=jnp.asarray(step, jnp.int32))


def _dp(noise_multiplier=0.0, clip_norm=0.05, method="vmap"):
  return train.DPConfig(clipping.ClippingConfig(clip_norm, method=method), noise_multiplier, B)


def _one_step(augmult, dp, step=0):
  optimizer = optax.sgd(1.0)
  run = train.make_dp_step(loss_fn, optimizer, dp, augmult=augmult)
  mask = jnp.asarray([True, True, True, True, False])
  new_state, _ = run(_state(optimizer, step), jax.tree.map(jnp.asarray, _data()), mask)
  return new_state.params


def test_crop_is_a_window_of_the_padded_image_and_reaches_every_offset():
  image = jnp.asarray(np.arange(H * W * C, dtype=np.float32).reshape(H, W, C))
  pad = 2
  for mode, np_mode in (("reflect", "reflect"), ("zero", "constant")):
    padded = np.pad(np.asarray(image), [(pad, pad), (pad, pad), (0, 0)], mode=np_mode)
    windows = {(i, j): padded[i:i + H, j:j + W] for i in range(2 * pad + 1)
               for j in range(2 * pad + 1)}
    crops = jax.vmap(lambda k: augment.random_crop(k, image, pad, mode))(
        jax.random.split(jax.random.PRNGKey(1), 400))
    seen = set()
    for crop in np.asarray(crops):
      match = [o for o, w in windows.items() if np.array_equal(w, crop)]
      assert match, "a crop that is no window of the padded image"
      seen.add(match[0])
    assert len(seen) == (2 * pad + 1) ** 2
  chex.assert_trees_all_equal(augment.random_crop(jax.random.PRNGKey(0), image, 0), image)


def test_flip_mirrors_about_half_the_time_and_is_off_by_default():
  image = jnp.asarray(np.random.default_rng(0).normal(size=(H, W, C)).astype(np.float32))
  out = np.asarray(jax.vmap(lambda k: augment.random_flip(k, image))(
      jax.random.split(jax.random.PRNGKey(2), 200)))
  flipped = np.array([np.array_equal(o, np.asarray(image)[:, ::-1]) for o in out])
  same = np.array([np.array_equal(o, np.asarray(image)) for o in out])
  assert np.all(flipped | same) and 60 < flipped.sum() < 140
  assert not augment.ImageAugmentation().flip


def test_k1_identity_augmentation_equals_the_plain_step_noise_included():
  dp = _dp(noise_multiplier=1.3)
  plain = _one_step(None, dp)
  chex.assert_trees_all_close(_one_step(augment.Multiplicity(1, IDENTITY), dp), plain,
                              atol=1e-6)


def test_k_copies_of_the_identity_equal_one_copy():
  dp = _dp(noise_multiplier=0.7)
  one = _one_step(augment.Multiplicity(1, IDENTITY), dp)
  chex.assert_trees_all_close(_one_step(augment.Multiplicity(4, IDENTITY), dp), one, atol=1e-6)


def _loop_clipped_sum(augmult, clip_norm, step):
  """Python loop: per example, the mean over K copies of single-copy gradients, then clip."""
  data, params = _data(), _params()
  state = _state(optax.sgd(1.0), step)
  example_keys = jax.random.split(train.augment_key(state), B)
  total = jax.tree.map(jnp.zeros_like, params)
  contributions = []
  grad_of_copy = jax.jit(lambda p, key, example: jax.grad(loss_fn)(p, augmult.augment(key,
                                                                                     example)))
  for i in range(B - 1):  # the last example is padding
    example = {k: jnp.asarray(v[i]) for k, v in data.items()}
    copy_keys = jax.random.split(example_keys[i], augmult.copies)
    grads = [grad_of_copy(params, copy_keys[k], example) for k in range(augmult.copies)]
    mean = jax.tree.map(lambda *g: sum(g) / len(g), *grads)
    norm = float(optax.tree.norm(mean))
    clipped = jax.tree.map(lambda g: g * min(1.0, clip_norm / norm), mean)
    contributions.append(clipped)
    total = jax.tree.map(jnp.add, total, clipped)
  return params, total, contributions


@pytest.mark.parametrize("method", ["vmap", pytest.param("ghost", marks=pytest.mark.slow)])
def test_step_equals_a_loop_of_mean_over_copies_then_clip(method):
  augmult = augment.Multiplicity(3, augment.ImageAugmentation(crop_pad=1, flip=True))
  clip_norm, step = 0.05, 4
  params, total, contributions = _loop_clipped_sum(augmult, clip_norm, step)
  # SGD with lr 1 and no noise: new params = params - clipped sum / expected batch size.
  new = _one_step(augmult, _dp(clip_norm=clip_norm, method=method), step=step)
  chex.assert_trees_all_close(new, jax.tree.map(lambda p, s: p - s / B, params, total),
                              atol=1e-6)
  # The sensitivity is still the clip norm: each example's contribution has norm <= C (the test
  # is not vacuous: the clip is active).
  norms = [float(optax.tree.norm(c)) for c in contributions]
  assert max(norms) <= clip_norm * (1 + 1e-5)
  assert min(norms) == pytest.approx(clip_norm, rel=1e-5)


def test_clipping_of_the_averaged_loss_bounds_each_example_by_the_clip_norm():
  augmult = augment.Multiplicity(4, augment.ImageAugmentation(crop_pad=2))
  data = jax.tree.map(jnp.asarray, _data())
  keyed = augmult.keyed_batch(data, jax.random.PRNGKey(3), B)
  config = clipping.ClippingConfig(0.01, method="vmap")

  @jax.jit
  def contribution_norm(one_hot):  # the clipped sum over a batch where only one example is real
    summed, _ = clipping.clipped_grad_sum(augmult.loss(loss_fn), _params(), keyed, one_hot, config)
    return optax.tree.norm(summed)
  norms = np.asarray(jax.lax.map(contribution_norm, jnp.eye(B, dtype=bool)))
  assert np.all(norms <= 0.01 * (1 + 1e-5)) and np.all(norms > 0.005)


def test_each_step_gets_fresh_augmentations_apart_from_the_noise_key():
  optimizer = optax.sgd(1.0)
  keys = [np.asarray(train.augment_key(_state(optimizer, t))) for t in range(3)]
  noise_keys = [np.asarray(train.step_key(_state(optimizer, t))) for t in range(3)]
  flat = [tuple(k) for k in keys + noise_keys]
  assert len(set(flat)) == 6


@pytest.mark.slow
def test_engine_trains_with_augmult_and_records_one_step_per_step():
  data = _data(n=20, seed=1)
  sampler = sampling.BatchSampler(20, 8)
  dp = train.DPConfig(clipping.ClippingConfig(1.0, method="auto"), 1.0,
                      sampler.expected_batch_size)
  result = engine.train(loss_fn, _params(), optax.sgd(0.1), data, sampler=sampler, dp=dp,
                        loop=engine.LoopConfig(num_steps=3), augmult=augment.Multiplicity(
                            2, augment.ImageAugmentation(crop_pad=1)),
                        randomness=randomness.PrivateRandomness(secret_seed=0))
  assert result.ledger.steps == 3 and int(result.state.step) == 3
  with pytest.raises(ValueError, match="augmult"):
    engine.train(loss_fn, _params(), optax.sgd(0.1), data, sampler=sampler, dp=dp,
                 loop=engine.LoopConfig(num_steps=1), make_step=engine.compiled_step,
                 augmult=augment.Multiplicity(2))


def test_bad_augmentation_settings_are_refused():
  with pytest.raises(ValueError, match="copies"):
    augment.Multiplicity(0)
  with pytest.raises(ValueError, match="crop_pad"):
    augment.ImageAugmentation(crop_pad=-1)
  with pytest.raises(ValueError, match="pad_mode"):
    augment.ImageAugmentation(pad_mode="wrap")
