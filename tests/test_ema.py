"""The EMA of the parameters: post-processing of the DP iterates, checkpointed, free in privacy."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dpjax import checkpoint
from dpjax import clipping
from dpjax import ema
from dpjax import engine
from dpjax import randomness
from dpjax import report
from dpjax import sampling
from dpjax import train

from tests.test_train import init_params, linear_loss, regression_data

SECRET = randomness.PrivateRandomness(secret_seed=3)


def test_ema_of_a_known_sequence_equals_the_closed_form():
  decay, steps = 0.6, 30  # the warm-up reaches 0.6 at t = 13
  rng = np.random.default_rng(0)
  p0 = rng.normal(size=3).astype(np.float32)
  updates = rng.normal(size=(steps, 3)).astype(np.float32)
  transform = ema.track_params(decay)
  params, state = jnp.asarray(p0), transform.init(jnp.asarray(p0))
  for u in updates:
    out, state = transform.update(jnp.asarray(u), state, params)
    chex.assert_trees_all_equal(out, jnp.asarray(u))  # updates pass through unchanged
    params = params + out
  # Closed form: EMA_T = prod_t d_t p_0 + sum_t (1 - d_t) prod_{s > t} d_s p_{t+1}, with
  # d_t = min(decay, (1 + t) / (10 + t)) and p_{t+1} = p_0 + u_0 + ... + u_t.
  d = np.minimum(decay, (1.0 + np.arange(steps)) / (10.0 + np.arange(steps)))
  iterates = p0 + np.cumsum(updates.astype(np.float64), axis=0)
  later = np.array([np.prod(d[t + 1:]) for t in range(steps)])
  expected = np.prod(d) * p0 + np.sum(((1 - d) * later)[:, None] * iterates, axis=0)
  np.testing.assert_allclose(np.asarray(state.params), expected, rtol=1e-5, atol=1e-6)
  assert int(state.count) == steps
  assert d[0] == pytest.approx(0.1) and d[-1] == decay  # the warm-up, then the decay itself


def test_ema_off_is_the_optimizer_itself_and_bad_decays_are_refused():
  sgd = optax.sgd(0.1)
  assert ema.with_ema(sgd, 0.0) is sgd
  assert ema.find_state(sgd.init(init_params())) is None
  for bad in (1.0, -0.5):
    with pytest.raises(ValueError, match="decay"):
      ema.track_params(bad)


def _run(workdir=None, num_steps=8, decay=0.8, eval_log=None):
  x, y = regression_data(n=64)
  sampler = sampling.BatchSampler(len(x), 16)
  dp = train.DPConfig(clipping.ClippingConfig(1.0), 1.0, sampler.expected_batch_size)
  loop = engine.LoopConfig(num_steps=num_steps, workdir=workdir, checkpoint_every=4,
                           log_every=4, eval_every=4 if eval_log is not None else 0)
  eval_fn = None if eval_log is None else (lambda p: eval_log.append(p) or {})
  return engine.train(linear_loss, init_params(), ema.with_ema(optax.sgd(0.3), decay),
                      (x, y), sampler=sampler, dp=dp, loop=loop, randomness=SECRET,
                      eval_fn=eval_fn)


def test_resume_continues_the_same_ema(tmp_path):
  full = _run(str(tmp_path / "full"))
  part = str(tmp_path / "part")
  _run(part, num_steps=4)
  restored, _ = checkpoint.restore(report.private_dir(part), full.state)
  assert int(ema.find_state(restored.opt_state).count) == 4  # the EMA is in the checkpoint
  resumed = _run(part)
  chex.assert_trees_all_close(resumed.released_params, full.released_params, atol=1e-6)
  chex.assert_trees_all_close(resumed.state.params, full.state.params, atol=1e-6)
  assert int(ema.find_state(resumed.state.opt_state).count) == 8


def test_ema_changes_neither_the_iterates_nor_the_ledger_and_is_what_is_evaluated():
  seen = []
  with_ema = _run(eval_log=seen)
  without = _run(decay=0.0)
  chex.assert_trees_all_close(with_ema.state.params, without.state.params, atol=1e-6)
  assert with_ema.ledger.to_dict() == without.ledger.to_dict()
  assert with_ema.epsilon(1e-5) == without.epsilon(1e-5)
  chex.assert_trees_all_equal(seen[-1], with_ema.released_params)
  chex.assert_trees_all_equal(without.released_params, without.state.params)
  assert not np.allclose(with_ema.released_params["w"], with_ema.state.params["w"])
