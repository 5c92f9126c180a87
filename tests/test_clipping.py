"""Clipping checked against independent computations: a Python loop of single-example grads."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

from dpjax import clipping
from dpjax import train

jax.config.update("jax_enable_x64", False)


def mlp_loss(params, example):
  x, y = example
  h = jnp.tanh(x @ params["dense1"]["w"] + params["dense1"]["b"])
  logits = h @ params["dense2"]["w"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def make_problem(batch=8, dim=5, hidden=7, classes=3, seed=0):
  k = jax.random.split(jax.random.PRNGKey(seed), 4)
  params = {"dense1": {"w": jax.random.normal(k[0], (dim, hidden)), "b": jnp.zeros(hidden)},
            "dense2": {"w": jax.random.normal(k[1], (hidden, classes))}}
  x = 3.0 * jax.random.normal(k[2], (batch, dim))
  y = jax.random.randint(k[3], (batch,), 0, classes)
  return params, (x, y)


def loop_grads(params, batch):
  x, y = batch
  return [jax.grad(mlp_loss)(params, (x[i], y[i])) for i in range(x.shape[0])]


def flat_norm(tree, ord=2):
  v = jnp.concatenate([jnp.ravel(l) for l in jax.tree.leaves(tree)])
  return float(jnp.linalg.norm(v, ord=ord))


def loop_clipped_sum(params, batch, clip_norm, mask=None, ord=2):
  grads = loop_grads(params, batch)
  total = jax.tree.map(jnp.zeros_like, params)
  for i, g in enumerate(grads):
    if mask is not None and not mask[i]:
      continue
    factor = min(1.0, clip_norm / max(flat_norm(g, ord), 1e-30))
    total = jax.tree.map(lambda t, gi: t + factor * gi, total, g)
  return total


def test_vmap_grads_equal_loop_of_single_example_grads():
  params, batch = make_problem()
  losses, grads = jax.jit(lambda p, b: clipping.per_example_grads(mlp_loss, p, b))(params, batch)
  for i, expected in enumerate(loop_grads(params, batch)):
    chex.assert_trees_all_close(jax.tree.map(lambda g: g[i], grads), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses[i], mlp_loss(params, (batch[0][i], batch[1][i])), rtol=1e-5)


@pytest.mark.parametrize("norm,ord", [("l2", 2), ("l1", 1)])
def test_clipped_sum_equals_loop(norm, ord):
  params, batch = make_problem()
  config = clipping.ClippingConfig(clip_norm=0.5, norm=norm)
  mask = jnp.ones(8, bool)
  summed, metrics = jax.jit(lambda p, b, m: clipping.clipped_grad_sum(mlp_loss, p, b, m, config))(
      params, batch, mask)
  chex.assert_trees_all_close(summed, loop_clipped_sum(params, batch, 0.5, ord=ord), rtol=1e-4, atol=1e-5)
  norms = [flat_norm(g, ord) for g in loop_grads(params, batch)]
  assert float(metrics.num_clipped) == sum(n > 0.5 for n in norms)
  np.testing.assert_allclose(float(metrics.norm_sum), sum(norms), rtol=1e-4)


def _tree_strategy():
  shapes = st.lists(st.tuples(st.integers(1, 4), st.integers(1, 5)), min_size=1, max_size=3)
  return st.tuples(shapes, st.floats(1e-3, 1e3), st.floats(1e-2, 10.0), st.integers(0, 2**16))


@settings(max_examples=25, deadline=None)
@given(_tree_strategy())
def test_every_clipped_per_example_norm_is_at_most_clip_norm(args):
  shapes, scale, clip_norm, seed = args
  keys = jax.random.split(jax.random.PRNGKey(seed), len(shapes) + 1)
  params = {f"layer{i}": scale * jax.random.normal(k, s) for i, (k, s) in enumerate(zip(keys, shapes))}
  batch = scale * jax.random.normal(keys[-1], (6, 3))

  def loss(p, x):  # gradient = p * sum(x): scales with `scale`, differs per example
    return sum(jnp.sum(v ** 2) for v in jax.tree.leaves(p)) * jnp.sum(x) / 2

  _, grads = clipping.per_example_grads(loss, params, batch)
  norms = clipping.per_example_norms(grads)
  factors = clipping.clip_factor(norms, clip_norm)
  clipped_norms = norms * factors
  assert np.all(np.asarray(clipped_norms) <= clip_norm * (1 + 1e-6))
  # Examples under the bound are untouched.
  under = np.asarray(norms) <= clip_norm
  np.testing.assert_allclose(np.asarray(factors)[under], 1.0)


def test_infinite_clip_and_zero_noise_is_the_nonprivate_mean_gradient():
  params, batch = make_problem()
  config = train.DPConfig(clipping.ClippingConfig(clip_norm=math.inf), noise_multiplier=0.0,
                          expected_batch_size=8)
  grad, _ = jax.jit(lambda p: train.dp_gradient(mlp_loss, p, batch, jnp.ones(8, bool),
                                                jax.random.PRNGKey(0), config))(params)
  mean_loss = lambda p: jnp.mean(jax.vmap(mlp_loss, in_axes=(None, 0))(p, batch))
  chex.assert_trees_all_close(grad, jax.grad(mean_loss)(params), rtol=1e-5, atol=1e-6)


def test_matches_optax_differentially_private_aggregate_without_noise():
  params, batch = make_problem()
  _, grads = clipping.per_example_grads(mlp_loss, params, batch)
  oracle = optax.contrib.differentially_private_aggregate(
      l2_norm_clip=0.3, noise_multiplier=0.0, key=0)
  expected, _ = oracle.update(grads, oracle.init(params))
  config = train.DPConfig(clipping.ClippingConfig(clip_norm=0.3), noise_multiplier=0.0,
                          expected_batch_size=8)
  grad, _ = jax.jit(lambda p: train.dp_gradient(mlp_loss, p, batch, jnp.ones(8, bool),
                                                jax.random.PRNGKey(0), config))(params)
  chex.assert_trees_all_close(grad, expected, rtol=1e-5, atol=1e-6)


def test_padded_examples_contribute_nothing():
  params, batch = make_problem(batch=8)
  mask = jnp.array([True] * 5 + [False] * 3)
  config = clipping.ClippingConfig(clip_norm=0.5)
  padded, metrics = jax.jit(lambda b, m: clipping.clipped_grad_sum(mlp_loss, params, b, m, config))(batch, mask)
  unpadded, _ = clipping.clipped_grad_sum(mlp_loss, params, jax.tree.map(lambda a: a[:5], batch),
                                          jnp.ones(5, bool), config)
  chex.assert_trees_all_close(padded, unpadded, rtol=1e-5, atol=1e-6)
  assert float(metrics.num_examples) == 5


def test_nonfinite_example_contributes_zero_and_is_counted():
  params, (x, y) = make_problem(batch=6)
  x_bad = x.at[2, 0].set(jnp.nan)
  config = clipping.ClippingConfig(clip_norm=0.5)
  summed, metrics = clipping.clipped_grad_sum(mlp_loss, params, (x_bad, y), jnp.ones(6, bool), config)
  keep = np.array([True, True, False, True, True, True])
  expected = loop_clipped_sum(params, (x, y), 0.5, mask=keep)
  chex.assert_trees_all_close(summed, expected, rtol=1e-4, atol=1e-5)
  assert float(metrics.num_nonfinite) == 1
  assert all(np.all(np.isfinite(l)) for l in jax.tree.leaves(summed))


@pytest.mark.parametrize("chunk", [1, 2, 4])
def test_microbatched_equals_unchunked(chunk):
  params, batch = make_problem(batch=8)
  mask = jnp.array([True] * 6 + [False] * 2)
  whole, m_whole = clipping.clipped_grad_sum(mlp_loss, params, batch, mask, clipping.ClippingConfig(0.5))
  chunked, m_chunked = jax.jit(lambda b, m: clipping.clipped_grad_sum(
      mlp_loss, params, b, m, clipping.ClippingConfig(0.5, microbatch_size=chunk)))(batch, mask)
  chex.assert_trees_all_close(chunked, whole, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(m_chunked, m_whole, rtol=1e-5, atol=1e-5)


def test_microbatch_size_that_does_not_divide_the_batch_pads_with_masked_examples():
  """A padded batch of 8 in chunks of 3 (e.g. Poisson padding 111 with microbatches of 16)."""
  params, batch = make_problem(batch=8)
  mask = jnp.arange(8) < 7
  whole, whole_metrics = clipping.clipped_grad_sum(mlp_loss, params, batch, mask,
                                                   clipping.ClippingConfig(0.5))
  chunked, chunked_metrics = clipping.clipped_grad_sum(
      mlp_loss, params, batch, mask, clipping.ClippingConfig(0.5, microbatch_size=3))
  chex.assert_trees_all_close(chunked, whole, rtol=1e-5, atol=1e-6)
  assert float(chunked_metrics.num_examples) == float(whole_metrics.num_examples) == 7


def test_per_layer_clipping_bounds_each_group_and_sums_to_loop():
  params, batch = make_problem()
  groups = clipping.parameter_groups(params)
  assert groups == ["dense1", "dense2"]
  bounds = {"dense1": 0.2, "dense2": 0.7}
  config = clipping.ClippingConfig(layer_clip_norms=bounds)
  assert config.sensitivity == pytest.approx(math.sqrt(0.2 ** 2 + 0.7 ** 2))
  summed, _ = jax.jit(lambda p: clipping.clipped_grad_sum(mlp_loss, p, batch, jnp.ones(8, bool), config))(params)
  expected = jax.tree.map(jnp.zeros_like, params)
  for g in loop_grads(params, batch):
    for name, bound in bounds.items():
      factor = min(1.0, bound / flat_norm(g[name]))
      expected[name] = jax.tree.map(lambda t, gi: t + factor * gi, expected[name], g[name])
  chex.assert_trees_all_close(summed, expected, rtol=1e-4, atol=1e-5)


def test_per_layer_clipping_refuses_unnamed_groups_and_splits_total():
  params, batch = make_problem()
  config = clipping.ClippingConfig(layer_clip_norms={"dense1": 1.0})
  with pytest.raises(ValueError, match="dense2"):
    clipping.clipped_grad_sum(mlp_loss, params, batch, jnp.ones(8, bool), config)
  split = clipping.equal_layer_clip_norms(params, 2.0)
  assert clipping.ClippingConfig(layer_clip_norms=split).sensitivity == pytest.approx(2.0)
  split_l1 = clipping.equal_layer_clip_norms(params, 2.0, norm="l1")
  assert clipping.ClippingConfig(layer_clip_norms=split_l1, norm="l1").sensitivity == pytest.approx(2.0)


def test_bad_configs_are_refused():
  with pytest.raises(ValueError, match="clip_norm"):
    clipping.ClippingConfig(clip_norm=0.0)
  with pytest.raises(ValueError, match="norm"):
    clipping.ClippingConfig(norm="linf")
  with pytest.raises(ValueError, match="finite clip norm"):
    train.DPConfig(clipping.ClippingConfig(clip_norm=math.inf), noise_multiplier=1.0, expected_batch_size=4)
