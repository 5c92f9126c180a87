"""One process of the two-process test (`test_multihost.py`): a tiny DP-SGD run on the engine.

  DPJAX_NUM_PROCESSES=2 DPJAX_PROCESS_ID=0 JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT \
      python tests/multihost_worker.py --workdir=DIR --out=FILE [--kill_at_step=N]

`run()` is also the one-process reference (the test calls it in its own process). The data and
initial parameters are public (fixed NumPy seed); the private randomness is a secret seed, so
that both runs draw the same batches and noise and can be compared to float tolerance.
"""

import argparse
import json
import os
import signal

import jax

from dpjax import parallel


def run(workdir: str, steps: int = 6, kill_at_step: int = 0) -> dict:
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from dpjax import clipping, engine, randomness, sampling, train  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  data = {"x": rng.normal(size=(64, 5)).astype(np.float32),
          "y": rng.normal(size=64).astype(np.float32)}
  params = {"w": jnp.zeros(5), "b": jnp.zeros(())}

  def loss_fn(p, ex):
    return (jnp.dot(p["w"], ex["x"]) + p["b"] - ex["y"]) ** 2

  def eval_fn(p):
    if jax.process_index() == 1:
      os.kill(os.getpid(), signal.SIGKILL)  # a host dies mid-run, after a checkpoint
    return {}

  sampler = sampling.BatchSampler(64, 16)
  dp = train.DPConfig(clipping.ClippingConfig(clip_norm=1.0), 1.0, sampler.expected_batch_size)
  loop = engine.LoopConfig(num_steps=steps, delta=1e-3, workdir=workdir, checkpoint_every=2,
                           log_every=1, eval_every=kill_at_step)
  result = engine.train(loss_fn, params, optax.sgd(0.1), data, sampler=sampler, dp=dp, loop=loop,
                        randomness=randomness.PrivateRandomness(secret_seed=987654321),
                        eval_fn=eval_fn if kill_at_step else None)
  return {"params": [np.asarray(a).tolist() for a in jax.tree.leaves(result.state.params)],
          "epsilon": result.epsilon(1e-3), "ledger_steps": result.ledger.steps,
          "process_count": jax.process_count(), "devices": jax.device_count()}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--steps", type=int, default=6)
  parser.add_argument("--kill_at_step", type=int, default=0)
  args = parser.parse_args()
  # As every study's main does: joins the run that DPJAX_NUM_PROCESSES, DPJAX_PROCESS_ID and
  # JAX_COORDINATOR_ADDRESS describe (the test sets them).
  parallel.initialize_distributed()
  with open(args.out, "w") as f:
    json.dump(run(args.workdir, args.steps, args.kill_at_step), f)


if __name__ == "__main__":
  main()
