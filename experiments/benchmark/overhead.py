r"""Where the DP step's own overhead goes: the step taken apart, timed interleaved in one process.

  python -m experiments.benchmark.overhead --workload=linear --batch_size=256 --rounds=40

Variants, each one jitted program on one device, timed in interleaved rounds (median and
minimum ms per call; ratios to the non-private step):
  nonprivate        the non-private step (gradient of the masked mean loss, SGD)
  dp                the DP step (clipped sum, noise, SGD, clip metrics) with `--method`
  dp_no_noise       the same with noise_multiplier = 0: the noise's share
  dp_no_metrics     the same without the clip metrics as outputs: the metrics' share
  dp_bare           neither noise nor metrics: clipping's own cost
  clipped_sum       `clipping.clipped_grad_sum` alone
  noise             `noise.tree_noise` alone (the float32 normals of the step's secret key)
and the number of fusions in each optimised HLO (XLA CPU runs each as one kernel, a fixed cost
per kernel). A measurement tool: the variants with parts left out are not private steps.
"""

from __future__ import annotations

import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax import clipping
from dpjax import noise
from dpjax import randomness
from dpjax import train
from experiments.benchmark import benchmark


def _step_without_metrics(loss_fn, optimizer, config: train.DPConfig):
  def step(state, batch, mask):
    grad, _ = train.dp_gradient(loss_fn, state.params, batch, mask, train.step_key(state), config)
    return train.apply_gradient(optimizer, state, grad), {}
  return jax.jit(step, donate_argnames="state")


def _fresh_key():
  # Each state is donated to its step: every variant needs its own copy of the key.
  return randomness.SECURE.key("benchmark", "overhead")


def build(workload: str, batch_size: int, method: str = "ghost", clip_norm: float = 1.0,
          noise_multiplier: float = 1.1) -> dict:
  """{name: (compiled, args, is_step)} for every variant, compiled for the workload's batch."""
  _, params, loss_fn, batch, mask = benchmark.make_workload(workload, batch_size, 0)
  optimizer = optax.sgd(0.1)
  clip = clipping.ClippingConfig(clip_norm=clip_norm, method=method)
  dp = lambda nm: train.DPConfig(clip, nm, float(batch_size))
  steps = {
      "nonprivate": train.make_nonprivate_step(loss_fn, optimizer),
      "dp": train.make_dp_step(loss_fn, optimizer, dp(noise_multiplier)),
      "dp_no_noise": train.make_dp_step(loss_fn, optimizer, dp(0.0)),
      "dp_no_metrics": _step_without_metrics(loss_fn, optimizer, dp(noise_multiplier)),
      "dp_bare": _step_without_metrics(loss_fn, optimizer, dp(0.0)),
  }
  out = {}
  for name, step in steps.items():
    state = train.init_state(jax.tree.map(jnp.copy, params), optimizer, _fresh_key())
    out[name] = (step.lower(state, batch, mask).compile(), [state, batch, mask], True)
  clipped_sum = jax.jit(lambda p, b, m: clipping.clipped_grad_sum(loss_fn, p, b, m, clip))
  out["clipped_sum"] = (clipped_sum.lower(params, batch, mask).compile(),
                        [params, batch, mask], False)
  draw = jax.jit(lambda key: noise.tree_noise(key, params, noise.mechanism_for_norm(clip.norm)))
  key = _fresh_key()
  out["noise"] = (draw.lower(key).compile(), [key], False)
  return out


def measure(variants: dict, rounds: int, calls: int) -> dict:
  """{name: {median_ms, min_ms, cores, over_nonprivate, fusions}}, rounds interleaved; cores is
  the process CPU time over the wall time of the variant's calls (how many cores it kept busy)."""
  times = {name: [] for name in variants}
  cpu = {name: 0.0 for name in variants}
  for _ in range(rounds):
    for name, (compiled, args, is_step) in variants.items():
      for _ in range(calls):
        start, start_cpu = time.perf_counter(), time.process_time()
        if is_step:
          args[0], metrics = compiled(*args)
          jax.block_until_ready((args[0], metrics))
        else:
          jax.block_until_ready(compiled(*args))
        times[name].append(time.perf_counter() - start)
        cpu[name] += time.process_time() - start_cpu
  base = float(np.median(times["nonprivate"]))
  return {name: {"median_ms": 1e3 * float(np.median(t)), "min_ms": 1e3 * float(np.min(t)),
                 "cores": cpu[name] / sum(t), "over_nonprivate": float(np.median(t)) / base,
                 "fusions": variants[name][0].as_text().count(" fusion(")}
          for name, t in times.items()}


def format_table(results: dict) -> str:
  lines = ["| variant | median ms | min ms | / non-private | fusions |", "|---|---|---|---|---|"]
  for name, r in results.items():
    lines.append(f"| {name} | {r['median_ms']:.3f} | {r['min_ms']:.3f} | "
                 f"{r['over_nonprivate']:.2f} | {r['fusions']} |")
  return "\n".join(lines)


def define_flags():
  """Flags only when run as a program (tests import several benchmark tools into one process)."""
  flags.DEFINE_string("workload", "linear", "linear, cnn, resnet18 or vgg16.")
  flags.DEFINE_integer("batch_size", 256, "Examples per step.")
  flags.DEFINE_string("method", "ghost", "vmap, ghost or auto.")
  flags.DEFINE_integer("rounds", 40, "Interleaved rounds.")
  flags.DEFINE_integer("calls", 20, "Timed calls per variant and round.")


def main(argv):
  del argv
  f = flags.FLAGS
  before = benchmark.cpu_pressure()
  results = measure(build(f.workload, f.batch_size, f.method), f.rounds, f.calls)
  print(f"workload={f.workload} batch={f.batch_size} method={f.method} "
        f"backend={jax.default_backend()}")
  print(f"cpu pressure before: {before}")
  print(format_table(results))
  print(f"cpu pressure after: {benchmark.cpu_pressure()}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
