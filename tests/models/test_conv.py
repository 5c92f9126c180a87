"""dpjax.models.conv.Conv equals nn.Conv: parameters, outputs, gradients, ghost clipping."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import clipping
from dpjax.models import conv

# (input shape, Conv settings): stride 1 and 2, SAME, VALID and explicit padding, 1x1, no bias,
# a 2x2 map, two batch axes.
CASES = [
    ((2, 6, 6, 3), dict(features=4, kernel_size=(3, 3), padding="SAME")),
    ((2, 7, 7, 5), dict(features=3, kernel_size=(3, 3), strides=2, padding=((1, 1), (1, 1)),
                        use_bias=False)),
    ((2, 5, 5, 4), dict(features=2, kernel_size=(1, 1), strides=(2, 2), use_bias=False)),
    ((2, 6, 5, 3), dict(features=4, kernel_size=(3, 2), padding="VALID")),
    ((3, 2, 2, 6), dict(features=5, kernel_size=(3, 3), padding="SAME")),
    ((2, 3, 4, 4, 2), dict(features=3, kernel_size=(3, 3), padding="SAME")),
]


def _random_params(module, x, seed=0):
  """Parameters of `module` for `x`, random values: no per-test init compile."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), x)
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype), shapes)


def test_same_parameters_as_nn_conv():
  shape, settings = CASES[1]
  x = jnp.zeros(shape)
  inits = [jax.jit(m.init)(jax.random.key(0), x)
           for m in (nn.Conv(**settings), conv.Conv(lowering="patches", **settings))]
  assert jax.tree.structure(inits[0]) == jax.tree.structure(inits[1])
  for a, b in zip(*map(jax.tree.leaves, inits)):
    np.testing.assert_array_equal(a, b)  # same shapes, same initialisers: checkpoints load


@pytest.mark.parametrize("shape,settings,lowering", [
    case + ("patches",) if i < 3 else pytest.param(*case, "patches", marks=pytest.mark.slow)
    for i, case in enumerate(CASES)] + [CASES[4] + ("auto",)])
def test_same_outputs_and_gradients_as_nn_conv(shape, settings, lowering):
  reference, ours = nn.Conv(**settings), conv.Conv(lowering=lowering, **settings)
  x = jax.random.normal(jax.random.key(1), shape)
  params = _random_params(reference, x)

  @jax.jit
  def both(params, x):
    def value_and_grads(module):
      y = module.apply(params, x)
      weights = jnp.cos(jnp.arange(y.size).reshape(y.shape))
      loss = lambda p, x: jnp.sum(weights * jnp.tanh(module.apply(p, x)))
      return y, jax.grad(loss, argnums=(0, 1))(params, x)
    return value_and_grads(ours), value_and_grads(reference)

  got, expected = both(params, x)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_each_part_alone_in_patch_form_is_exact():
  shape, settings = CASES[1]
  reference = nn.Conv(**settings)
  x = jax.random.normal(jax.random.key(1), shape)
  kernel = _random_params(reference, x)["params"]["kernel"]

  def grads(lowering):
    if lowering is None:
      f = lambda x, k: jnp.sum(jnp.sin(reference.apply({"params": {"kernel": k}}, x)))
    else:
      f = lambda x, k: jnp.sum(jnp.sin(conv.conv(x, k, (2, 2), ((1, 1), (1, 1)), lowering)))
    return jax.grad(f, argnums=(0, 1))(x, kernel)

  parts = ("forward", "input_grad", "weight_grad")
  got, expected = jax.jit(lambda: (
      [grads(conv.Lowering(**{part: conv.PATCHES})) for part in parts], grads(None)))()
  for part, part_grads in zip(parts, got):
    for a, b in zip(part_grads, expected):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=part)


def test_options_outside_the_patch_form_run_nn_conv():
  settings = dict(features=4, kernel_size=(3, 3), feature_group_count=2, padding="CIRCULAR")
  x = jax.random.normal(jax.random.key(1), (2, 5, 5, 4))
  params = _random_params(nn.Conv(**settings), x)
  got, expected = jax.jit(lambda p, x: (conv.Conv(lowering="patches", **settings).apply(p, x),
                                        nn.Conv(**settings).apply(p, x)))(params, x)
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_auto_is_native_off_cpu_and_follows_the_cpu_rules():
  native = conv.Lowering()
  assert conv.choose_lowering("auto", "gpu", (2, 2), (2, 2), 512) == native
  assert conv.choose_lowering("auto", "tpu", (32, 32), (32, 32), 64) == native
  assert conv.choose_lowering("auto", "cpu", (2, 2), (2, 2), 512) == conv.Lowering(
      "patches", "patches", "patches")
  # Session 5: the weight gradient in patch form only on the input conv (<= 4 channels,
  # 32x32); native elsewhere, ResNet-18's 32x32x64 stage included (its whole step was slower).
  weight_grad_only = conv.Lowering("native", "native", "patches")
  assert conv.choose_lowering("auto", "cpu", (32, 32), (32, 32), 3) == weight_grad_only
  assert conv.choose_lowering("auto", "cpu", (32, 32), (32, 32), 64) == native
  assert conv.choose_lowering("auto", "cpu", (32, 32), (32, 32), 16) == native
  assert conv.choose_lowering("auto", "cpu", (16, 16), (16, 16), 32) == native
  assert conv.choose_lowering("auto", "cpu", (8, 8), (8, 8), 256) == native
  assert conv.choose_lowering("auto", "cpu", (4, 4), (4, 4), 128) == native
  # The 4x4 x >= 256-channel clause is withdrawn (whole ResNet-18 / VGG-16 steps slower with it).
  assert conv.choose_lowering("auto", "cpu", (4, 4), (4, 4), 512) == native
  with pytest.raises(ValueError, match="lowering='fast'"):
    conv.choose_lowering("fast", "cpu", (4, 4), (4, 4), 8)


class _TwoConvs(nn.Module):
  lowering: str

  @nn.compact
  def __call__(self, x):
    x = nn.relu(conv.Conv(4, (3, 3), lowering=self.lowering, name="a")(x))
    x = nn.relu(conv.Conv(6, (3, 3), strides=2, lowering=self.lowering, name="b")(x))
    return nn.Dense(3, name="head")(jnp.mean(x, axis=(-3, -2)))


@pytest.mark.parametrize("method", ["ghost", pytest.param("vmap", marks=pytest.mark.slow)])
def test_clipped_sums_with_the_patch_form_equal_nn_convs(method):
  x = jax.random.normal(jax.random.key(3), (5, 8, 8, 2))
  y = jnp.arange(5) % 3
  mask = jnp.array([True, True, False, True, True])
  params = _random_params(_TwoConvs("native"), x[:1])

  def loss_of(lowering):
    model = _TwoConvs(lowering)
    def loss_fn(p, example):
      logits = model.apply(p, example["x"][None])[0]
      return -jax.nn.log_softmax(logits)[example["y"]]
    return loss_fn

  config = clipping.ClippingConfig(clip_norm=0.1, method=method)
  reference = clipping.ClippingConfig(clip_norm=0.1, method="vmap")
  got, metrics = jax.jit(lambda p: clipping.clipped_grad_sum(
      loss_of("patches"), p, {"x": x, "y": y}, mask, config))(params)
  expected, _ = jax.jit(lambda p: clipping.clipped_grad_sum(
      loss_of("native"), p, {"x": x, "y": y}, mask, reference))(params)
  assert float(metrics.num_clipped) == 4  # every real example is clipped
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
