"""Training split over CPU devices (`dpjax.devices` + `LoopConfig.data_parallel`).

The multi-device part runs in its own subprocess: the device count is fixed when JAX starts.
"""

import json
import subprocess
import sys
import textwrap

import jax
import numpy as np
import optax
import pytest

from dpjax import clipping
from dpjax import devices
from dpjax import engine
from dpjax import randomness
from dpjax import sampling
from dpjax import train

SCRIPT = textwrap.dedent("""
    import json, sys, tempfile
    from dpjax import devices
    count = devices.use_cpu_devices(2)
    import jax, jax.numpy as jnp, numpy as np, optax
    from dpjax import clipping, engine, randomness, sampling, train

    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(40, 5)).astype(np.float32),
            "y": rng.normal(size=(40,)).astype(np.float32)}
    params = {"w": jnp.zeros((5,)), "b": jnp.zeros(())}
    def loss_fn(p, ex):
      return (ex["x"] @ p["w"] + p["b"] - ex["y"]) ** 2
    sampler = sampling.BatchSampler(40, 8, "poisson", multiple_of=2)
    secret = randomness.PrivateRandomness(secret_seed=3)
    dp = train.DPConfig(clipping.ClippingConfig(clip_norm=0.5), 1.0, 8.0)

    def run(parallel, steps, workdir=None):
      loop = engine.LoopConfig(num_steps=steps, workdir=workdir, data_parallel=parallel,
                               checkpoint_every=1, log_every=1)
      result = engine.train(loss_fn, params, optax.sgd(0.1), data, sampler=sampler, dp=dp,
                            loop=loop, randomness=secret)
      leaf = result.state.params["w"]
      return {"w": np.asarray(leaf).tolist(), "b": float(result.state.params["b"]),
              "steps": result.ledger.steps, "epsilon": result.epsilon(1e-5),
              "shards": len(leaf.sharding.device_set)}

    out = {"count": count, "single": run(False, 4), "parallel": run(True, 4)}
    workdir = tempfile.mkdtemp()
    run(True, 2, workdir)
    out["resumed"] = run(True, 4, workdir)
    import flax.linen as nn
    from dpjax import parallel
    from experiments.classify import classifier
    class Tiny(nn.Module):
      num_classes: int = 3
      @nn.compact
      def __call__(self, x):
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))
    model = Tiny()
    tiny_params = model.init(jax.random.PRNGKey(0), np.zeros((1, 4, 4, 1), np.float32))["params"]
    images = rng.random((11, 4, 4, 1)).astype(np.float32)
    labels = rng.integers(0, 3, 11)
    replicated = parallel.replicate(tiny_params, parallel.data_mesh())
    out["eval"] = [classifier.evaluate(model, p, images, labels, batch_size=5)
                   for p in (tiny_params, replicated)]
    out["logits"] = [classifier.predict_logits(model, p, images, batch_size=5).tolist()
                     for p in (tiny_params, replicated)]
    # The classifier on two devices: the same step as on one (same secret stream, opted in).
    config = classifier.ClassifierConfig(
        model="mlp", model_kwargs={"hidden": (8,)}, dataset="digits", max_per_class=10,
        batch_size=16, noise_multiplier=1.0, steps=3, eval_every=3, log_every=0,
        reproducible_private_randomness=True)
    dp_runs = [classifier.train_classifier(config.__class__(**{**config.to_dict(),
                                                                "data_parallel": flag}))
               for flag in (False, True)]
    out["classifier"] = {
        "padded": [classifier.make_sampler(r.config, 100).padded_size for r in dp_runs],
        "max_diff": max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                        for a, b in zip(jax.tree.leaves(dp_runs[0].params),
                                        jax.tree.leaves(dp_runs[1].params))),
        "epsilon": [r.epsilon for r in dp_runs], "test_loss": [r.test_loss for r in dp_runs]}
    try:
      devices.use_cpu_devices(3)
      out["late_change"] = "accepted"
    except RuntimeError as error:
      out["late_change"] = str(error)
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def two_device_result():
  proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


@pytest.mark.slow  # reads the two-device subprocess run
def test_host_split_into_two_devices(two_device_result):
  assert two_device_result["count"] == 2
  assert two_device_result["parallel"]["shards"] == 2
  assert two_device_result["single"]["shards"] == 1


@pytest.mark.slow  # reads the two-device subprocess run
def test_two_devices_train_like_one(two_device_result):
  single, parallel = two_device_result["single"], two_device_result["parallel"]
  np.testing.assert_allclose(parallel["w"], single["w"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(parallel["b"], single["b"], rtol=1e-5, atol=1e-6)
  assert parallel["epsilon"] == single["epsilon"] and parallel["steps"] == 4


@pytest.mark.slow  # reads the two-device subprocess run
def test_resume_on_two_devices_keeps_ledger_and_params(two_device_result):
  resumed, parallel = two_device_result["resumed"], two_device_result["parallel"]
  assert resumed["steps"] == 4
  assert resumed["epsilon"] == pytest.approx(parallel["epsilon"])
  np.testing.assert_allclose(resumed["w"], parallel["w"], rtol=1e-6, atol=1e-7)


@pytest.mark.slow  # reads the two-device subprocess run
def test_evaluation_of_replicated_params_matches_one_device(two_device_result):
  single, sharded = two_device_result["eval"]
  assert sharded["accuracy"] == single["accuracy"]
  assert sharded["loss"] == pytest.approx(single["loss"], rel=1e-6)
  np.testing.assert_allclose(*two_device_result["logits"], rtol=1e-6, atol=1e-6)


@pytest.mark.slow  # reads the two-device subprocess run
def test_classifier_on_two_devices_trains_like_one(two_device_result):
  result = two_device_result["classifier"]
  assert result["padded"][1] % 2 == 0  # the sampler pads to a multiple of the devices
  assert result["max_diff"] < 1e-5
  assert result["epsilon"][0] == result["epsilon"][1]
  assert result["test_loss"][0] == pytest.approx(result["test_loss"][1], rel=1e-5)


@pytest.mark.slow  # reads the two-device subprocess run
def test_changing_the_split_after_start_is_refused(two_device_result):
  assert "already started with 2 CPU device" in two_device_result["late_change"]


@pytest.mark.parametrize("bad", ["-1", "two", "1.5"])
def test_bad_device_count_names_the_flag(bad):
  with pytest.raises(ValueError, match="--cpu_devices"):
    devices.resolve_count(bad)


def test_auto_is_at_least_one_core():
  assert devices.resolve_count("auto") >= 1
  assert devices.resolve_count(0) == 0


def test_data_parallel_on_one_device_trains_on_it():
  data = {"x": np.ones((6, 2), np.float32), "y": np.zeros((6,), np.float32)}
  loss_fn = lambda p, ex: (ex["x"] @ p - ex["y"]) ** 2
  sampler = sampling.BatchSampler(6, 3, "poisson")
  dp = train.DPConfig(clipping.ClippingConfig(clip_norm=1.0), 0.0, 3.0)
  secret = randomness.PrivateRandomness(secret_seed=0)
  results = [engine.train(loss_fn, np.ones(2, np.float32), optax.sgd(0.1), data, sampler=sampler,
                          dp=dp, randomness=secret,
                          loop=engine.LoopConfig(num_steps=2, data_parallel=flag)).state.params
             for flag in (False, True)]
  assert jax.device_count() == 1
  np.testing.assert_array_equal(results[0], results[1])
  assert not np.allclose(results[0], 1.0)  # it trained
