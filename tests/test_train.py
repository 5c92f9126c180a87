"""The jitted DP step: compiles once, masked mean for the non-private step, float32 mechanism."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax import clipping
from dpjax import sampling
from dpjax import train


def linear_loss(params, example):
  x, y = example
  return 0.5 * (x @ params["w"] + params["b"] - y) ** 2


def regression_data(n=400, p=6, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, p)).astype(np.float32)
  w = rng.normal(size=p).astype(np.float32)
  y = (x @ w + 0.1 * rng.normal(size=n)).astype(np.float32)
  return x, y


def init_params(p=6):
  return {"w": jnp.zeros(p), "b": jnp.zeros(())}


def test_step_compiles_once_over_batches_of_varying_size():
  x, y = regression_data()
  sampler = sampling.BatchSampler(len(x), 40)
  dp = train.DPConfig(clipping.ClippingConfig(1.0), 1.0, sampler.expected_batch_size)
  optimizer = optax.adam(0.1)

  @chex.assert_max_traces(n=1)
  def step(state, batch, mask):
    return train.make_dp_step(linear_loss, optimizer, dp, jit=False)(state, batch, mask)

  jitted = jax.jit(step)
  state = train.init_state(init_params(), optimizer, jax.random.PRNGKey(0))
  sizes = set()
  for t in range(8):
    b = sampler.batch(t)
    sizes.add(b.size)
    state, _ = jitted(state, (x[b.indices], y[b.indices]), b.mask)
  assert len(sizes) > 1  # the real batch size did vary


def test_nonprivate_step_is_the_masked_mean_gradient():
  x, y = regression_data(n=10)
  optimizer = optax.sgd(1.0)
  state = train.init_state(init_params(), optimizer, jax.random.PRNGKey(0))
  mask = jnp.array([True] * 7 + [False] * 3)
  new_state, metrics = train.make_nonprivate_step(linear_loss, optimizer)(state, (x, y), mask)
  expected_grad = jax.grad(lambda p: jnp.mean(jax.vmap(linear_loss, in_axes=(None, 0))(p, (x[:7], y[:7]))))(
      init_params())
  chex.assert_trees_all_close(new_state.params, jax.tree.map(lambda g: -g, expected_grad), rtol=1e-5)
  assert float(metrics["batch_size"]) == 7


def test_noise_of_successive_steps_is_fresh():
  """With zero gradients the update is the noise: two steps' noises must be uncorrelated.

  A step that reused one noise key (no fold_in of the step) would repeat the same vector.
  """
  zero_loss = lambda p, ex: 0.0 * jnp.sum(p["w"]) * jnp.sum(ex)
  dp = train.DPConfig(clipping.ClippingConfig(1.0), 1.0, 1.0)
  optimizer = optax.sgd(1.0)
  step = train.make_dp_step(zero_loss, optimizer, dp)
  state = train.init_state({"w": jnp.zeros(5000)}, optimizer, jax.random.PRNGKey(3))
  batch, mask = jnp.ones((2, 1)), jnp.array([True, True])
  state, _ = step(state, batch, mask)
  first = np.asarray(state.params["w"])
  state, _ = step(state, batch, mask)
  second = np.asarray(state.params["w"]) - first
  assert abs(np.corrcoef(first, second)[0, 1]) < 0.06
  np.testing.assert_allclose([first.std(), second.std()], 1.0, rtol=0.05)


def test_bf16_parameters_keep_the_clipping_bound():
  """One example moves the clipped sum by at most C, computed in float32, with bf16 parameters."""
  params = {"w": jnp.full((64,), 0.5, jnp.bfloat16), "b": jnp.zeros((), jnp.bfloat16)}
  rng = np.random.default_rng(0)
  x = rng.normal(size=(9, 64)).astype(np.float32)
  y = rng.normal(size=(9,)).astype(np.float32)
  x[0] *= 300.0  # a huge gradient, clipped to C
  clip = 0.37
  config = clipping.ClippingConfig(clip_norm=clip, compute_dtype="bfloat16")
  with_all = jnp.ones(9, bool)
  without_first = with_all.at[0].set(False)
  total, _ = clipping.clipped_grad_sum(linear_loss, params, (x, y), with_all, config)
  rest, _ = clipping.clipped_grad_sum(linear_loss, params, (x, y), without_first, config)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(total))
  moved = np.sqrt(sum(float(jnp.sum((a - b) ** 2)) for a, b in
                      zip(jax.tree.leaves(total), jax.tree.leaves(rest))))
  assert moved <= clip * (1 + 1e-6)
  assert moved > 0.99 * clip  # it was clipped, not dropped


def test_dp_gradient_is_float32_with_bf16_parameters():
  params = {"w": jnp.zeros((4,), jnp.bfloat16), "b": jnp.zeros((), jnp.bfloat16)}
  x, y = regression_data(n=8, p=4)
  dp = train.DPConfig(clipping.ClippingConfig(1.0), 1.0, 8.0)
  grad, _ = train.dp_gradient(linear_loss, params, (x, y), jnp.ones(8, bool), jax.random.PRNGKey(0), dp)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(grad))
