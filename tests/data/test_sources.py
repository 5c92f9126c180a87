"""Training from disk a batch at a time equals training from memory, without loading the data."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dpjax import clipping, engine, randomness, sampling, train
from dpjax.data import images, sources

ROOT = pathlib.Path(__file__).resolve().parents[2]


def loss_fn(params, example):
  return (jnp.dot(params["w"], example["x"].reshape(-1)) + params["b"] - example["y"]) ** 2


OPTIMIZER = optax.sgd(0.1)  # one object: runs with the same step share its compilation


def _train(data, num_records, steps=4, dim=6):
  sampler = sampling.BatchSampler(num_records, 8)
  dp = train.DPConfig(clipping.ClippingConfig(clip_norm=1.0), 1.0, sampler.expected_batch_size)
  params = {"w": jnp.zeros(dim), "b": jnp.zeros(())}
  return engine.train(loss_fn, params, OPTIMIZER, data, sampler=sampler, dp=dp,
                      loop=engine.LoopConfig(num_steps=steps, delta=1e-3),
                      randomness=randomness.PrivateRandomness(secret_seed=2024))


def test_npy_source_trains_as_the_in_memory_arrays(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {"x": rng.normal(size=(50, 2, 3)).astype(np.float32),
            "y": rng.normal(size=50).astype(np.float32)}
  chunks = ({k: v[i:i + 16] for k, v in arrays.items()} for i in range(0, 50, 16))
  source = sources.NpySource(sources.write_npy_dir(tmp_path / "npy", chunks, 50))
  assert source.num_records == 50 and source.nbytes == sum(a.nbytes for a in arrays.values())
  from_disk, in_memory = _train(source, 50), _train(arrays, 50)
  for a, b in zip(jax.tree.leaves(from_disk.state.params), jax.tree.leaves(in_memory.state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert from_disk.epsilon(1e-3) == in_memory.epsilon(1e-3)


def test_batches_are_read_ahead_on_a_host_thread(tmp_path):
  arrays = {"x": np.ones((20, 6), np.float32), "y": np.zeros(20, np.float32)}
  source = sources.NpySource(sources.write_npy_dir(tmp_path, [arrays], 20))
  threads = []
  gather = source.gather
  source.gather = lambda idx: threads.append(threading.current_thread()) or gather(idx)
  _train(source, 20, steps=3)
  assert len(threads) == 3 and threading.main_thread() not in threads


def test_a_non_finite_batch_is_refused(tmp_path):
  arrays = {"x": np.full((20, 6), np.nan, np.float32), "y": np.zeros(20, np.float32)}
  source = sources.NpySource(sources.write_npy_dir(tmp_path, [arrays], 20))
  with pytest.raises(ValueError, match="NaN"):
    _train(source, 20, steps=2)


def test_image_file_source_decodes_as_the_folder_loader(tmp_path):
  from PIL import Image
  rng = np.random.default_rng(1)
  for label in ("cat", "dog"):
    (tmp_path / "train" / label).mkdir(parents=True)
    for i in range(3):
      Image.fromarray(rng.integers(0, 255, (8, 8, 3), np.uint8)).save(
          tmp_path / "train" / label / f"{i}.png")
  files, labels, classes = sources.image_folder_files(tmp_path)
  assert classes == ("cat", "dog") and labels.tolist() == [0, 0, 0, 1, 1, 1]
  source = sources.ImageFileSource(files, labels, resize=4, workers=2)
  loaded = images.load_image_folder(tmp_path, resize=4, test_fraction=0.5, seed=0, channels=3)
  batch = source.gather(np.arange(6).reshape(2, 3))
  assert batch["image"].shape == (2, 3, 4, 4, 3) and batch["image"].dtype == np.float32
  # The folder loader held out half of each class; its train images are among the decoded ones.
  flat = batch["image"].reshape(6, -1)
  for image in loaded.train_images:
    assert np.min(np.abs(flat - image.reshape(-1)).max(axis=1)) < 1e-6


RSS_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np, optax
    from dpjax import clipping, engine, randomness, sampling, train
    from dpjax.data import sources
    source = sources.NpySource(sys.argv[1])
    def loss_fn(p, ex):
      return (jnp.dot(p["w"], ex["x"]) - ex["y"]) ** 2
    sampler = sampling.BatchSampler(source.num_records, 64)
    dp = train.DPConfig(clipping.ClippingConfig(clip_norm=1.0), 1.0, 64.0)
    params = {"w": jnp.zeros(source.row_shape("x")[0])}
    def status(field):  # bytes, from /proc/self/status (VmRSS: now, VmHWM: peak)
      line = [l for l in open("/proc/self/status") if l.startswith(field + ":")][0]
      return int(line.split()[1]) * 1024
    optimizer = optax.sgd(0.1)
    run = lambda steps: engine.train(loss_fn, params, optimizer, source, sampler=sampler, dp=dp,
                                     loop=engine.LoopConfig(num_steps=steps, delta=1e-3))
    run(1)  # compiles the step: the peak below is the data's, not the compiler's
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")  # resets the peak (VmHWM) to the current RSS
    before = status("VmRSS")
    result = run(5)
    print("RESULT" + json.dumps({"rss_before": before, "peak_after": status("VmHWM"),
                                 "dataset_bytes": source.nbytes,
                                 "steps": result.ledger.steps}))
""")


@pytest.mark.slow
def test_peak_rss_stays_far_below_the_dataset_size(tmp_path):
  num_records, dim = 16384, 4096  # 256 MiB of float32 on disk
  rng = np.random.default_rng(0)
  chunks = ({"x": rng.normal(size=(2048, dim)).astype(np.float32),
             "y": rng.normal(size=2048).astype(np.float32)} for _ in range(num_records // 2048))
  directory = sources.write_npy_dir(tmp_path / "big", chunks, num_records)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  proc = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(directory)], capture_output=True,
                        text=True, env=env, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads([l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1][6:])
  growth = out["peak_after"] - out["rss_before"]
  print(f"dataset {out['dataset_bytes'] / 2**20:.0f} MiB; RSS {out['rss_before'] / 2**20:.0f} MiB "
        f"before training, peak {out['peak_after'] / 2**20:.0f} MiB during it ({growth / 2**20:.1f} "
        "MiB growth)")
  assert out["steps"] == 5
  assert growth < 0.2 * out["dataset_bytes"]  # measured: about 12 MiB of 256


def test_per_person_batches_read_from_disk_equal_memory(tmp_path):
  from dpjax import user_level
  rng = np.random.default_rng(3)
  arrays = {"x": rng.normal(size=(30, 6)).astype(np.float32),
            "y": rng.normal(size=30).astype(np.float32)}
  source = sources.NpySource(sources.write_npy_dir(tmp_path, [arrays], 30))
  sampler = user_level.PersonSampler(np.arange(30) // 3, batch_size=4, records_per_person=2)
  dp = train.DPConfig(clipping.ClippingConfig(clip_norm=1.0), 1.0, sampler.expected_batch_size)
  person_loss = user_level.person_loss(loss_fn)
  results = [engine.train(person_loss, {"w": jnp.zeros(6), "b": jnp.zeros(())},
                          OPTIMIZER, data, sampler=sampler, dp=dp,
                          loop=engine.LoopConfig(num_steps=3, delta=1e-3),
                          randomness=randomness.PrivateRandomness(secret_seed=99))
             for data in (source, arrays)]
  for a, b in zip(*(jax.tree.leaves(r.state.params) for r in results)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert results[0].ledger.current.unit == "person"
