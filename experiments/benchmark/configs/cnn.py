"""CIFAR CNN (four 3x3 convs, 32x32x3 inputs), batch 64, the host CPU split into two XLA devices
with the batch sharded over them. experiments/benchmark/README.md, second row.

  python -m experiments.benchmark --config=experiments/benchmark/configs/cnn.py --workdir=runs/bench_cnn

Runs JAX non-DP, DP vmap and DP ghost, then PyTorch non-DP and Opacus hooks/ew/ghost, 2
interleaved rounds of 20 steps. The argument takes comma-separated tokens
(`benchmark.ARG_TOKENS`): `cnn.py:ghost` (only the DP ghost step), `cnn.py:one_device,jax`
(JAX's default single device, no Opacus), `cnn.py:quick` (2 steps, 1 round).
"""

from experiments.benchmark import benchmark


def base(arg: str | None, batch_size: int, steps: int, workload: str = "cnn",
         one_device: bool = False):
  """The CNN row's settings at a batch size, 2 rounds against Opacus on two XLA devices; the
  other rows' files change the workload (and linear.py keeps JAX's default single device)."""
  config = benchmark.default_config()
  config.workload = workload
  config.batch_size = batch_size
  config.steps = steps
  config.rounds = 2
  config.compare = "all"  # Opacus and jax_privacy
  if not one_device:
    config.cpu_devices = "2"
    config.data_parallel = True
  return benchmark.apply_arg(config, arg)


def get_config(arg: str | None = None):
  return base(arg, batch_size=64, steps=20)
