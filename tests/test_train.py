"""The jitted DP step and the host training loop."""

import json
import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dpjax import accounting
from dpjax import checkpoint
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


def run(workdir=None, num_steps=60, seed=0, noise_multiplier=0.8, max_epsilon=None,
        allow_privacy_change=False, batch_size=40, data=None):
  x, y = data or regression_data()
  sampler = sampling.BatchSampler(len(x), batch_size, seed=seed)
  dp = train.DPConfig(clipping.ClippingConfig(1.0), noise_multiplier, sampler.expected_batch_size)
  loop = train.LoopConfig(num_steps=num_steps, workdir=workdir, checkpoint_every=10, log_every=10,
                          delta=1e-5, max_epsilon=max_epsilon,
                          allow_privacy_change=allow_privacy_change)
  return train.train(linear_loss, init_params(), optax.sgd(0.3), (x, y), sampler=sampler, dp=dp,
                     loop=loop, noise_key=jax.random.PRNGKey(seed))


def test_step_compiles_once_over_batches_of_varying_size():
  x, y = regression_data()
  sampler = sampling.BatchSampler(len(x), 40, seed=0)
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


def test_same_seed_gives_bit_identical_parameters():
  a = run(seed=5)
  b = run(seed=5)
  c = run(seed=6)
  for leaf_a, leaf_b in zip(jax.tree.leaves(a.state.params), jax.tree.leaves(b.state.params)):
    np.testing.assert_array_equal(np.asarray(leaf_a), np.asarray(leaf_b))
  assert not np.array_equal(np.asarray(a.state.params["w"]), np.asarray(c.state.params["w"]))


def test_dp_training_learns_and_reports_the_ledgers_epsilon():
  result = run(num_steps=200, noise_multiplier=0.5)
  assert result.history[-1]["loss"] < 0.2 * result.history[0]["loss"] + 0.05
  expected = accounting.compute_epsilon(
      [accounting.PrivacyPhase(0.5, 400, 40, steps=200)], 1e-5)
  assert result.epsilon(1e-5) == pytest.approx(expected)
  assert result.history[-1]["epsilon"] == pytest.approx(expected)


def test_resume_continues_with_the_same_parameters_and_ledger(tmp_path):
  full = run(workdir=str(tmp_path / "full"), num_steps=60)
  part = str(tmp_path / "part")
  run(workdir=part, num_steps=30)
  resumed = run(workdir=part, num_steps=60)
  chex.assert_trees_all_equal(resumed.state.params, full.state.params)
  assert resumed.ledger.steps == 60
  assert resumed.epsilon(1e-5) == pytest.approx(full.epsilon(1e-5))
  steps = [json.loads(line)["step"] for line in open(os.path.join(part, "metrics.jsonl"))]
  assert steps == [10, 20, 30, 40, 50, 60]


def test_resume_with_changed_privacy_is_refused_unless_allowed(tmp_path):
  run(workdir=str(tmp_path), num_steps=20)
  with pytest.raises(ValueError, match="allow_privacy_change"):
    run(workdir=str(tmp_path), num_steps=40, noise_multiplier=2.0)
  result = run(workdir=str(tmp_path), num_steps=40, noise_multiplier=2.0, allow_privacy_change=True)
  assert [p.steps for p in result.ledger.phases] == [20, 20]
  assert [p.noise_multiplier for p in result.ledger.phases] == [0.8, 2.0]


def test_max_epsilon_stops_before_the_step_that_would_exceed_it():
  result = run(num_steps=500, max_epsilon=2.0)
  assert result.stopped_by_budget
  assert result.epsilon(1e-5) <= 2.0
  assert result.ledger.epsilon(1e-5, extra_steps=1) > 2.0


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


def test_nan_in_training_data_is_refused_with_a_clear_message():
  x, y = regression_data()
  x[3, 2] = np.nan
  with pytest.raises(ValueError, match="NaN/Inf"):
    run(data=(x, y))


def test_truncated_checkpoint_is_refused(tmp_path):
  run(workdir=str(tmp_path), num_steps=10)
  path = checkpoint.path(str(tmp_path))
  data = open(path, "rb").read()
  open(path, "wb").write(data[: len(data) // 2])
  with pytest.raises(ValueError, match="unreadable"):
    run(workdir=str(tmp_path), num_steps=20)


def test_sampler_and_dp_config_must_agree():
  x, y = regression_data()
  sampler = sampling.BatchSampler(len(x), 40)
  dp = train.DPConfig(clipping.ClippingConfig(1.0), 1.0, expected_batch_size=len(x))
  with pytest.raises(ValueError, match="expected batch size"):
    train.train(linear_loss, init_params(), optax.sgd(0.1), (x, y), sampler=sampler, dp=dp,
                loop=train.LoopConfig(num_steps=1), noise_key=jax.random.PRNGKey(0))


def test_checkpoint_round_trips_typed_and_raw_keys(tmp_path):
  state = {"typed": jax.random.key(7), "raw": jax.random.PRNGKey(7), "w": jnp.arange(3.0)}
  checkpoint.save(str(tmp_path), state, {"note": "x"})
  template = {"typed": jax.random.key(0), "raw": jax.random.PRNGKey(0), "w": jnp.zeros(3)}
  restored, meta = checkpoint.restore(str(tmp_path), template)
  assert meta == {"note": "x"}
  np.testing.assert_array_equal(jax.random.key_data(restored["typed"]), jax.random.key_data(state["typed"]))
  np.testing.assert_array_equal(restored["raw"], state["raw"])
  np.testing.assert_array_equal(restored["w"], state["w"])
  np.testing.assert_array_equal(jax.random.normal(restored["typed"], (2,)), jax.random.normal(state["typed"], (2,)))
