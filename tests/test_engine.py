"""The private training engine: secret randomness, ledger, resume, released vs private outputs."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dpjax
from dpjax import accounting
from dpjax import checkpoint
from dpjax import clipping
from dpjax import engine
from dpjax import noise
from dpjax import randomness
from dpjax import report
from dpjax import sampling
from dpjax import train

from tests.test_train import init_params, linear_loss, regression_data

SECRET = randomness.PrivateRandomness(secret_seed=0)
PRIVATE_KEYS = {"loss", "clipped_fraction", "mean_grad_norm", "num_nonfinite", "batch_size"}


def run(workdir=None, num_steps=60, noise_multiplier=0.8, max_epsilon=None,
        allow_privacy_change=False, batch_size=40, data=None, source=SECRET):
  x, y = data or regression_data()
  sampler = sampling.BatchSampler(len(x), batch_size)
  dp = train.DPConfig(clipping.ClippingConfig(1.0), noise_multiplier, sampler.expected_batch_size)
  loop = engine.LoopConfig(num_steps=num_steps, workdir=workdir, checkpoint_every=10, log_every=10,
                           delta=1e-5, max_epsilon=max_epsilon,
                           allow_privacy_change=allow_privacy_change)
  return engine.train(linear_loss, init_params(), optax.sgd(0.3), (x, y), sampler=sampler, dp=dp,
                      loop=loop, randomness=source)


def test_same_public_seed_gives_different_private_parameters_by_default():
  """Batches and noise come from the OS: nothing in the run's public seed recreates them."""
  a = run(source=randomness.SECURE, num_steps=5)
  b = run(source=randomness.SECURE, num_steps=5)
  assert not np.array_equal(np.asarray(a.state.params["w"]), np.asarray(b.state.params["w"]))
  assert a.epsilon(1e-5) == b.epsilon(1e-5)


def test_reproducible_private_randomness_is_bit_identical_and_seed_dependent():
  a = run(source=randomness.PrivateRandomness(secret_seed=5))
  b = run(source=randomness.PrivateRandomness(secret_seed=5))
  c = run(source=randomness.PrivateRandomness(secret_seed=6))
  chex.assert_trees_all_equal(a.state.params, b.state.params)
  assert not np.array_equal(np.asarray(a.state.params["w"]), np.asarray(c.state.params["w"]))
  assert a.epsilon(1e-5) == c.epsilon(1e-5)


def test_noise_is_not_derivable_from_the_public_seed():
  """The adversary of the old code: regenerate step 0's noise from PRNGKey(seed) and subtract it.

  One full-batch step of SGD(1) from zero: params = -(clipped sum + sigma C z) / N. With the old
  keying (noise key = PRNGKey(seed)) this recovered the clipped sum to 1e-6.
  """
  x, y = regression_data(n=50)
  sampler = sampling.BatchSampler(50, 50, "full")
  dp = train.DPConfig(clipping.ClippingConfig(1.0), 2.0, 50.0)
  result = engine.train(linear_loss, init_params(), optax.sgd(1.0), (x, y), sampler=sampler, dp=dp,
                        loop=engine.LoopConfig(num_steps=1))
  released = jax.tree.map(lambda p: -p * 50.0, result.state.params)  # clipped sum + noise
  true_sum, _ = clipping.clipped_grad_sum(linear_loss, init_params(), (x, y), jnp.ones(50, bool),
                                          dp.clipping)
  for seed in range(3):
    for key in (jax.random.PRNGKey(seed), jax.random.key_data(jax.random.key(seed))):
      guess = jax.random.fold_in(key, 0)
      unit = noise.tree_noise(guess, true_sum, "gaussian")
      recovered = jax.tree.map(lambda r, z: r - 2.0 * z, released, unit)
      error = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                  zip(jax.tree.leaves(recovered), jax.tree.leaves(true_sum)))
      assert error > 0.1


def test_batches_are_not_derivable_from_a_public_seed():
  sampler = sampling.BatchSampler(1000, 50)
  drawn = [sampler.batch(0).indices for _ in range(2)]
  assert not np.array_equal(drawn[0], drawn[1])
  old_public = np.flatnonzero(np.random.default_rng([0, 0]).random(1000) < 0.05)
  assert not np.array_equal(np.sort(drawn[0][: len(old_public)]), old_public)


def test_dp_training_learns_and_reports_the_ledgers_epsilon():
  result = run(num_steps=200, noise_multiplier=0.5)
  assert result.private_history[-1]["loss"] < 0.2 * result.private_history[0]["loss"] + 0.05
  expected = accounting.compute_epsilon(
      [accounting.PrivacyPhase(0.5, 400, 40, steps=200)], 1e-5)
  assert result.epsilon(1e-5) == pytest.approx(expected)
  assert result.history[-1]["epsilon"] == pytest.approx(expected)


def test_public_history_holds_no_training_statistic(tmp_path):
  result = run(workdir=str(tmp_path), num_steps=20)
  for entry in result.history:
    assert not PRIVATE_KEYS & set(entry), entry
  for line in open(tmp_path / "progress.jsonl"):
    assert not PRIVATE_KEYS & set(json.loads(line))
  private_lines = [json.loads(l) for l in open(tmp_path / report.PRIVATE_DIR / "metrics.jsonl")]
  assert PRIVATE_KEYS <= set(private_lines[-1])
  assert not (tmp_path / "checkpoint.msgpack").exists()  # the secret noise key stays private
  assert (tmp_path / report.PRIVATE_DIR / "checkpoint.msgpack").exists()


def test_resume_continues_with_the_same_parameters_and_ledger(tmp_path):
  full = run(workdir=str(tmp_path / "full"), num_steps=60)
  part = str(tmp_path / "part")
  run(workdir=part, num_steps=30)
  resumed = run(workdir=part, num_steps=60)
  chex.assert_trees_all_equal(resumed.state.params, full.state.params)
  assert resumed.ledger.steps == 60
  assert resumed.epsilon(1e-5) == pytest.approx(full.epsilon(1e-5))
  steps = [json.loads(line)["step"] for line in open(os.path.join(part, "progress.jsonl"))]
  assert steps == [10, 20, 30, 40, 50, 60]


def test_secure_resume_keeps_the_ledger(tmp_path):
  run(workdir=str(tmp_path), num_steps=10, source=randomness.SECURE)
  resumed = run(workdir=str(tmp_path), num_steps=20, source=randomness.SECURE)
  assert resumed.ledger.steps == 20
  with pytest.raises(ValueError, match="reproducible_private_randomness"):
    run(workdir=str(tmp_path), num_steps=30, source=SECRET)


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


def test_nan_in_training_data_is_refused_with_a_clear_message():
  x, y = regression_data()
  x[3, 2] = np.nan
  with pytest.raises(ValueError, match="NaN/Inf"):
    run(data=(x, y))


def test_truncated_checkpoint_is_refused(tmp_path):
  run(workdir=str(tmp_path), num_steps=10)
  path = checkpoint.path(report.private_dir(str(tmp_path)))
  data = open(path, "rb").read()
  open(path, "wb").write(data[: len(data) // 2])
  with pytest.raises(ValueError, match="unreadable"):
    run(workdir=str(tmp_path), num_steps=20)


def test_sampler_and_dp_config_must_agree():
  x, y = regression_data()
  sampler = sampling.BatchSampler(len(x), 40)
  dp = train.DPConfig(clipping.ClippingConfig(1.0), 1.0, expected_batch_size=len(x))
  with pytest.raises(ValueError, match="expected batch size"):
    engine.train(linear_loss, init_params(), optax.sgd(0.1), (x, y), sampler=sampler, dp=dp,
                 loop=engine.LoopConfig(num_steps=1))


def test_a_sampler_with_its_own_seed_is_refused():
  x, y = regression_data()
  sampler = sampling.BatchSampler(len(x), 40, secret_seed=1)
  dp = train.DPConfig(clipping.ClippingConfig(1.0), 1.0, 40.0)
  with pytest.raises(ValueError, match="randomness"):
    engine.train(linear_loss, init_params(), optax.sgd(0.1), (x, y), sampler=sampler, dp=dp,
                 loop=engine.LoopConfig(num_steps=1))


def test_checkpoint_round_trips_typed_and_raw_keys(tmp_path):
  state = {"typed": jax.random.key(7), "raw": jax.random.PRNGKey(7), "w": jnp.arange(3.0)}
  checkpoint.save(str(tmp_path), state, {"note": "x"})
  template = {"typed": jax.random.key(0), "raw": jax.random.PRNGKey(0), "w": jnp.zeros(3)}
  restored, meta = checkpoint.restore(str(tmp_path), template)
  assert meta == {"note": "x"}
  np.testing.assert_array_equal(jax.random.key_data(restored["typed"]), jax.random.key_data(state["typed"]))
  np.testing.assert_array_equal(restored["raw"], state["raw"])
  np.testing.assert_array_equal(restored["w"], state["w"])


def test_make_private_calibrates_and_reports(tmp_path):
  x, y = regression_data()
  trainer = dpjax.make_private(linear_loss, init_params(), optax.sgd(0.3), (x, y), clip_norm=1.0,
                               target_epsilon=2.0, delta=1e-5, batch_size=40, epochs=3,
                               workdir=str(tmp_path))
  assert trainer.num_steps == sampling.steps_for_epochs(3, 400, 40) == 30
  direct = accounting.compute_epsilon(
      [accounting.PrivacyPhase(trainer.noise_multiplier, 400, 40, steps=30)], 1e-5)
  assert 0.99 * 2.0 <= direct <= 2.0
  result = trainer.train()
  assert result.epsilon(1e-5) == pytest.approx(direct)
  written = json.loads((tmp_path / report.REPORT_JSON).read_text())
  assert written["secure_randomness"] is True
  assert written["epsilon"] == pytest.approx(direct)
  assert written["steps"] == 30 and written["noise_multiplier"] == trainer.noise_multiplier


def test_make_private_needs_one_noise_and_one_length():
  x, y = regression_data()
  with pytest.raises(ValueError, match="exactly one of noise_multiplier"):
    dpjax.make_private(linear_loss, init_params(), optax.sgd(0.3), (x, y), clip_norm=1.0,
                       delta=1e-5, batch_size=40, epochs=1)
  with pytest.raises(ValueError, match="exactly one of epochs"):
    dpjax.make_private(linear_loss, init_params(), optax.sgd(0.3), (x, y), clip_norm=1.0,
                       noise_multiplier=1.0, delta=1e-5, batch_size=40)


def _one_full_batch_step(source, stream="model", data=None):
  x, y = data or regression_data(n=50)
  sampler = sampling.BatchSampler(len(x), len(x), "full")
  dp = train.DPConfig(clipping.ClippingConfig(1.0), 1.0, float(len(x)))
  return engine.train(linear_loss, init_params(), optax.sgd(1.0), (x, y), sampler=sampler, dp=dp,
                      loop=engine.LoopConfig(num_steps=1), randomness=source, stream=stream)


def test_secret_seed_streams_get_independent_randomness():
  """Two arms of a sweep under one secret seed never share noise, batches or host draws."""
  source = randomness.PrivateRandomness(secret_seed=11)
  assert not np.array_equal(source.key("arm 1", "noise"), source.key("arm 2", "noise"))
  assert source.sampling_seed("arm 1") != source.sampling_seed("arm 2")
  assert source.numpy_rng("arm 1").random() != source.numpy_rng("arm 2").random()
  # Full batches: the two arms' released parameters differ only through their noise.
  a = _one_full_batch_step(source, stream="arm 1")
  b = _one_full_batch_step(source, stream="arm 2")
  assert not np.allclose(np.asarray(a.state.params["w"]), np.asarray(b.state.params["w"]))


def test_os_randomness_is_fresh_for_keys_seeds_and_generators():
  source = randomness.SECURE
  assert source.secure
  assert not np.array_equal(source.key("model", "noise"), source.key("model", "noise"))
  assert source.sampling_seed("model") is None  # the sampler then draws each batch from the OS
  assert source.numpy_rng("x").random() != source.numpy_rng("x").random()
  # Full batches: two default runs differ only through their noise, which must be fresh.
  a, b = _one_full_batch_step(source), _one_full_batch_step(source)
  assert not np.allclose(np.asarray(a.state.params["w"]), np.asarray(b.state.params["w"]))


def test_privacy_report_marks_a_secret_seed_run_as_not_secure(tmp_path):
  result = run(num_steps=5, source=SECRET)
  report.write_privacy_report(str(tmp_path), [result.release("parameters", [], 1e-5)],
                              result.randomness)
  written = json.loads((tmp_path / report.REPORT_JSON).read_text())
  assert written["secure_randomness"] is False
  assert "secret seed stays secret" in written["condition"]
  assert "**Condition:**" in (tmp_path / report.REPORT_MD).read_text()
  assert randomness.SECURE.describe()["secure_randomness"] is True


def test_public_history_does_not_change_when_one_record_changes():
  """Released entries see the training data only through the model: with the same secret
  randomness, a changed record leaves every public entry (but the timing) as it was, while
  the private history does see it. A training statistic under any name would differ."""
  x, y = regression_data()
  x_changed, y_changed = x.copy(), y.copy()
  x_changed[0] *= 30.0
  y_changed[0] = 100.0
  public, private = [], []
  for data in ((x, y), (x_changed, y_changed)):
    result = run(num_steps=20, data=data, source=randomness.PrivateRandomness(secret_seed=3))
    public.append([{k: v for k, v in e.items() if k != "examples_per_sec"} for e in result.history])
    private.append(result.private_history)
  assert public[0] == public[1]
  assert private[0][-1]["mean_grad_norm"] != private[1][-1]["mean_grad_norm"]
