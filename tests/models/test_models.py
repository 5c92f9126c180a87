"""Image models: parameter counts by hand, per-example use, PatchesConv, BatchNorm refusal, weights."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax.models import alexnet, cnn, registry, resnet, vgg


def _conv(c_in, c_out, k=3, bias=True):
  return k * k * c_in * c_out + (c_out if bias else 0)


def _dense(n_in, n_out):
  return n_in * n_out + n_out


def _count(model, input_shape):
  return registry.count_params(registry.param_shapes(model, input_shape))


def test_small_cnn_has_opacus_parameter_count():
  by_hand = _conv(3, 32) + _conv(32, 64) + _conv(64, 64) + _conv(64, 128) + _dense(128, 10)
  assert by_hand == 131_466
  assert _count(cnn.SmallCNN(10), (32, 32, 3)) == by_hand


def test_vgg16_parameter_count_by_hand():
  widths = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
  convs = sum(_conv(c_in, c_out) for c_in, c_out in zip(widths[:-1], widths[1:]))
  assert _count(vgg.VGG16(10), (32, 32, 3)) == convs + _dense(512, 10) == 14_719_818
  # 28x28 also pools down to 1x1 (ceil-mode pooling), so the head still sees 512 features.
  shapes = registry.param_shapes(vgg.VGG16(2), (28, 28, 1))
  assert shapes["head"]["kernel"].shape == (512, 2)


def test_resnet18_groupnorm_parameter_count_by_hand():
  norm = lambda c: 2 * c  # GroupNorm scale and bias
  block = lambda c_in, c_out: (_conv(c_in, c_out, bias=False) + norm(c_out)
                               + _conv(c_out, c_out, bias=False) + norm(c_out)
                               + (_conv(c_in, c_out, k=1, bias=False) + norm(c_out)
                                  if c_in != c_out else 0))
  stages = [(64, 64), (64, 128), (128, 256), (256, 512)]
  by_hand = (_conv(3, 64, bias=False) + norm(64)
             + sum(block(c_in, c_out) + block(c_out, c_out) for c_in, c_out in stages)
             + _dense(512, 10))
  assert by_hand == 11_173_962
  assert _count(resnet.ResNet18(num_classes=10), (32, 32, 3)) == by_hand


def test_alexnet_parameter_count_by_hand():
  convs = (_conv(3, 64, k=5) + _conv(64, 192, k=5) + _conv(192, 384) + _conv(384, 256)
           + _conv(256, 256))
  by_hand = convs + _dense(4 * 4 * 256, 256) + _dense(256, 256) + _dense(256, 10)
  assert _count(alexnet.AlexNet(10), (32, 32, 3)) == by_hand
  assert _count(alexnet.AlexNet(10), (28, 28, 3)) == by_hand  # 28 also pools to 4x4


@pytest.mark.parametrize("name", registry.model_names())
@pytest.mark.parametrize("input_shape", [(32, 32, 3), (28, 28, 1)])
def test_every_model_maps_images_to_logits(name, input_shape):
  model = registry.build_model(name, num_classes=7)
  shapes = registry.param_shapes(model, input_shape)
  logits = jax.eval_shape(lambda p, x: model.apply({"params": p}, x), shapes,
                          jax.ShapeDtypeStruct((3,) + input_shape, jnp.float32))
  assert logits.shape == (3, 7)


# Small versions of each architecture, so real forward passes stay fast on CPU.
_SMALL_MODELS = {
    "cnn": cnn.SmallCNN(num_classes=3, channels=(4, 8, 8, 8)),
    "mlp": cnn.MLP(num_classes=3, hidden=(16,)),
    "vgg": vgg.VGG(num_classes=3, config=(4, "M", 8, "M", 8, 8, "M", 8)),  # 8 -> 4 -> 2 -> 1
    "resnet": resnet.ResNet(stage_sizes=(1, 1), num_classes=3, num_filters=8, num_groups=4),
    "alexnet": alexnet.AlexNet(num_classes=3, conv_features=(4, 8, 8, 8, 8), hidden=16),
}
_IMAGE_SHAPE = (8, 8, 3)


def _random_params(model, input_shape, seed=0):
  """Random parameters drawn on the host: compiling Flax's init for every model would dominate
  this file's run time, and these tests need parameters, not their initialisation."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda leaf: (0.3 * rng.standard_normal(leaf.shape)).astype(leaf.dtype),
                      registry.param_shapes(model, input_shape))


def _images(seed, batch):
  return np.random.default_rng(seed).uniform(size=(batch,) + _IMAGE_SHAPE).astype(np.float32)


@pytest.fixture(scope="module")
def small_params():
  return {name: _random_params(model, _IMAGE_SHAPE) for name, model in _SMALL_MODELS.items()}


@pytest.mark.parametrize("name", sorted(_SMALL_MODELS))
def test_per_example_calls_match_the_batch(name, small_params):
  """DP code vmaps over single examples with a batch axis of 1: same logits as one batch call."""
  model, params = _SMALL_MODELS[name], small_params[name]
  images = _images(1, 4)

  @jax.jit
  def batched_and_one_by_one(x):
    apply = lambda batch: model.apply({"params": params}, batch)
    return apply(x), jax.vmap(lambda example: apply(example[None])[0])(x)

  batched, one_by_one = batched_and_one_by_one(images)
  np.testing.assert_allclose(one_by_one, batched, rtol=1e-5, atol=1e-5)
  assert bool(jnp.all(jnp.isfinite(batched))) and float(jnp.std(batched)) > 0


def test_groupnorm_resnet_keeps_examples_independent(small_params):
  model, params = _SMALL_MODELS["resnet"], small_params["resnet"]
  images = _images(2, 3)
  changed = np.concatenate([images[:1], 5 * _images(3, 2)])
  first_logits = jax.jit(lambda x: model.apply({"params": params}, x)[0])
  np.testing.assert_allclose(first_logits(changed), first_logits(images), rtol=1e-6)


@pytest.mark.parametrize("size,kernel,strides,padding", [
    (2, (3, 3), (1, 1), "SAME"), (1, (3, 3), (1, 1), "SAME"), (5, (3, 2), (2, 1), "VALID")])
def test_patches_conv_equals_nn_conv(size, kernel, strides, padding):
  x = np.random.default_rng(0).standard_normal((2, size, size, 5)).astype(np.float32)
  reference = nn.Conv(6, kernel, strides=strides, padding=padding)
  patches = vgg.PatchesConv(6, kernel, strides=strides, padding=padding)
  params = _random_params(reference, (size, size, 5))
  assert (jax.tree.structure(_random_params(patches, (size, size, 5)))
          == jax.tree.structure(params))

  @jax.jit
  def compare(params):
    apply = lambda module, p: module.apply({"params": p}, x)
    loss = lambda module: lambda p: jnp.sum(jnp.sin(apply(module, p)))
    return (apply(patches, params), apply(reference, params),
            jax.grad(loss(patches))(params), jax.grad(loss(reference))(params))

  out, want, grad, want_grad = compare(params)
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-4),
               grad, want_grad)


def test_patches_conv_initialises_like_nn_conv():
  x = jnp.zeros((1, 2, 2, 5))
  init_both = jax.jit(lambda key: (nn.Conv(6, (3, 3)).init(key, x),
                                   vgg.PatchesConv(6, (3, 3)).init(key, x)))
  jax.tree.map(np.testing.assert_array_equal, *init_both(jax.random.key(3)))


def test_vgg_patches_path_changes_nothing_but_speed(small_params):
  with_patches = _SMALL_MODELS["vgg"]
  xla_only = vgg.VGG(3, config=with_patches.config, patches_max_size=0)
  images = _images(4, 2)
  variables = {"params": small_params["vgg"]}
  both = jax.jit(lambda x: (with_patches.apply(variables, x), xla_only.apply(variables, x)))
  np.testing.assert_allclose(*both(images), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm", ["batch", "BatchNorm", nn.BatchNorm,
                                  functools.partial(nn.BatchNorm, use_running_average=False)])
def test_batchnorm_is_refused_with_the_reason(norm):
  with pytest.raises(ValueError, match="BatchNorm mixes the examples.*GroupNorm"):
    resnet.ResNet18(num_classes=10, norm=norm)
  with pytest.raises(ValueError, match="per-example gradients"):
    registry.build_model("resnet18", 10, norm=norm)


def test_other_norms_are_accepted_and_unknown_names_listed():
  for norm in ("group", "layer", "none", functools.partial(nn.GroupNorm, num_groups=8)):
    assert _count(resnet.ResNet(stage_sizes=(1,), num_filters=8, num_groups=4, norm=norm),
                  (8, 8, 3)) > 0
  with pytest.raises(ValueError, match="group, layer, none"):
    resnet.ResNet18(norm="instance")


def test_registry_rejects_unknown_names_and_options():
  with pytest.raises(ValueError, match="alexnet, cnn, linear, mlp, resnet18, resnet18_finetune, resnet18_probe, scatter_cnn, scatter_linear, vgg16"):
    registry.build_model("resnet50", 10)
  with pytest.raises(ValueError, match="'cnn' does not accept options \\['depth'\\]"):
    registry.build_model("cnn", 10, depth=3)


def test_init_params_is_seeded():
  model = _SMALL_MODELS["mlp"]
  first = registry.init_params(model, jax.random.key(5), _IMAGE_SHAPE)
  again = registry.init_params(model, jax.random.key(5), (1,) + _IMAGE_SHAPE)
  other = registry.init_params(model, jax.random.key(6), _IMAGE_SHAPE)
  jax.tree.map(np.testing.assert_array_equal, first, again)
  assert not np.array_equal(first["head"]["kernel"], other["head"]["kernel"])
  assert first["head"]["kernel"].shape == (16, 3)


# ------------------------------------------------------------------------------ weight files


@pytest.fixture
def small_resnet_params(small_params):
  return _SMALL_MODELS["resnet"], small_params["resnet"]


@pytest.mark.parametrize("suffix", [".npz", ".msgpack"])
def test_weights_round_trip(small_resnet_params, tmp_path, suffix):
  model, params = small_resnet_params
  path = tmp_path / f"weights{suffix}"
  resnet.save_params(path, params)
  like = registry.param_shapes(model, (8, 8, 3))
  restored = resnet.load_params(path, like)
  jax.tree.map(np.testing.assert_array_equal, restored, params)


def test_weights_wrapped_in_params_key_are_unwrapped(small_resnet_params, tmp_path):
  model, params = small_resnet_params
  registry.save_params(tmp_path / "w.msgpack", {"params": params})
  restored = registry.load_params(tmp_path / "w.msgpack", params)
  jax.tree.map(np.testing.assert_array_equal, restored, params)


def test_weights_shape_mismatch_names_the_array_and_new_head_is_possible(small_resnet_params,
                                                                         tmp_path):
  _, params = small_resnet_params  # 3 classes
  registry.save_params(tmp_path / "w.npz", params)
  five_classes = resnet.ResNet(stage_sizes=(1, 1), num_classes=5, num_filters=8, num_groups=4)
  shapes = registry.param_shapes(five_classes, (8, 8, 3))
  fresh = jax.tree.map(lambda leaf: np.full(leaf.shape, 0.5, leaf.dtype), shapes)
  with pytest.raises(ValueError, match=r"head/kernel: file \(16, 3\) vs model \(16, 5\)"):
    registry.load_params(tmp_path / "w.npz", fresh)
  restored = registry.load_params(tmp_path / "w.npz", fresh, keep_from_like=("head",))
  np.testing.assert_array_equal(restored["head"]["kernel"], fresh["head"]["kernel"])
  np.testing.assert_array_equal(restored["stem_conv"]["kernel"], params["stem_conv"]["kernel"])


def test_weights_missing_file_and_missing_keys(small_resnet_params, tmp_path):
  _, params = small_resnet_params
  with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
    registry.load_params(tmp_path / "absent.npz", params)
  np.savez(tmp_path / "partial.npz", **{"head/kernel": np.zeros((16, 3), np.float32)})
  with pytest.raises(ValueError, match="missing from file"):
    registry.load_params(tmp_path / "partial.npz", params)
