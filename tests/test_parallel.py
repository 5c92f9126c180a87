"""Data-parallel DP step on 4 fake CPU devices equals the one-device step (own subprocess)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

# Each test reads one subprocess run on 4 fake devices (~30 s of compilation).
pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import json, os
    assert "jax" not in __import__("sys").modules
    import jax, jax.numpy as jnp, flax.linen as nn, optax
    from dpjax import clipping, parallel, train

    class Net(nn.Module):
      @nn.compact
      def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        x = nn.GroupNorm(num_groups=2)(x)
        return nn.Dense(3)(x.mean(axis=(1, 2)))

    model = Net()
    x = jax.random.normal(jax.random.key(0), (8, 6, 6, 2))
    y = jnp.arange(8) % 3
    mask = jnp.arange(8) < 7  # one padding example
    params = model.init(jax.random.key(1), x[:1])
    def loss_fn(p, ex):
      return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, ex["x"][None])[0], ex["y"])
    optimizer = optax.sgd(0.5)
    mesh = parallel.data_mesh()
    out = {"devices": jax.device_count()}
    for method in ("vmap", "ghost"):
      config = train.DPConfig(clipping.ClippingConfig(clip_norm=0.1, method=method), 1.1, 7.0)
      fresh = lambda: train.init_state(jax.tree.map(jnp.copy, params), optimizer, jax.random.key(5))
      single = train.make_dp_step(loss_fn, optimizer, config)
      state = jax.device_put(fresh(), jax.devices()[0])
      for _ in range(2):
        state, metrics_1 = single(state, {"x": x, "y": y}, mask)
      step = train.make_dp_step(loss_fn, optimizer, config, mesh)
      pstate = parallel.replicate(fresh(), mesh)
      batch, pmask = parallel.shard_batch({"x": x, "y": y}, mask, mesh)
      shards = len(batch["x"].addressable_shards)
      for _ in range(2):
        pstate, metrics_4 = step(pstate, batch, pmask)
      leaf = jax.tree.leaves(pstate.params)[0]
      out[method] = {
          "single": [a.tolist() for a in jax.tree.leaves(state.params)],
          "parallel": [a.tolist() for a in jax.tree.leaves(pstate.params)],
          "batch_shards": shards,
          "params_replicated": leaf.sharding.is_fully_replicated,
          "clipped": [float(metrics_1["clipped_fraction"]), float(metrics_4["clipped_fraction"])],
      }
    nonprivate = []
    for make in (lambda: train.make_nonprivate_step(loss_fn, optimizer),
                 lambda: train.make_nonprivate_step(loss_fn, optimizer, mesh)):
      state = train.init_state(jax.tree.map(jnp.copy, params), optimizer, jax.random.key(5))
      state, _ = make()(state, {"x": x, "y": y}, mask)
      nonprivate.append([a.tolist() for a in jax.tree.leaves(state.params)])
    out["nonprivate"] = nonprivate
    # Why the parallel step uses shard_map: GSPMD's partitioned vmap of conv gradients.
    f = jax.jit(lambda p, b: clipping.per_example_grads(loss_fn, p, b)[1])
    b, _ = parallel.shard_batch({"x": x, "y": y}, mask, mesh)
    diff = jax.tree.map(lambda a, c: float(jnp.max(jnp.abs(a - c))),
                        f(params, {"x": x, "y": y}), f(parallel.replicate(params, mesh), b))
    out["gspmd_vmap_conv_error"] = max(jax.tree.leaves(diff))
    try:
      parallel.shard_batch({"x": x[:6]}, mask[:6], mesh)
    except ValueError as error:
      out["indivisible_error"] = str(error)
    try:  # a process passing more than its share of the global batch
      parallel.shard_batch({"x": x}, mask, mesh, global_batch_size=4)
    except ValueError as error:
      out["oversized_share_error"] = str(error)
    # Zero gradients: after one SGD(1) step the parameters are -noise / B; their spread must be
    # sigma * C / B (noise once), not sqrt(devices) times it (noise on every device).
    zero_loss = lambda p, ex: 0.0 * jnp.sum(p["w"]) * jnp.sum(ex["x"])
    # Not multiples of the 4 devices, and above noise.UNROLLED_MIN_SIZE: each device draws a share.
    wide = {"w": jnp.zeros((70001,)), "v": jnp.zeros((3,))}
    config = train.DPConfig(clipping.ClippingConfig(clip_norm=2.0), 1.5, 4.0)
    step = train.make_dp_step(zero_loss, optax.sgd(1.0), config, mesh)
    state = parallel.replicate(train.init_state(dict(wide), optax.sgd(1.0), jax.random.key(9)), mesh)
    state, _ = step(state, *parallel.shard_batch({"x": x}, mask, mesh))
    out["zero_grad_noise_std"] = float(jnp.std(state.params["w"]))
    one = train.make_dp_step(zero_loss, optax.sgd(1.0), config)
    fresh_wide = jax.tree.map(jnp.zeros_like, wide)  # the parallel step donated `wide`
    one_state, _ = one(train.init_state(fresh_wide, optax.sgd(1.0), jax.random.key(9)), {"x": x}, mask)
    out["noise_vs_one_device"] = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                                     zip(jax.tree.leaves(state.params), jax.tree.leaves(one_state.params)))
    print("RESULT" + json.dumps(out))
""")


@pytest.fixture(scope="module")
def four_device_result():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                        timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
  return json.loads(line[len("RESULT"):])


@pytest.mark.parametrize("method", ["vmap", "ghost"])
def test_four_devices_equal_one_device(four_device_result, method):
  out = four_device_result
  assert out["devices"] == 4
  run = out[method]
  assert run["batch_shards"] == 4 and run["params_replicated"]
  assert run["clipped"][0] == run["clipped"][1] > 0
  for single, parallel in zip(run["single"], run["parallel"]):
    np.testing.assert_allclose(np.asarray(parallel), np.asarray(single), rtol=1e-5, atol=1e-6)


def test_noise_is_added_once(four_device_result):
  """Parallel vmap and ghost runs agree, and both equal the one-device run whose noise is
  added once: n copies of the noise would move parameters by far more than the tolerance."""
  a, b = four_device_result["vmap"]["parallel"], four_device_result["ghost"]["parallel"]
  for x, y in zip(a, b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_indivisible_batch_is_refused(four_device_result):
  assert "multiple_of=4" in four_device_result["indivisible_error"]


def test_a_process_passing_more_than_its_share_is_refused(four_device_result):
  assert "only its share" in four_device_result["oversized_share_error"]


def test_parallel_noise_has_the_one_device_std(four_device_result):
  """sigma * C / B = 1.5 * 2 / 4 = 0.75; noise on each of 4 devices would give 1.5."""
  assert four_device_result["zero_grad_noise_std"] == pytest.approx(0.75, rel=0.03)


def test_each_device_draws_its_share_of_the_one_device_noise(four_device_result):
  """The devices' noise shares partition the coordinates: together exactly one device's noise."""
  assert four_device_result["noise_vs_one_device"] < 1e-6


def test_nonprivate_four_devices_equal_one_device(four_device_result):
  single, parallel = four_device_result["nonprivate"]
  for a, b in zip(single, parallel):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)


def test_gspmd_vmap_conv_gradients_still_wrong(four_device_result):
  """Records the XLA CPU bug the shard_map design avoids; if this starts failing, XLA fixed it."""
  if four_device_result["gspmd_vmap_conv_error"] < 1e-4:
    pytest.skip("GSPMD partitions vmapped conv gradients correctly in this jax version")
  assert four_device_result["gspmd_vmap_conv_error"] > 1e-2


def test_shard_batch_refuses_more_than_this_process_share():
  """In-process (one device): a process passing more than its share of the global batch would
  count its examples once per host, multiplying the sensitivity; shard_batch refuses it."""
  from dpjax import parallel  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  mesh = parallel.data_mesh(jax.local_devices()[:1])
  x, mask = np.ones((8, 2), np.float32), np.ones(8, bool)
  with pytest.raises(ValueError, match="only its share"):
    parallel.shard_batch({"x": x}, mask, mesh, global_batch_size=4)
  _, placed = parallel.shard_batch({"x": x}, mask, mesh, global_batch_size=8)
  assert placed.shape == (8,)


def test_process_share_gives_each_process_its_own_slice():
  from dpjax import parallel  # pylint: disable=g-import-not-at-top
  shares = [parallel.process_share(12, i, 3) for i in range(3)]
  assert shares == [slice(0, 4), slice(4, 8), slice(8, 12)]
  with pytest.raises(ValueError, match="processes"):
    parallel.process_share(10, 0, 3)
