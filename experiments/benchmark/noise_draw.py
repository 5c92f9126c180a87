r"""The DP step's noise draw alone: dpjax's unrolled threefry against `jax.random`, per size.

  python -m experiments.benchmark.noise_draw --sizes=2000,15000000 --calls=200

For each size, jitted and timed in interleaved rounds (median and minimum ms per call):
  jax_random   `jax.random.normal(key, (size,))`: JAX's threefry (a rolled loop on CPU) and
               inverse CDF
  dpjax        `dpjax.noise.tree_noise` of a one-leaf tree: the same threefry unrolled
               (`dpjax.threefry`), inverse CDF
The sizes of the benchmark rows: linear 2,000, the CIFAR CNN ~0.55M, ResNet-18 ~11M, VGG-16 ~15M.
"""

from __future__ import annotations

import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from dpjax import noise
from experiments.benchmark import benchmark


def build(size: int) -> dict:
  """{name: compiled function of the key} for one size."""
  key = jnp.asarray([7, 11], jnp.uint32)
  leaf = jax.ShapeDtypeStruct((size,), jnp.float32)
  draws = {
      "jax_random": lambda k: jax.random.normal(k, (size,), jnp.float32),
      "dpjax": lambda k: noise.tree_noise(k, leaf, "gaussian"),
  }
  return {name: jax.jit(draw).lower(key).compile() for name, draw in draws.items()}, key


def measure(size: int, rounds: int, calls: int) -> dict:
  """{name: {median_ms, min_ms}} for one size, rounds interleaved."""
  compiled, key = build(size)
  times = {name: [] for name in compiled}
  for _ in range(rounds):
    for name, fn in compiled.items():
      for _ in range(calls):
        start = time.perf_counter()
        jax.block_until_ready(fn(key))
        times[name].append(time.perf_counter() - start)
  return {name: {"median_ms": 1e3 * float(np.median(t)), "min_ms": 1e3 * float(np.min(t))}
          for name, t in times.items()}


def define_flags():
  flags.DEFINE_list("sizes", ["2000", "15000000"], "Numbers of float32 normals per draw.")
  flags.DEFINE_integer("rounds", 5, "Interleaved rounds.")
  flags.DEFINE_integer("calls", 20, "Timed calls per variant and round.")


def main(argv):
  del argv
  f = flags.FLAGS
  print(f"backend={jax.default_backend()} cpu pressure before: {benchmark.cpu_pressure()}")
  print("| normals | jax.random median / min ms | dpjax median / min ms | dpjax / jax.random |")
  print("|---|---|---|---|")
  for size in map(int, f.sizes):
    r = measure(size, f.rounds, f.calls)
    a, b = r["jax_random"], r["dpjax"]
    print(f"| {size} | {a['median_ms']:.3f} / {a['min_ms']:.3f} | {b['median_ms']:.3f} / "
          f"{b['min_ms']:.3f} | {b['median_ms'] / a['median_ms']:.2f} |")
  print(f"cpu pressure after: {benchmark.cpu_pressure()}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
