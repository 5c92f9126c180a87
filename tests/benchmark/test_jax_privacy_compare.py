"""The jax_privacy peer step computes the same DP-SGD update as dpjax's step (noise off)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dpjax import clipping
from dpjax import train
from experiments.benchmark import benchmark
from experiments.benchmark import jax_privacy_compare

pytest.importorskip("jax_privacy")


def _one_step(make, params, batch, mask):
  init, step = make()
  state, metrics = step(init(jax.tree.map(jnp.copy, params)), batch, mask)
  return state.params, metrics


@pytest.mark.parametrize("workload,batch_size", [
    ("linear", 6), pytest.param("cnn", 4, marks=pytest.mark.slow)])  # cnn: 20 s of compiles
def test_peer_step_equals_dpjax_step_without_noise(workload, batch_size):
  _, params, loss_fn, batch, _ = benchmark.make_workload(workload, batch_size, seed=3)
  mask = jnp.arange(batch_size) != 1  # one padding slot: it must contribute nothing
  optimizer = optax.sgd(0.5)
  clip_norm = 0.05  # small enough that every example is clipped
  peer = lambda: jax_privacy_compare.make_step(
      loss_fn, optimizer, clip_norm=clip_norm, noise_multiplier=0.0,
      expected_batch_size=float(batch_size), noise_key=jax.random.key(0))
  dp = train.DPConfig(clipping.ClippingConfig(clip_norm=clip_norm, method="vmap"), 0.0,
                      float(batch_size))
  ours = lambda: (lambda p: train.init_state(p, optimizer, jax.random.key(0)),
                  train.make_dp_step(loss_fn, optimizer, dp))
  peer_params, peer_metrics = _one_step(peer, params, batch, mask)
  our_params, our_metrics = _one_step(ours, params, batch, mask)
  for a, b in zip(jax.tree.leaves(peer_params), jax.tree.leaves(our_params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(peer_metrics["loss"], our_metrics["loss"], rtol=1e-5)
  assert float(peer_metrics["batch_size"]) == batch_size - 1


def test_peer_noise_has_the_stated_scale():
  params = {"w": jnp.zeros((20000,))}
  loss_fn = lambda p, ex: jnp.sum(p["w"]) * 0.0 + ex["x"]  # zero gradient: the update is noise
  init, step = jax_privacy_compare.make_step(
      loss_fn, optax.sgd(1.0), clip_norm=2.0, noise_multiplier=1.5, expected_batch_size=4.0,
      noise_key=jax.random.key(1))
  state, _ = step(init(params), {"x": jnp.zeros((4,))}, jnp.ones((4,), bool))
  # sgd(1): params = -noise / B, noise ~ N(0, (1.5 * 2)^2).
  np.testing.assert_allclose(np.std(np.asarray(state.params["w"]) * 4.0), 3.0, rtol=0.03)


TWO_DEVICES = """
import json, jax, jax.numpy as jnp, optax
from dpjax import parallel
from experiments.benchmark import benchmark, jax_privacy_compare
_, params, loss_fn, batch, mask = benchmark.make_workload("linear", 6, 0)
mask = jnp.arange(6) != 2
mesh = parallel.data_mesh(jax.local_devices())
out = []
for m in (None, mesh):
  init, step = jax_privacy_compare.make_step(loss_fn, optax.sgd(1.0), clip_norm=0.1,
      noise_multiplier=0.0, expected_batch_size=6.0, noise_key=jax.random.key(0), mesh=m)
  state, b, k = init(jax.tree.map(jnp.copy, params)), batch, mask
  if m is not None:
    state, (b, k) = parallel.replicate(state, m), parallel.shard_batch(batch, mask, m)
  state, _ = step(state, b, k)
  out.append([float(x) for x in jax.tree.leaves(state.params)[1][:5, 0]])
print("RESULT" + json.dumps({"devices": jax.device_count(), "params": out}))
"""


@pytest.mark.slow
def test_peer_step_on_two_devices_equals_one_device():
  import json, os, subprocess, sys  # pylint: disable=import-outside-toplevel,multiple-imports
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", TWO_DEVICES], capture_output=True, text=True,
                        env=env, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads([l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1][6:])
  assert out["devices"] == 2
  np.testing.assert_allclose(out["params"][1], out["params"][0], rtol=1e-5, atol=1e-7)
