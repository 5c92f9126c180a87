r"""What a second device buys each step: wall time and cores used, one device count per process.

  python -m experiments.benchmark.device_scaling --workload=resnet18 --batch_size=32 --devices=1
  python -m experiments.benchmark.device_scaling --workload=resnet18 --batch_size=32 --devices=2

`--devices` splits the host CPU into that many XLA devices (`dpjax.devices`, before JAX starts)
and, above one, shards the batch over them (`dpjax.parallel`). Variants, timed in interleaved
rounds: the non-private step, the DP step (`--method`), and the DP step without noise. For each:
median and minimum wall ms per step and the cores it kept busy (this process's CPU time over
wall time): a step already using every core on one device cannot gain from a second one.
"""

from __future__ import annotations

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import optax

from dpjax import clipping
from dpjax import devices
from dpjax import parallel
from dpjax import randomness
from dpjax import train
from experiments.benchmark import benchmark
from experiments.benchmark import overhead


def build(workload: str, batch_size: int, method: str) -> dict:
  """{name: (compiled step, [state, batch, mask], True)} on every local device, in the form
  `overhead.measure` times."""
  _, params, loss_fn, batch, mask = benchmark.make_workload(workload, batch_size, 0)
  mesh = parallel.data_mesh(jax.local_devices()) if jax.local_device_count() > 1 else None
  if mesh is not None:
    batch, mask = parallel.shard_batch(batch, mask, mesh)
  optimizer = optax.sgd(0.1)
  clip = clipping.ClippingConfig(clip_norm=1.0, method=method)
  steps = {
      "nonprivate": train.make_nonprivate_step(loss_fn, optimizer, mesh),
      "dp": train.make_dp_step(loss_fn, optimizer, train.DPConfig(clip, 1.1, float(batch_size)),
                               mesh),
      "dp_no_noise": train.make_dp_step(loss_fn, optimizer,
                                        train.DPConfig(clip, 0.0, float(batch_size)), mesh),
  }
  out = {}
  for name, step in steps.items():
    state = train.init_state(jax.tree.map(jnp.copy, params), optimizer,
                             randomness.SECURE.key("benchmark", "device_scaling"))
    if mesh is not None:
      state = parallel.replicate(state, mesh)
    out[name] = (step.lower(state, batch, mask).compile(), [state, batch, mask], True)
  return out


def format_table(results: dict, device_count: int) -> str:
  lines = ["| devices | variant | median ms | min ms | cores busy | / non-private |",
           "|---|---|---|---|---|---|"]
  for name, r in results.items():
    lines.append(f"| {device_count} | {name} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | "
                 f"{r['cores']:.2f} | {r['over_nonprivate']:.2f} |")
  return "\n".join(lines)


def define_flags():
  flags.DEFINE_string("workload", "resnet18", "linear, cnn, resnet18 or vgg16.")
  flags.DEFINE_integer("batch_size", 32, "Examples per step (all devices together).")
  flags.DEFINE_integer("devices", 1, "XLA CPU devices to split the host into.")
  flags.DEFINE_string("method", "ghost", "vmap, ghost or auto.")
  flags.DEFINE_integer("rounds", 3, "Interleaved rounds.")
  flags.DEFINE_integer("calls", 2, "Timed steps per variant and round.")


def main(argv):
  del argv
  f = flags.FLAGS
  count = devices.use_cpu_devices(f.devices)  # before any JAX computation
  before = benchmark.cpu_pressure()
  results = overhead.measure(build(f.workload, f.batch_size, f.method), f.rounds, f.calls)
  print(f"workload={f.workload} batch={f.batch_size} method={f.method} devices={count}")
  print(f"cpu pressure before: {before}")
  print(format_table(results, count))
  print(f"cpu pressure after: {benchmark.cpu_pressure()}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
