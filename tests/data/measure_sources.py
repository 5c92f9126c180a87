"""Examples/s of one DP-SGD step fed from memory, from .npy rows on disk, and from JPEG files.

  nice -n 10 python tests/data/measure_sources.py --folder=/tmp/cifar10_jpeg --steps=15

`--folder` is the CIFAR-10 JPEG archive of ../shared/data extracted (`tar xzf
cifar10-jpeg.tar.gz -C DIR`: gzip allows no random access). The same step (a small CNN,
per-example clipping, Poisson batches of 256 expected examples) runs on each path, in one process,
in rounds (A B C ... A B C) so that load on a shared machine hits every path alike; the ratios
are the result, not the absolute numbers. A measurement, not a test: pytest does not collect it.
"""

import argparse
import json
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax import clipping, engine, sampling, train
from dpjax.data import sources


class SmallCNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(16, (3, 3), strides=2)(x))
    x = nn.relu(nn.Conv(32, (3, 3), strides=2)(x))
    return nn.Dense(10)(x.mean(axis=(-3, -2)))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--folder", required=True)
  parser.add_argument("--steps", type=int, default=15)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--batch", type=int, default=256)
  args = parser.parse_args()

  files, labels, _ = sources.image_folder_files(args.folder, "train")
  jpeg = {f"jpeg files, {w} decode thread(s)": sources.ImageFileSource(files, labels, workers=w)
          for w in (1, 4)}
  start = time.perf_counter()
  whole = jpeg["jpeg files, 1 decode thread(s)"].gather(np.arange(len(files)))
  load_seconds = time.perf_counter() - start
  tmp = tempfile.mkdtemp()
  chunks = ({k: v[i:i + 5000] for k, v in whole.items()} for i in range(0, len(files), 5000))
  npy = sources.NpySource(sources.write_npy_dir(tmp, chunks, len(files)))
  paths = {"in memory (arrays)": whole, "npy rows on disk": npy, **jpeg}

  model = SmallCNN()
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))

  def loss_fn(p, example):
    logits = model.apply(p, example["image"][None])[0]
    return optax.softmax_cross_entropy_with_integer_labels(logits, example["label"])

  sampler = sampling.BatchSampler(len(files), args.batch)
  dp = train.DPConfig(clipping.ClippingConfig(clip_norm=1.0), 1.0, sampler.expected_batch_size)
  optimizer = optax.sgd(0.1)

  def run(data, steps):
    result = engine.train(loss_fn, params, optimizer, data, sampler=sampler, dp=dp,
                          loop=engine.LoopConfig(num_steps=steps, delta=1e-6, log_every=0))
    jax.block_until_ready(result.state.params)
    # The engine's own throughput over the loop (from the expected batch size): it leaves out
    # the set-up of each call, e.g. copying the in-memory arrays to the device.
    return result.history[-1]["examples_per_sec"]

  run(whole, 2)  # compile once: every path shares the step
  seconds = {name: 0.0 for name in paths}
  loop_rates = {name: [] for name in paths}
  for _ in range(args.rounds):
    for name, data in paths.items():
      start = time.perf_counter()
      loop_rates[name].append(run(data, args.steps))
      seconds[name] += time.perf_counter() - start
  batch_read = {}
  for name, data in paths.items():
    if sources.is_source(data):
      indices = sampler.batch(0).indices
      start = time.perf_counter()
      for _ in range(5):
        data.gather(indices)
      batch_read[name] = (time.perf_counter() - start) / 5
  examples = args.rounds * args.steps * sampler.expected_batch_size
  out = {"records": len(files), "expected_batch": args.batch, "steps": args.steps,
         "rounds": args.rounds, "in_memory_load_seconds": load_seconds,
         "in_memory_bytes": int(sum(v.nbytes for v in whole.values())),
         "examples_per_sec_in_the_loop": {k: float(np.mean(v)) for k, v in loop_rates.items()},
         "examples_per_sec_with_setup": {k: examples / v for k, v in seconds.items()},
         "seconds_to_read_one_padded_batch": batch_read,
         "cpu_pressure": open("/proc/pressure/cpu").readline().strip()}
  print(json.dumps(out, indent=2))


if __name__ == "__main__":
  main()
