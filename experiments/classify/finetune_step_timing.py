"""DP fine-tuning step of the pretrained ResNet-18 (frozen BatchNorm): vmap against ghost
clipping, in one process (issue 16a). Times the jitted clipped gradient sum only, and checks
that both give the same sum.

  python -m experiments.classify.finetune_step_timing --pretrained=runs/16a/resnet18_random.npz \
      --batch=16 --side=64
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from dpjax import clipping
from dpjax.models import registry


def _loss(model):
  def loss_fn(params, example):
    logits = model.apply(params, example["x"][None])[0]
    return optax.softmax_cross_entropy_with_integer_labels(logits, example["y"])
  return loss_fn


def time_methods(pretrained: str, batch: int, side: int, repeats: int = 3) -> dict:
  model = registry.build_model("resnet18_finetune", 2)
  shapes = registry.param_shapes(model, (side, side, 3))
  like = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  params = {"params": registry.load_params(pretrained, like, keep_from_like=("head",))}
  rng = np.random.default_rng(0)
  data = {"x": jnp.asarray(rng.normal(size=(batch, side, side, 3)), jnp.float32),
          "y": jnp.asarray(rng.integers(0, 2, batch))}
  mask = jnp.ones(batch, bool)
  out, sums = {}, {}
  for method in ("vmap", "ghost"):
    config = clipping.ClippingConfig(clip_norm=0.1, method=method)
    step = jax.jit(lambda p, b, m, c=config: clipping.clipped_grad_sum(_loss(model), p, b, m, c))
    start = time.perf_counter()
    sums[method] = jax.block_until_ready(step(params, data, mask))[0]
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(step(params, data, mask))
      times.append(time.perf_counter() - start)
    out[method] = {"compile_and_first_s": first, "step_median_s": float(np.median(times))}
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=2e-4, atol=1e-5),
               sums["vmap"], sums["ghost"])
  return out


def main(_):
  values = flags.FLAGS
  result = time_methods(values.pretrained, values.batch, values.side)
  for method, row in result.items():
    print(f"{method}: compile + first step {row['compile_and_first_s']:.1f} s, step median "
          f"{row['step_median_s']:.2f} s")
  print(f"ghost / vmap step time: {result['ghost']['step_median_s'] / result['vmap']['step_median_s']:.2f} "
        "(clipped sums equal to rtol 2e-4)")


if __name__ == "__main__":
  flags.DEFINE_string("pretrained", None, "converted ResNet-18 .npz (torchvision_import)")
  flags.DEFINE_integer("batch", 16, "examples per step")
  flags.DEFINE_integer("side", 64, "image side")
  flags.mark_flag_as_required("pretrained")
  app.run(main)
