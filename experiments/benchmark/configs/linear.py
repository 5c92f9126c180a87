"""Linear regression, P = 2000 parameters, batch 256, on one device (its step is ~0.2 ms; two
devices only add a cross-device reduction). experiments/benchmark/README.md, first row.

  python -m experiments.benchmark --config=experiments/benchmark/configs/linear.py --workdir=runs/bench_linear

Runs JAX non-DP, DP vmap and DP ghost, then PyTorch non-DP and Opacus hooks/ew/ghost, 2
interleaved rounds of 20 steps. The argument takes comma-separated tokens
(`benchmark.ARG_TOKENS`), e.g. `linear.py:ghost,jax` (only the DP ghost step, no Opacus) or
`linear.py:quick` (2 steps, 1 round: a smoke run).
"""

from experiments.benchmark.configs import cnn


def get_config(arg: str | None = None):
  return cnn.base(arg, batch_size=256, steps=20, workload="linear", one_device=True)
