"""Perturbations that try to move an attribution map's top-k: random and PGD (l2 ball).

The PGD attack (in the spirit of Ghorbani et al. 2019) minimises the share of the saliency mass
that stays on the original top-k pixels. A ReLU network's input gradient is piecewise constant
in the input, so its own gradient is zero almost everywhere and PGD would not move; while the
attack is traced, `flax.linen.relu` is replaced by softplus(beta x) / beta (the usual surrogate),
which needs no edit of the models. The attack is then judged with the true (ReLU) maps.
With `sigma > 0` the loss is averaged over noisy copies (expectation over transformation), the
matching attack on SmoothGrad and on the smoothed top-k map.
"""

from __future__ import annotations

import contextlib
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

PyTree = object


@contextlib.contextmanager
def softplus_relu(beta: float):
  """Within the block, models that call `nn.relu` use softplus(beta x) / beta (tracing only)."""
  original = nn.relu
  nn.relu = lambda x: jax.nn.softplus(beta * x) / beta
  try:
    yield
  finally:
    nn.relu = original


def random_perturbation(key: jax.Array, shape, radius: float) -> jnp.ndarray:
  """Uniform direction, l2 norm exactly `radius`."""
  direction = jax.random.normal(key, shape)
  return radius * direction / jnp.linalg.norm(direction)


def _project(delta: jnp.ndarray, radius: float) -> jnp.ndarray:
  norm = jnp.linalg.norm(delta)
  return delta * jnp.minimum(1.0, radius / jnp.maximum(norm, 1e-12))


def make_topk_attack(model: nn.Module, *, radius: float, k: int, steps: int = 20,
                     beta: float = 10.0, sigma: float = 0.0, eot_samples: int = 1):
  """`attack(params, image (H,W,C), class_index, key) -> perturbed image` with ||delta|| <= radius.

  Top-k of the clean map and the loss use the saliency |d y_c / d x| summed over channels.
  """
  if not radius > 0:
    raise ValueError(f"attack radius must be > 0, got {radius}")

  def saliency(params, images, class_index):
    def score(x):
      return model.apply({"params": params}, x)[:, class_index].sum()
    return jnp.abs(jax.grad(score)(images)).sum(-1).reshape(images.shape[0], -1)

  @jax.jit
  def attack(params, image, class_index, key):
    clean = saliency(params, image[None], class_index)[0]
    _, top = jax.lax.top_k(clean, k)
    in_topk = jnp.zeros_like(clean).at[top].set(1.0)
    init_key, noise_key = jax.random.split(key)

    def loss(delta, step):
      noise = sigma * jax.random.normal(jax.random.fold_in(noise_key, step),
                                        (eot_samples,) + image.shape)
      maps = saliency(params, image[None] + delta + noise, class_index)
      return jnp.mean((maps * in_topk).sum(-1) / (maps.sum(-1) + 1e-12))

    def step_fn(delta, step):
      grad = jax.grad(loss)(delta, step)
      delta = delta - (2.5 * radius / steps) * grad / jnp.maximum(jnp.linalg.norm(grad), 1e-12)
      return _project(delta, radius), None

    start = random_perturbation(init_key, image.shape, 0.5 * radius)
    delta, _ = jax.lax.scan(step_fn, start, jnp.arange(steps))
    return image + delta

  @functools.wraps(attack)
  def run(params, image, class_index, key):
    with softplus_relu(beta):
      return attack(params, jnp.asarray(image, jnp.float32), class_index, key)

  return run
