"""Statistics of the noise actually added by the DP step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import clipping
from dpjax import noise
from dpjax import train

NUM_COORDS = 200_000  # std estimated to about 0.3%: a 10% error in sigma or in the divisor fails


@pytest.fixture(params=["unrolled", "jax_random"])
def generator(request, monkeypatch):
  """Both noise generators, whatever the tree's size (`noise.UNROLLED_MIN_SIZE` picks one)."""
  monkeypatch.setattr(noise, "UNROLLED_MIN_SIZE", 0 if request.param == "unrolled" else 2 ** 62)
  return request.param


def zero_grad_loss(params, example):
  return 0.0 * jnp.sum(params["w"]) * jnp.sum(example)


@pytest.mark.parametrize("norm,expected_ratio", [("l2", 1.0), ("l1", np.sqrt(2.0))])
def test_noise_std_is_sigma_times_sensitivity_over_expected_batch(norm, expected_ratio):
  sigma, clip, expected_batch = 1.3, 0.7, 40.0
  params = {"w": jnp.zeros(NUM_COORDS)}
  batch = jnp.ones((8, 2))
  config = train.DPConfig(clipping.ClippingConfig(clip_norm=clip, norm=norm), sigma, expected_batch)
  grad, _ = jax.jit(lambda k: train.dp_gradient(zero_grad_loss, params, batch, jnp.ones(8, bool), k,
                                                config))(jax.random.PRNGKey(3))
  sample = np.asarray(grad["w"])
  target_std = expected_ratio * sigma * clip / expected_batch  # Laplace(b) has std sqrt(2) b
  assert abs(sample.mean()) < 5 * target_std / np.sqrt(NUM_COORDS)
  assert sample.std() == pytest.approx(target_std, rel=0.02)


def test_laplace_noise_has_laplace_shape():
  z = np.asarray(noise.tree_noise(jax.random.PRNGKey(0), jnp.zeros(NUM_COORDS), "laplace"))
  # Laplace(0, 1): E|z| = 1 and P(|z| > 3) = e^-3; a Gaussian of the same std differs in both.
  assert np.mean(np.abs(z)) == pytest.approx(1.0, rel=0.02)
  assert np.mean(np.abs(z) > 3) == pytest.approx(np.exp(-3), rel=0.1)


def test_noise_is_added_once_not_per_example():
  # The noise std must not grow with the number of examples in the batch.
  params = {"w": jnp.zeros(50_000)}
  config = train.DPConfig(clipping.ClippingConfig(clip_norm=1.0), 1.0, expected_batch_size=1.0)
  stds = []
  for b in (1, 64):
    grad, _ = train.dp_gradient(zero_grad_loss, params, jnp.ones((b, 2)), jnp.ones(b, bool),
                                jax.random.PRNGKey(1), config)
    stds.append(float(jnp.std(grad["w"])))
  assert stds[0] == pytest.approx(1.0, rel=0.03)
  assert stds[1] == pytest.approx(stds[0], rel=0.03)


def test_noise_depends_on_key_and_step(generator):
  tree = {"a": jnp.zeros(10)}
  a = noise.tree_noise(jax.random.PRNGKey(0), tree, "gaussian")
  b = noise.tree_noise(jax.random.PRNGKey(0), tree, "gaussian")
  c = noise.tree_noise(jax.random.fold_in(jax.random.PRNGKey(0), 1), tree, "gaussian")
  np.testing.assert_array_equal(a["a"], b["a"])
  assert not np.allclose(a["a"], c["a"])


def test_leaves_get_independent_float32_noise_of_their_own_shape(generator):
  """Noise is float32 even for a bf16 leaf: bf16 noise would be quantised to 8 bits."""
  tree = {"a": jnp.zeros((300, 40)), "b": jnp.zeros((300, 40)), "c": jnp.zeros((7,), jnp.bfloat16)}
  z = noise.tree_noise(jax.random.PRNGKey(3), tree, "gaussian")
  assert z["a"].shape == (300, 40) and z["c"].shape == (7,) and z["c"].dtype == jnp.float32
  a, b = np.asarray(z["a"]).ravel(), np.asarray(z["b"]).ravel()
  assert abs(np.corrcoef(a, b)[0, 1]) < 0.03  # 12000 pairs: sd of r is ~0.009
  for leaf in (a, b):
    assert leaf.std() == pytest.approx(1.0, rel=0.03) and abs(leaf.mean()) < 0.03


def test_noise_is_not_quantised_to_bfloat16(generator):
  """float32 noise, not bfloat16 draws cast up: those would all be exactly bf16-representable
  (8 bits of mantissa), and noise on a coarse grid no longer has the Gaussian's guarantee."""
  z = np.asarray(noise.tree_noise(jax.random.PRNGKey(5), jnp.zeros(20_000), "gaussian"))
  assert z.dtype == np.float32
  on_bf16_grid = z == z.astype(jnp.bfloat16).astype(np.float32)
  assert on_bf16_grid.mean() < 0.01  # about 2^-16 of float32 normals


def test_per_layer_noise_std_uses_the_combined_sensitivity():
  """Per-layer bounds C_g: one example moves the sum by sqrt(sum C_g^2) = 0.5 here (not the
  default clip_norm 1.0), and the noise std must be sigma times that, over the expected batch."""
  half = NUM_COORDS // 2
  params = {"a": {"w": jnp.zeros(half)}, "b": {"w": jnp.zeros(half)}}
  loss = lambda p, ex: 0.0 * (jnp.sum(p["a"]["w"]) + jnp.sum(p["b"]["w"])) * jnp.sum(ex)
  config = train.DPConfig(clipping.ClippingConfig(layer_clip_norms={"a": 0.3, "b": 0.4}), 2.0, 10.0)
  grad, _ = jax.jit(lambda k: train.dp_gradient(loss, params, jnp.ones((4, 2)), jnp.ones(4, bool),
                                                k, config))(jax.random.PRNGKey(4))
  sample = np.concatenate([np.asarray(leaf) for leaf in jax.tree.leaves(grad)])
  assert sample.std() == pytest.approx(2.0 * 0.5 / 10.0, rel=0.02)


@pytest.mark.parametrize("shares", [1, 2, 3, 4])
@pytest.mark.parametrize("mechanism", ["gaussian", "laplace"])
def test_device_shares_add_up_to_the_one_device_noise(shares, mechanism, generator):
  """Data parallelism: device d adds its stretch of the noise to its partial sum; summed over
  the devices, every coordinate carries the one-device noise exactly once (odd leaf sizes, a
  leaf smaller than the number of devices)."""
  tree = {"a": jnp.zeros((7, 5)), "b": jnp.zeros((1,)), "c": jnp.zeros((13,))}
  key = jax.random.PRNGKey(11)
  total = jax.tree.map(jnp.zeros_like, tree)
  for share in range(shares):
    part = noise.add_noise_share(key, tree, scale=2.0, mechanism=mechanism, share=jnp.int32(share),
                                 shares=shares)
    total = jax.tree.map(jnp.add, total, part)
  expected = noise.tree_noise(key, tree, mechanism)
  for name in tree:
    np.testing.assert_allclose(total[name], 2.0 * expected[name], rtol=1e-6, atol=1e-6)


def test_device_shares_with_another_prng_add_the_noise_once():
  tree = {"a": jnp.zeros((9,))}
  key = jax.random.key(4, impl="rbg")
  parts = [noise.add_noise_share(key, tree, scale=1.0, mechanism="gaussian", share=share, shares=3)
           for share in range(3)]
  np.testing.assert_allclose(sum(p["a"] for p in parts), noise.tree_noise(key, tree, "gaussian")["a"],
                             rtol=1e-6)
