"""dpjax.models.scattering: the ScatterNet features (known properties of the transform) and the
heads (per-example normalisation: one example's output never depends on the others)."""

import jax
import numpy as np
import pytest

pytest.importorskip("kymatio", reason="ScatterNet features need kymatio==0.3.0")

from dpjax.models import registry  # pylint: disable=wrong-import-position
from dpjax.models import scattering  # pylint: disable=wrong-import-position


def test_shapes_81_channels_per_input_channel_at_a_quarter_resolution():
  grey = scattering.scattering_features(np.random.default_rng(0).random((3, 28, 28, 1)))
  colour = scattering.scattering_features(np.random.default_rng(0).random((2, 28, 28, 3)))
  assert grey.shape == (3, 7, 7, 81) and grey.dtype == np.float32
  assert colour.shape == (2, 7, 7, 243)


def test_constant_image_keeps_its_mean_and_has_no_wavelet_energy():
  # The low-pass filter sums to one and the Morlet wavelets to zero: a constant image of level c
  # has order-0 coefficients c and (near) zero first- and second-order ones.
  features = scattering.scattering_features(np.full((1, 28, 28, 1), 0.6, np.float32))[0]
  assert np.allclose(features[..., 0], 0.6, atol=1e-3)
  assert np.abs(features[..., 1:]).max() < 1e-3


def test_features_of_an_image_do_not_depend_on_the_batch():
  images = np.random.default_rng(1).random((5, 28, 28, 1)).astype(np.float32)
  together = scattering.scattering_features(images, batch_size=2)
  alone = scattering.scattering_features(images[3:4])
  assert np.allclose(together[3], alone[0], atol=1e-6)


def test_contrast_scales_features_linearly():
  # The transform is positively homogeneous: S(a x) = a S(x) for a > 0.
  image = np.random.default_rng(2).random((1, 28, 28, 1)).astype(np.float32)
  assert np.allclose(scattering.scattering_features(0.5 * image),
                     0.5 * scattering.scattering_features(image), atol=1e-5)


def test_side_not_divisible_names_the_fix():
  with pytest.raises(ValueError, match="resize"):
    scattering.scattering_features(np.zeros((1, 30, 30, 1)))


@pytest.mark.parametrize("name", ["scatter_linear", "scatter_cnn"])
def test_heads_normalise_per_example(name):
  features = np.random.default_rng(3).random((4, 3, 3, 18)).astype(np.float32)
  model = registry.build_model(name, 2)
  params = registry.init_params(model, jax.random.PRNGKey(0), features.shape[1:])
  batch = model.apply({"params": params}, features)
  other = features.copy()
  other[1:] *= 10.0  # the other examples change a lot
  assert np.allclose(model.apply({"params": params}, other)[0], batch[0], atol=1e-5)
  assert np.allclose(model.apply({"params": params}, features[:1])[0], batch[0], atol=1e-5)
