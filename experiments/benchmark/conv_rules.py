"""The whole non-private step under variants of conv.py's CPU rule, interleaved in one process.

Per-layer timings (conv_layers.py) time each product alone; inside the whole jitted step a form
that is faster alone can be slower (session 5). This probe swaps `conv.cpu_lowering` at trace
time and times ResNet-18 (batch 32) and VGG-16 (batch 16) steps, one device:

  python -m experiments.benchmark.conv_rules
"""
import time
import jax, jax.numpy as jnp, numpy as np, optax
from dpjax import train
from dpjax.models import conv, registry
from experiments.benchmark import benchmark

orig = conv.cpu_lowering
def only_input(spatial, out_spatial, in_channels):
  if int(np.prod(out_spatial)) >= 1024 and in_channels <= 4:
    return conv.Lowering(conv.NATIVE, conv.NATIVE, conv.PATCHES)
  return conv.Lowering()
def only_small(spatial, out_spatial, in_channels):
  largest = max(spatial)
  if largest <= 2:
    return conv.Lowering(conv.PATCHES, conv.PATCHES, conv.PATCHES)
  if largest <= 4 and in_channels >= 256:
    return conv.Lowering(conv.PATCHES, conv.PATCHES, conv.NATIVE)
  return conv.Lowering()
def only_2x2(spatial, out_spatial, in_channels):
  if max(spatial) <= 2:
    return conv.Lowering(conv.PATCHES, conv.PATCHES, conv.PATCHES)
  return conv.Lowering()
RULES = {"native": None, "auto": orig, "only_input": only_input, "only_small": only_small, "only_2x2": only_2x2}

def main(workload, batch_size, steps, rounds, names):
  optimizer = optax.sgd(0.1)
  _, params, _, batch, mask = benchmark.make_workload(workload, batch_size, 0)
  variants = {}
  for name in names:
    rule = RULES[name]
    conv.cpu_lowering = rule or orig
    model = registry.build_model(workload, 10, conv_lowering="native" if rule is None else "auto")
    def loss_fn(p, example, model=model):
      logits = model.apply(p, example["x"][None])[0]
      return optax.softmax_cross_entropy_with_integer_labels(logits, example["y"])
    step = train.make_nonprivate_step(loss_fn, optimizer)
    state = train.init_state(jax.tree.map(jnp.copy, params), optimizer, jax.random.key(0))
    compiled = step.lower(state, batch, mask).compile()
    state, _ = compiled(state, batch, mask); jax.block_until_ready(state)
    variants[name] = [compiled, state, []]
  conv.cpu_lowering = orig
  for _ in range(rounds):
    for v in variants.values():
      for _ in range(steps):
        t = time.perf_counter(); v[1], m = v[0](v[1], batch, mask); jax.block_until_ready((v[1], m))
        v[2].append(time.perf_counter() - t)
  base = np.median(variants["native"][2])
  for name, v in variants.items():
    print(f"{workload} b{batch_size} {name:12s} median {1e3*np.median(v[2]):8.1f} ms  min {1e3*np.min(v[2]):8.1f}  /native {np.median(v[2])/base:.2f}", flush=True)

if __name__ == "__main__":
  # "only_small" is the withdrawn rule of the 4x4 / >= 256-channel clause (plus 2x2).
  print(open("/proc/pressure/cpu").readline().strip())
  main("resnet18", 32, 3, 4, ["native", "auto", "only_input", "only_small"])
  main("vgg16", 16, 3, 4, ["native", "auto", "only_2x2", "only_input"])
  print(open("/proc/pressure/cpu").readline().strip())
