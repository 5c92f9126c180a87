"""Grad-CAM / Grad-CAM++ against a hand (NumPy) computation on a tiny conv net with fixed weights."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.interpret import gradcam
from dpjax.models import registry, resnet


class TinyNet(nn.Module):
  """conv 2x2 VALID (1 -> 2 channels) -> ReLU -> spatial mean -> dense (3 classes)."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(2, (2, 2), padding="VALID", name="conv")(x))
    return nn.Dense(3, name="head")(x.mean(axis=(1, 2)))


KERNEL = np.array([[1.0, -1.0], [0.5, 2.0], [-1.0, 0.5], [1.0, 1.0]])  # (2*2*1, 2 channels)
BIAS = np.array([0.1, -0.2])
HEAD = np.array([[1.0, -2.0, 0.5], [3.0, 1.0, -1.0]])  # (2 channels, 3 classes)


def _params():
  return {"conv": {"kernel": jnp.asarray(KERNEL.reshape(2, 2, 1, 2), jnp.float32),
                   "bias": jnp.asarray(BIAS, jnp.float32)},
          "head": {"kernel": jnp.asarray(HEAD, jnp.float32), "bias": jnp.zeros(3)}}


def _images():
  return np.random.default_rng(0).uniform(-1, 1, size=(2, 4, 4, 1)).astype(np.float32)


def _numpy_cam(image, cls, *, plus_plus=False, post_relu=False):
  """The hooked layer is the conv output A (3x3x2); dy_c/dA = HEAD[k, c] / 9 * [A > 0]."""
  patches = np.stack([image[i:i + 2, j:j + 2, 0].reshape(-1) for i in range(3) for j in range(3)])
  act = (patches @ KERNEL + BIAS).reshape(3, 3, 2)
  grads = HEAD[:, cls][None, None, :] / 9.0 * (act > 0)
  if post_relu:
    act = np.maximum(act, 0.0)
  if plus_plus:
    denominator = 2 * grads**2 + act.sum(axis=(0, 1)) * grads**3
    alphas = np.where(denominator != 0, grads**2 / np.where(denominator != 0, denominator, 1), 0)
    weights = (alphas * np.maximum(grads, 0)).sum(axis=(0, 1))
  else:
    weights = grads.mean(axis=(0, 1))
  return np.maximum((act * weights).sum(-1), 0.0)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
@pytest.mark.parametrize("post_relu", [False, True])
def test_cam_matches_hand_computation(method, post_relu):
  model, params, images = TinyNet(), _params(), _images()
  classes = jnp.array([1, 0])
  cam_fn = gradcam.make_grad_cam(model, "conv", method=method, upsample_to_input=False,
                                 activation_fn=jax.nn.relu if post_relu else None)
  got = np.asarray(cam_fn(params, jnp.asarray(images), classes))
  for n in range(2):
    want = _numpy_cam(images[n], int(classes[n]), plus_plus=method == "gradcam++",
                      post_relu=post_relu)
    np.testing.assert_allclose(got[n], want, rtol=1e-5, atol=1e-6)
  assert got.max() > 0  # the case is not trivially all-zero


def test_predicted_class_and_batching_are_per_example():
  model, params, images = TinyNet(), _params(), jnp.asarray(_images())
  logits = model.apply({"params": params}, images)
  predicted = np.asarray(jnp.argmax(logits, -1))
  batched = gradcam.grad_cam(model, params, images, layer="conv")  # -1: predicted class
  for n in range(2):
    alone = gradcam.grad_cam(model, params, images[n:n + 1], layer="conv",
                             classes=jnp.array([predicted[n]]))
    np.testing.assert_allclose(batched[n], alone[0], rtol=1e-5, atol=1e-7)
  assert batched.shape == (2, 4, 4)


def test_bilinear_upsampling_by_hand():
  # Half-pixel centres: output x = (j + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 (clamped).
  got = gradcam.upsample(jnp.array([[[0.0, 1.0]]]), (1, 4))
  np.testing.assert_allclose(got[0, 0], [0.0, 0.25, 0.75, 1.0], atol=1e-6)


def test_input_gradient_of_a_linear_model_is_its_weights():
  model = registry.build_model("linear", 3)
  params = _random_params(model, (4, 4, 2))
  images = jax.random.uniform(jax.random.key(1), (2, 4, 4, 2))
  classes = jnp.array([2, 0])
  saliency = gradcam.make_input_gradient(model)(params, images, classes)
  weights = np.asarray(params["head"]["kernel"]).reshape(4, 4, 2, 3)
  for n in range(2):
    np.testing.assert_allclose(saliency[n], np.abs(weights[..., int(classes[n])]).sum(-1),
                               rtol=1e-5)


def _random_params(model, input_shape):
  """Random parameters from the shapes alone (flax init is slow to compile on a loaded CPU)."""
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), jnp.float32),
                                registry.param_shapes(model, input_shape))


def test_works_on_project_models_without_edits():
  # Shrunk versions of the real classes (ResNet-18 is ResNet with stage_sizes (2, 2, 2, 2)).
  for model, layer, methods in [
      (registry.build_model("cnn", 3, channels=(4, 8)), "conv1", gradcam.METHODS),
      (resnet.ResNet(stage_sizes=(1, 1), num_classes=3, num_filters=4, num_groups=2),
       "stage2_block1", ("gradcam",))]:
    params = _random_params(model, (8, 8, 3))
    assert gradcam.default_layer(model, params, (8, 8, 3)) == layer
    images = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
    for method in methods:
      maps = gradcam.grad_cam(model, params, images, method=method, activation_fn=jax.nn.relu)
      assert maps.shape == (2, 8, 8) and bool(jnp.all(maps >= 0))
      assert bool(jnp.all(jnp.isfinite(maps)))


def test_bad_layer_and_method_are_named():
  model, params, images = TinyNet(), _params(), jnp.asarray(_images())
  with pytest.raises(ValueError, match="'nope'.*0 times"):
    gradcam.grad_cam(model, params, images, layer="nope")
  with pytest.raises(ValueError, match="unknown CAM method"):
    gradcam.make_grad_cam(model, "conv", method="cam")


def test_normalize_maps():
  maps = jnp.array([[[1.0, 3.0], [2.0, 5.0]], [[2.0, 2.0], [2.0, 2.0]]])
  got = gradcam.normalize_maps(maps)
  np.testing.assert_allclose(got[0], [[0.0, 0.5], [0.25, 1.0]])
  np.testing.assert_allclose(got[1], 0.0)
