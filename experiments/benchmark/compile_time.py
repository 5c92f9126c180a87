r"""Compile time of the microbatched DP step against the number of microbatches (compile only).

  python -m experiments.benchmark.compile_time --workload=resnet18 --microbatch_size=128 --chunks=2,32

For each number of chunks it builds the DP step (ghost by default) at logical batch
microbatch_size x chunks, and times tracing + lowering and XLA compilation (wall and this
process's CPU time, which other processes on the machine disturb less). The microbatches are a
`lax.scan` (`dpjax.clipping.clipped_grad_sum`) and the ghost plan is traced once, so the
compiled program is the same whatever the logical batch: its size is printed too. Nothing is run.
"""

from __future__ import annotations

import time

from absl import app
from absl import flags
import jax
import optax

from dpjax import clipping
from dpjax import train
from experiments.benchmark import benchmark



def measure(workload: str, microbatch_size: int, chunks: int, method: str,
            compile: bool = True) -> dict:  # pylint: disable=redefined-builtin
  batch_size = microbatch_size * chunks
  _, params, loss_fn, batch, mask = benchmark.make_workload(workload, batch_size, 0)
  config = train.DPConfig(clipping.ClippingConfig(clip_norm=1.0, method=method,
                                                  microbatch_size=microbatch_size),
                          1.1, float(batch_size))
  optimizer = optax.sgd(0.1)
  step = train.make_dp_step(loss_fn, optimizer, config)
  state = train.init_state(params, optimizer, jax.random.key(0))
  wall, cpu = time.perf_counter(), time.process_time()
  lowered = step.lower(state, batch, mask)
  lower_s, lower_cpu = time.perf_counter() - wall, time.process_time() - cpu
  wall, cpu = time.perf_counter(), time.process_time()
  if compile:
    lowered.compile()
  return {"logical_batch": batch_size, "chunks": chunks, "lower_s": lower_s,
          "lower_cpu_s": lower_cpu, "compile_s": time.perf_counter() - wall,
          "compile_cpu_s": time.process_time() - cpu, "hlo_chars": len(lowered.as_text()),
          "cpu_pressure": benchmark.cpu_pressure()}


def define_flags():
  """The command-line flags, defined only when run as a program: the benchmark tools share
  names (--workload, --workdir) and tests import several of them into one process."""
  flags.DEFINE_string("workload", "resnet18", "linear, cnn, resnet18 or vgg16.")
  flags.DEFINE_integer("microbatch_size", 128, "Examples per microbatch.")
  flags.DEFINE_list("chunks", ["2", "32"], "Numbers of microbatches (logical batch = size x chunks).")
  flags.DEFINE_string("method", "ghost", "vmap, ghost or auto.")


def main(argv):
  del argv
  f = flags.FLAGS
  print("| logical batch | microbatches | trace+lower s | compile s (CPU s) | HLO chars | pressure |")
  print("|---|---|---|---|---|---|")
  for chunks in map(int, f.chunks):
    r = measure(f.workload, f.microbatch_size, chunks, f.method)
    print(f"| {r['logical_batch']} | {chunks} | {r['lower_s']:.1f} | {r['compile_s']:.1f} "
          f"({r['compile_cpu_s']:.1f}) | {r['hlo_chars']} | {r['cpu_pressure']} |", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
