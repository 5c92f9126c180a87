"""Statistics of the noise actually added by the DP step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import clipping
from dpjax import noise
from dpjax import train

NUM_COORDS = 200_000  # std estimated to about 0.3%: a 10% error in sigma or in the divisor fails


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


def test_noise_depends_on_key_and_step():
  tree = {"a": jnp.zeros(10)}
  a = noise.tree_noise(jax.random.PRNGKey(0), tree, "gaussian")
  b = noise.tree_noise(jax.random.PRNGKey(0), tree, "gaussian")
  c = noise.tree_noise(jax.random.fold_in(jax.random.PRNGKey(0), 1), tree, "gaussian")
  np.testing.assert_array_equal(a["a"], b["a"])
  assert not np.allclose(a["a"], c["a"])


def test_leaves_get_independent_float32_noise_of_their_own_shape():
  """Noise is float32 even for a bf16 leaf: bf16 noise would be quantised to 8 bits."""
  tree = {"a": jnp.zeros((300, 40)), "b": jnp.zeros((300, 40)), "c": jnp.zeros((7,), jnp.bfloat16)}
  z = noise.tree_noise(jax.random.PRNGKey(3), tree, "gaussian")
  assert z["a"].shape == (300, 40) and z["c"].shape == (7,) and z["c"].dtype == jnp.float32
  a, b = np.asarray(z["a"]).ravel(), np.asarray(z["b"]).ravel()
  assert abs(np.corrcoef(a, b)[0, 1]) < 0.03  # 12000 pairs: sd of r is ~0.009
  for leaf in (a, b):
    assert leaf.std() == pytest.approx(1.0, rel=0.03) and abs(leaf.mean()) < 0.03
