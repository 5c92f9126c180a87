"""Grad-CAM(++) maps of a trained classifier and their scores (Average Drop, Increase in
Confidence, masked-input score, cross-image similarity): one row of the per-epsilon tables.

Models are hashable dataclasses and parameters are arguments, so every model of one architecture
shares these compilations.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from experiments.interpret import gradcam
from experiments.interpret import metrics
from experiments.interpret import settings


@functools.lru_cache(maxsize=None)
def jitted_apply(model):
  return jax.jit(lambda params, batch: model.apply({"params": params}, batch))


def explain(config: settings.Config, result, images: np.ndarray) -> dict:
  """Grad-CAM(++) maps of the predicted classes and the three metrics."""
  model, params = result.model, result.params
  layer = config.cam_layer or gradcam.default_layer(model, params, images.shape[1:])
  # Convs of SmallCNN/VGG/AlexNet are followed by a ReLU outside the module (see gradcam).
  post_relu = None if "block" in layer else jax.nn.relu
  x = jnp.asarray(images)
  apply_fn = functools.partial(jitted_apply(model), params)
  classes = jnp.argmax(apply_fn(x), -1)
  out = {"layer": layer}
  for method in gradcam.METHODS:
    maps = gradcam.grad_cam(model, params, x, layer=layer, classes=classes, method=method,
                            activation_fn=post_relu)
    out[method] = metrics.score_explanations(apply_fn, x, maps, classes).to_dict()
    out[method + "_maps"] = np.asarray(gradcam.normalize_maps(maps))
  return out


def metrics_row(result, explained: dict, extra: dict | None = None) -> dict:
  """Accuracy, privacy and the explanation scores of one model (percentages)."""
  row = {"test_accuracy": 100.0 * result.test_accuracy, "epsilon": result.epsilon,
         "pure_epsilon": result.pure_epsilon, "noise_multiplier": result.noise_multiplier,
         "steps": result.steps}
  for method in gradcam.METHODS:
    scores = explained[method]
    row[f"{method}_average_drop"] = scores["average_drop"]
    row[f"{method}_increase_in_confidence"] = scores["increase_in_confidence"]
    row[f"{method}_masked_score"] = scores["masked_score"]
    row[f"{method}_cross_image_similarity"] = 100.0 * metrics.cross_image_similarity(
        explained[method + "_maps"])
  row.update(extra or {})
  return row
