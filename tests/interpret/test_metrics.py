"""Explanation metrics and attribution similarities on hand-made numbers."""

import jax.numpy as jnp
import numpy as np
import pytest

from experiments.interpret import metrics


def test_drop_increase_and_masked_score_by_hand():
  full = [0.5, 0.8, 0.2, 0.4]
  masked = [0.25, 0.9, 0.2, 0.1]
  # drops: 0.25/0.5, 0, 0, 0.3/0.4 -> (0.5 + 0.75) / 4; increases: only 0.8 < 0.9.
  assert metrics.average_drop(full, masked) == pytest.approx(100 * 1.25 / 4)
  assert metrics.increase_in_confidence(full, masked) == pytest.approx(25.0)
  scores = metrics.explanation_scores(full, masked)
  assert scores.masked_score == pytest.approx(100 * 1.45 / 4)
  assert scores.num_images == 4


def test_metric_inputs_are_checked():
  with pytest.raises(ValueError, match="as many"):
    metrics.average_drop([0.5], [0.5, 0.2])
  with pytest.raises(ValueError, match="> 0"):
    metrics.average_drop([0.0], [0.1])


def test_score_explanations_with_a_hand_model():
  # logits = (0, total pixel sum): class-1 probability = sigmoid(sum).
  def apply_fn(images):
    total = images.reshape(images.shape[0], -1).sum(-1)
    return jnp.stack([jnp.zeros_like(total), total], -1)

  images = jnp.ones((2, 2, 2, 1))
  maps = jnp.array([[[0.0, 1.0], [1.0, 3.0]], [[5.0, 5.0], [5.0, 5.0]]])
  # normalised maps: [[0, 1/3], [1/3, 1]] (masked sum 5/3) and all zeros (constant map).
  scores = metrics.score_explanations(apply_fn, images, maps, jnp.array([1, 1]))
  sigmoid = lambda t: 1 / (1 + np.exp(-t))
  full, masked = sigmoid(4.0), np.array([sigmoid(5 / 3), sigmoid(0.0)])
  assert scores.average_drop == pytest.approx(100 * np.mean((full - masked) / full), rel=1e-5)
  assert scores.increase_in_confidence == 0.0
  assert scores.masked_score == pytest.approx(100 * masked.mean(), rel=1e-5)


def test_cosine_similarity_values():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(5, 3, 4))
  np.testing.assert_allclose(metrics.cosine_similarity(a, a), 1.0)
  np.testing.assert_allclose(metrics.cosine_similarity(a, -a), -1.0)
  np.testing.assert_allclose(metrics.cosine_similarity(a, 2.5 * a), 1.0)
  b = rng.normal(size=(5, 3, 4))
  got = metrics.cosine_similarity(a, b)
  want = [np.dot(x.ravel(), y.ravel()) / np.linalg.norm(x) / np.linalg.norm(y) for x, y in zip(a, b)]
  np.testing.assert_allclose(got, want)
  assert np.all((got >= -1) & (got <= 1))
  # non-negative attribution maps (saliency, top-k frequencies) can never be anti-parallel
  assert np.all(metrics.cosine_similarity(np.abs(a), np.abs(b)) >= 0)
  assert metrics.cosine_similarity(np.zeros((1, 3)), np.zeros((1, 3)))[0] == 1.0
  assert metrics.cosine_similarity(np.zeros((1, 3)), np.ones((1, 3)))[0] == 0.0
  np.testing.assert_allclose(metrics.cosine_similarity([[1.0, 0.0]], [[0.0, 2.0]]), 0.0)


def test_topk_intersection_by_hand():
  a = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
  b = np.array([[5.0, 0.0, 3.0, 9.0, 1.0]])  # top-3: {3, 0, 2} vs a's {0, 1, 2}
  np.testing.assert_allclose(metrics.topk_intersection(a, b, 3), [2 / 3])
  np.testing.assert_allclose(metrics.topk_intersection(a, a, 3), [1.0])
  with pytest.raises(ValueError, match="k must be"):
    metrics.topk_intersection(a, b, 6)


def test_cross_image_similarity_of_identical_unrelated_and_opposite_maps():
  rng = np.random.default_rng(0)
  base = rng.random((8, 8))
  assert metrics.cross_image_similarity(np.stack([base] * 5)) == pytest.approx(1.0)
  assert metrics.cross_image_similarity(np.stack([base, base.max() - base])) == pytest.approx(-1.0)
  unrelated = rng.random((400, 8, 8))
  assert abs(metrics.cross_image_similarity(unrelated)) < 0.01
  # Constant maps carry no spatial information and are left out.
  with_constant = np.stack([base, base, np.zeros((8, 8))])
  assert metrics.cross_image_similarity(with_constant) == pytest.approx(1.0)
  assert np.isnan(metrics.cross_image_similarity(np.stack([base])))
