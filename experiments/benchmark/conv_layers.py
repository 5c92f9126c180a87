r"""Per-layer timing of the conv lowering (dpjax.models.conv), and the non-private step vs PyTorch.

  python -m experiments.benchmark.conv_layers --workload=resnet18 --batch_size=32 --workdir=runs/conv_resnet18

For every distinct conv layer of the workload (input shape, kernel, stride, channels) it times,
at the workload's batch size, each product of the convolution (forward, input gradient, weight
gradient) in XLA's native form and as the patch-matrix product, reports which form
`lowering="auto"` picks on this backend and the time of the pick against native. Then the
whole non-private step (jitted, SGD) with every conv native and with `auto`, interleaved, and
PyTorch's non-private step on the same batch when torch is installed. Minimum of `repeats`
runs per timing (noise from other processes only adds time); the CPU pressure is recorded.
Writes `conv_layers.json` and `conv_layers.md` to the workdir.
"""

from __future__ import annotations

import json
import os
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax import train
from dpjax.models import conv as conv_lib
from dpjax.models import registry
from experiments.benchmark import benchmark
from experiments.benchmark import opacus_compare
from experiments.common import outputs


def conv_layers(workload: str, batch_size: int) -> list[dict]:
  """The distinct conv layers of a workload: input shape (with the batch), kernel, strides, pads."""
  model = registry.build_model(workload, 10, conv_lowering="native")
  x = jnp.zeros((batch_size,) + benchmark.input_shape(workload), jnp.float32)
  found: dict = {}

  def record(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == "__call__" and isinstance(module, nn.Conv):
      spec = conv_spec(module, args[0].shape)
      found.setdefault(spec["key"], {**spec, "count": 0})["count"] += 1
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(model.init, jax.random.key(0), x)
  return list(found.values())


def conv_spec(module: nn.Conv, shape) -> dict:
  kernel = tuple(module.kernel_size)
  strides = conv_lib._tuple(module.strides, len(kernel))  # pylint: disable=protected-access
  padding = module.padding
  pads = (jax.lax.padtype_to_pads(shape[1:-1], kernel, strides, padding)
          if isinstance(padding, str) else padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  out = [(s + lo + hi - k) // st + 1 for s, (lo, hi), k, st in zip(shape[1:-1], pads, kernel, strides)]
  key = (tuple(shape), kernel, strides, pads, module.features)
  return {"key": key, "shape": tuple(shape), "kernel": kernel, "strides": strides, "pads": pads,
          "features": module.features, "out_spatial": tuple(out)}


def _min_ms(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * min(times)


def time_layer(spec: dict, repeats: int) -> dict:
  """ms of each product in each form, the auto pick, and the pick / native ratio."""
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], spec["shape"], jnp.float32)
  kernel = 0.1 * jax.random.normal(keys[1], spec["kernel"] + (spec["shape"][-1], spec["features"]))
  strides, pads = spec["strides"], spec["pads"]
  out = {}
  for form in (conv_lib.NATIVE, conv_lib.PATCHES):
    lowering = conv_lib.Lowering(form, form, form)
    f = lambda x, k, lowering=lowering: conv_lib.conv(x, k, strides, pads, lowering)
    g = jax.random.normal(keys[2], jax.eval_shape(f, x, kernel).shape)
    out[form] = {
        "forward": _min_ms(jax.jit(f), x, kernel, repeats=repeats),
        "input_grad": _min_ms(jax.jit(lambda x, k, g: jax.vjp(lambda x: f(x, k), x)[1](g)[0]),
                              x, kernel, g, repeats=repeats),
        "weight_grad": _min_ms(jax.jit(lambda x, k, g: jax.vjp(lambda k: f(x, k), k)[1](g)[0]),
                               x, kernel, g, repeats=repeats),
    }
  pick = conv_lib.choose_lowering("auto", jax.default_backend(), spec["shape"][1:-1],
                                  spec["out_spatial"], spec["shape"][-1])
  parts = ("forward", "input_grad", "weight_grad")
  picked = {part: getattr(pick, part) for part in parts}
  native_total = sum(out["native"][p] for p in parts)
  picked_total = sum(out[picked[p]][p] for p in parts)
  best_total = sum(min(out["native"][p], out["patches"][p]) for p in parts)
  return {"ms": out, "auto": picked, "native_total_ms": native_total,
          "auto_total_ms": picked_total, "best_total_ms": best_total,
          "auto_over_native": picked_total / native_total}


def time_steps(workload: str, batch_size: int, steps: int, rounds: int) -> dict:
  """The non-private step with every conv native and with `auto`, interleaved (median ms)."""
  optimizer = optax.sgd(0.1)
  _, params, _, batch, mask = benchmark.make_workload(workload, batch_size, 0)
  variants = {}
  for lowering in ("native", "auto"):
    model = registry.build_model(workload, 10, conv_lowering=lowering)
    def loss_fn(p, example, model=model):
      logits = model.apply(p, example["x"][None])[0]
      return optax.softmax_cross_entropy_with_integer_labels(logits, example["y"])
    step = train.make_nonprivate_step(loss_fn, optimizer)
    state = train.init_state(jax.tree.map(jnp.copy, params), optimizer, jax.random.key(0))
    start = time.perf_counter()
    compiled = step.lower(state, batch, mask).compile()
    compile_s = time.perf_counter() - start
    state, _ = compiled(state, batch, mask)
    jax.block_until_ready(state)
    variants[lowering] = {"compiled": compiled, "state": state, "times": [],
                          "compile_s": compile_s}
  for _ in range(rounds):
    for v in variants.values():
      for _ in range(steps):
        start = time.perf_counter()
        v["state"], metrics = v["compiled"](v["state"], batch, mask)
        jax.block_until_ready((v["state"], metrics))
        v["times"].append(time.perf_counter() - start)
  result = {name: {"median_ms": 1e3 * float(np.median(v["times"])),
                   "min_ms": 1e3 * float(np.min(v["times"])), "compile_s": v["compile_s"]}
            for name, v in variants.items()}
  try:
    opacus_compare.check_installed()
    torch = opacus_compare.run(workload, np.asarray(batch["x"]), np.asarray(batch["y"]),
                               steps=steps, warmup=1, rounds=rounds, clip_norm=1.0,
                               noise_multiplier=1.0, learning_rate=0.1, modes=(), seed=0)
    result["torch"] = torch["results"]["nonprivate"]
  except ImportError as error:
    result["torch_error"] = str(error)
  return result


def format_markdown(result: dict) -> str:
  lines = [f"workload={result['workload']} batch={result['batch_size']} "
           f"backend={result['backend']}; cpu pressure before: {result['cpu_pressure_before']}",
           "", "| layer (N,H,W,C -> features, kernel, stride) | x | forward native / patches | "
           "input grad native / patches | weight grad native / patches | auto picks (f/i/w) | "
           "auto / native |", "|---|---|---|---|---|---|---|"]
  for layer in result["layers"]:
    ms = layer["ms"]
    cell = lambda part: f"{ms['native'][part]:.2f} / {ms['patches'][part]:.2f}"
    picks = "/".join(layer["auto"][p][0] for p in ("forward", "input_grad", "weight_grad"))
    lines.append(f"| {layer['shape']} -> {layer['features']}, {layer['kernel']}, "
                 f"{layer['strides']} | {layer['count']} | {cell('forward')} | "
                 f"{cell('input_grad')} | {cell('weight_grad')} | {picks} | "
                 f"{layer['auto_over_native']:.2f} |")
  steps = result["steps"]
  lines += ["", "| non-private step | median ms | min ms | compile s |", "|---|---|---|---|"]
  for name in ("native", "auto", "torch"):
    if name in steps:
      r = steps[name]
      lines.append(f"| {'PyTorch' if name == 'torch' else 'JAX convs ' + name} | "
                   f"{r['median_ms']:.1f} | {r['min_ms']:.1f} | {r.get('compile_s', float('nan')):.1f} |")
  if "torch" in steps:
    lines.append(f"\nJAX auto / PyTorch: {steps['auto']['median_ms'] / steps['torch']['median_ms']:.2f}; "
                 f"JAX native / PyTorch: {steps['native']['median_ms'] / steps['torch']['median_ms']:.2f}")
  lines.append(f"cpu pressure after: {result['cpu_pressure_after']}")
  return "\n".join(lines)


def run(workload: str, batch_size: int, repeats: int = 5, steps: int = 5, rounds: int = 2) -> dict:
  if workload not in ("cnn", "resnet18", "vgg16"):
    raise ValueError(f"--workload={workload!r}: expected a conv workload (cnn, resnet18, vgg16).")
  result = {"workload": workload, "batch_size": batch_size, "backend": jax.default_backend(),
            "cpu_pressure_before": benchmark.cpu_pressure()}
  layers = conv_layers(workload, batch_size)
  result["layers"] = [{**{k: v for k, v in spec.items() if k != "key"},
                       **time_layer(spec, repeats)} for spec in layers]
  result["steps"] = time_steps(workload, batch_size, steps, rounds)
  result["cpu_pressure_after"] = benchmark.cpu_pressure()
  return result


def define_flags():
  """The command-line flags, defined only when run as a program: the benchmark tools share
  names (--workload, --workdir) and tests import several of them into one process."""
  flags.DEFINE_string("workload", "resnet18", "cnn, resnet18 or vgg16.")
  flags.DEFINE_integer("batch_size", 32, "Examples per step.")
  flags.DEFINE_integer("repeats", 5, "Timed runs per product and form (the minimum is kept).")
  flags.DEFINE_integer("steps", 5, "Timed steps per round of the whole-step comparison.")
  flags.DEFINE_string("workdir", None, "Where conv_layers.{json,md} go (optional).")


def main(argv):
  del argv
  f = flags.FLAGS
  result = run(f.workload, f.batch_size, f.repeats, f.steps)
  text = format_markdown(result)
  if f.workdir:
    outputs.write_json(os.path.join(f.workdir, "conv_layers.json"), result)
    outputs.atomic_write_text(os.path.join(f.workdir, "conv_layers.md"), text + "\n")
  print(text)


if __name__ == "__main__":
  define_flags()
  app.run(main)
