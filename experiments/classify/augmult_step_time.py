"""The step-time cost of augmentation multiplicity K: the jitted DP-SGD step of the transfer
recipe (expected batch 256, vmap clipping, momentum) on 28x28x1 images, for each K, measured in
one process with the K values interleaved (so that a shared machine's load falls on all of them
alike). Reports the median seconds per step and the ratio to K=0.

  nice -n 10 python -m experiments.classify.augmult_step_time --augmults=0,1,2,4 --repeats=3
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app
from absl import flags

from dpjax import augment
from dpjax import clipping
from dpjax import train
from dpjax.models import registry
from experiments.classify import classifier

_AUGMULTS = flags.DEFINE_list("augmults", ["0", "1", "2", "4"], "multiplicities K")
_MODEL = flags.DEFINE_string("model", "cnn", "registry model")
_BATCH = flags.DEFINE_integer("batch", 256, "padded batch")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed steps per K per round")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "interleaved rounds")


def main(argv):
  del argv
  model = registry.build_model(_MODEL.value, 2)
  params = registry.init_params(model, jax.random.PRNGKey(0), (28, 28, 1))
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.random((_BATCH.value, 28, 28, 1), np.float32)),
           "label": jnp.asarray(rng.integers(0, 2, _BATCH.value).astype(np.int32))}
  mask = jnp.ones(_BATCH.value, bool)
  optimizer = optax.sgd(2.5, momentum=0.9)
  dp = train.DPConfig(clipping.ClippingConfig(0.1, method="vmap"), 1.16, _BATCH.value)
  loss = classifier.example_loss(model)
  steps, states = {}, {}
  for k in map(int, _AUGMULTS.value):
    augmult = augment.Multiplicity(k, augment.ImageAugmentation(crop_pad=4)) if k else None
    steps[k] = train.make_dp_step(loss, optimizer, dp, augmult=augmult)
    start = time.perf_counter()
    states[k], _ = steps[k](train.init_state(jax.tree.map(jnp.copy, params), optimizer,
                                             jnp.asarray([1, 2], jnp.uint32)), batch, mask)
    jax.block_until_ready(states[k].params)
    print(f"K={k}: compile + first step {time.perf_counter() - start:.1f} s", flush=True)
  times = {k: [] for k in steps}
  for _ in range(_ROUNDS.value):
    for k in steps:
      for _ in range(_REPEATS.value):
        start = time.perf_counter()
        states[k], _ = steps[k](states[k], batch, mask)
        jax.block_until_ready(states[k].params)
        times[k].append(time.perf_counter() - start)
  base = np.median(times[min(times)])
  print("| K | median s/step | ratio to K=%d | steps timed |" % min(times))
  print("|---|---|---|---|")
  for k, t in times.items():
    print(f"| {k} | {np.median(t):.3f} | {np.median(t) / base:.2f} | {len(t)} |")


if __name__ == "__main__":
  app.run(main)
