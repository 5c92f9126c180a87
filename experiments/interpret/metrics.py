"""Faithfulness metrics of explanation maps and similarity measures of attributions.

Chattopadhay et al. (2018), as used by Naidu et al. (2021) on DP models, with Y_i the softmax
score of the explained class c_i on image i and O_i that score on the image multiplied
pixel-wise by its explanation map normalised to [0, 1]:
  Average Drop %             = 100/N sum_i max(0, Y_i - O_i) / Y_i      (lower is better)
  Increase in Confidence %   = 100/N sum_i [Y_i < O_i]                  (higher is better)
  average masked-input score = 100/N sum_i O_i   (the study's "average normalised input score")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from experiments.interpret import gradcam


@dataclasses.dataclass(frozen=True)
class ExplanationScores:
  average_drop: float  # %
  increase_in_confidence: float  # %
  masked_score: float  # %, mean O
  num_images: int

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def average_drop(full_scores, masked_scores) -> float:
  """100/N sum max(0, Y - O) / Y; Y must be > 0 (softmax scores are)."""
  full, masked = _scores_pair(full_scores, masked_scores)
  if np.any(full <= 0):
    raise ValueError("average_drop: full-image scores Y must be > 0 (softmax probabilities)")
  return float(100.0 * np.mean(np.maximum(0.0, full - masked) / full))


def increase_in_confidence(full_scores, masked_scores) -> float:
  """100/N sum [Y < O]: how often the masked image raises the class score."""
  full, masked = _scores_pair(full_scores, masked_scores)
  return float(100.0 * np.mean(full < masked))


def explanation_scores(full_scores, masked_scores) -> ExplanationScores:
  full, masked = _scores_pair(full_scores, masked_scores)
  return ExplanationScores(average_drop=average_drop(full, masked),
                           increase_in_confidence=increase_in_confidence(full, masked),
                           masked_score=float(100.0 * np.mean(masked)), num_images=len(full))


def _scores_pair(full_scores, masked_scores) -> tuple[np.ndarray, np.ndarray]:
  full = np.asarray(full_scores, np.float64).reshape(-1)
  masked = np.asarray(masked_scores, np.float64).reshape(-1)
  if full.shape != masked.shape or full.size == 0:
    raise ValueError(f"need as many full as masked scores (> 0), got {full.size} and {masked.size}")
  return full, masked


def mask_images(images: jnp.ndarray, maps: jnp.ndarray) -> jnp.ndarray:
  """Images (N, H, W, C) times their maps (N, H, W) normalised to [0, 1]."""
  return images * gradcam.normalize_maps(maps)[..., None]


def class_probabilities(logits: jnp.ndarray, classes: jnp.ndarray) -> jnp.ndarray:
  return jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), classes[:, None], axis=1)[:, 0]


def score_explanations(apply_fn: Callable[[jnp.ndarray], jnp.ndarray], images: jnp.ndarray,
                       maps: jnp.ndarray, classes: jnp.ndarray) -> ExplanationScores:
  """The three metrics for maps of `classes`; `apply_fn(images) -> logits` (jit it)."""
  full = class_probabilities(apply_fn(images), classes)
  masked = class_probabilities(apply_fn(mask_images(images, maps)), classes)
  return explanation_scores(np.asarray(full), np.asarray(masked))


def cross_image_similarity(maps) -> float:
  """Mean Pearson correlation between the maps of different images (N >= 2 maps).

  1 means every image gets the same map: the explanation then says where the model looks in
  general, not where it looks in this image. Constant maps (no variation) are left out.
  """
  flat = np.asarray(maps, np.float64).reshape(len(maps), -1)
  flat = flat - flat.mean(axis=1, keepdims=True)
  norms = np.linalg.norm(flat, axis=1)
  flat = flat[norms > 0] / norms[norms > 0, None]
  n = len(flat)
  if n < 2:
    return float("nan")
  gram = flat @ flat.T
  return float((gram.sum() - np.trace(gram)) / (n * (n - 1)))


def cosine_similarity(a, b, *, axis: int | tuple[int, ...] | None = None) -> np.ndarray:
  """Cosine of attribution vectors (flattened over `axis`, default all but the first).

  Two zero vectors are identical (1); a zero and a non-zero vector share nothing (0).
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"cosine_similarity: shapes differ, {a.shape} and {b.shape}")
  if axis is None:
    axis = tuple(range(1, a.ndim)) if a.ndim > 1 else 0
  dot = np.sum(a * b, axis=axis)
  norms = np.sqrt(np.sum(a * a, axis=axis)) * np.sqrt(np.sum(b * b, axis=axis))
  both_zero = (np.sum(a * a, axis=axis) == 0) & (np.sum(b * b, axis=axis) == 0)
  cosine = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), 0.0)
  return np.clip(np.where(both_zero, 1.0, cosine), -1.0, 1.0)


def topk_indices(maps, k: int) -> np.ndarray:
  """Indices (N, k) of the k largest entries of each flattened map (ties: lower index first)."""
  flat = np.asarray(maps).reshape(len(maps), -1)
  if not 1 <= k <= flat.shape[1]:
    raise ValueError(f"k must be in [1, {flat.shape[1]}], got {k}")
  return np.argsort(-flat, axis=1, kind="stable")[:, :k]


def topk_intersection(a, b, k: int) -> np.ndarray:
  """Per example, the fraction of the k largest entries of `a` that are among those of `b`."""
  top_a, top_b = topk_indices(a, k), topk_indices(b, k)
  return np.array([len(np.intersect1d(x, y)) / k for x, y in zip(top_a, top_b)])
