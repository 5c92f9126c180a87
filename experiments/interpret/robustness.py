"""Robustness of attributions and certified top-k fractions on trained classifiers.

`robustness` compares clean against random and PGD-perturbed test images (top-k intersection and
cosine) for the plain input gradient, SmoothGrad and the RDP-smoothed top-k map, and certifies the
smoothed top-k (`certified.py`); `cost_vs_samples` times one certified image against T. The
smoothing noise is no privacy mechanism (it perturbs test images): it is seeded.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.interpret import attacks
from experiments.interpret import certified
from experiments.interpret import explanations
from experiments.interpret import gradcam
from experiments.interpret import metrics
from experiments.interpret import settings

BOUNDS = ("rdp", "rdp_exact", "gaussian")


@functools.lru_cache(maxsize=None)
def _saliency(model):
  return gradcam.make_input_gradient(model)


@functools.lru_cache(maxsize=None)
def _attack(model, radius, k, steps, sigma, eot_samples):
  return attacks.make_topk_attack(model, radius=radius, k=k, steps=steps, sigma=sigma,
                                  eot_samples=eot_samples)


def topk_size(config: settings.Config, image_shape) -> int:
  """k: `topk_fraction` of the pixels, at least 1."""
  return max(1, int(round(config.topk_fraction * image_shape[0] * image_shape[1])))


def robustness(config: settings.Config, result, images: np.ndarray, key: jax.Array) -> dict:
  """Clean vs random / PGD inputs: top-k intersection and cosine per attribution method."""
  model, params = result.model, result.params
  saliency = _saliency(model)
  k = topk_size(config, images.shape[1:])
  sigma, radius = config.smoothing_sigma, config.attack_radius
  pgd = _attack(model, radius, k, config.attack_steps, 0.0, 1)
  pgd_eot = _attack(model, radius, k, config.attack_steps, sigma, config.eot_samples)
  rows = {f"{method}/{attack}": {"topk": [], "cosine": []}
          for method in ("gradient", "smoothgrad", "rdp_topk") for attack in ("random", "pgd")}
  certificates, radii_rdp, radii_gauss, seconds = [], [], [], []
  for index, image in enumerate(images):
    image_key = jax.random.fold_in(key, index)
    logits = explanations.jitted_apply(model)(params, jnp.asarray(image)[None])
    cls = int(jnp.argmax(logits[0]))
    classes = jnp.array([cls])

    def smoothed(x, salt):
      return certified.smooth_attributions(saliency, params, x, cls,
                                           jax.random.fold_in(image_key, salt), sigma=sigma,
                                           num_samples=config.num_samples, k=k)

    clean = smoothed(image, 0)
    seconds.append(clean.seconds)
    perturbed = {
        "random": (image + np.asarray(attacks.random_perturbation(
            jax.random.fold_in(image_key, 1), image.shape, radius)),) * 2,
        "pgd": (np.asarray(pgd(params, image, cls, jax.random.fold_in(image_key, 2))),
                np.asarray(pgd_eot(params, image, cls, jax.random.fold_in(image_key, 3)))),
    }
    plain_clean = np.asarray(saliency(params, jnp.asarray(image)[None], classes))
    for attack, (against_plain, against_smooth) in perturbed.items():
      plain = np.asarray(saliency(params, jnp.asarray(against_plain)[None], classes))
      # The same noise key as the clean map: the comparison sees the input change only.
      smooth = smoothed(against_smooth, 0)
      pairs = {"gradient": (plain_clean, plain),
               "smoothgrad": (clean.smoothgrad[None], smooth.smoothgrad[None]),
               "rdp_topk": (clean.topk_frequency[None], smooth.topk_frequency[None])}
      for method, (a, b) in pairs.items():
        rows[f"{method}/{attack}"]["topk"].append(float(metrics.topk_intersection(a, b, k)[0]))
        rows[f"{method}/{attack}"]["cosine"].append(float(metrics.cosine_similarity(a, b)[0]))
    certificates.append({
        "rdp": certified.certify(clean, config.certify_radii, confidence=config.confidence)
        .fractions.tolist(),
        "rdp_exact": certified.certify(clean, config.certify_radii, confidence=None)
        .fractions.tolist(),
        "gaussian": certified.certify(clean, config.certify_radii, bound="gaussian",
                                      confidence=config.confidence).fractions.tolist()})
    radii_rdp.append(certified.certified_radius(clean, config.certify_fraction,
                                                confidence=config.confidence))
    radii_gauss.append(certified.certified_radius(clean, config.certify_fraction,
                                                  bound="gaussian", confidence=config.confidence))
  summary = {name: {"topk_intersection": float(np.mean(v["topk"])),
                    "cosine": float(np.mean(v["cosine"])),
                    "cosine_min": float(np.min(v["cosine"]))} for name, v in rows.items()}
  return {"k": k, "table": summary,
          "certified_fraction": {b: np.mean([c[b] for c in certificates], 0).tolist()
                                 for b in BOUNDS},
          "certified_radius_rdp": radii_rdp, "certified_radius_gaussian": radii_gauss,
          "seconds_per_image": float(np.mean(seconds))}


def cost_vs_samples(config: settings.Config, result, image: np.ndarray,
                    key: jax.Array) -> list[dict]:
  """Seconds to sample and to certify one image (radius at `certify_fraction`) against T."""
  saliency = _saliency(result.model)
  k = topk_size(config, image.shape)
  cls = int(jnp.argmax(result.model.apply({"params": result.params}, jnp.asarray(image)[None])))
  rows = []
  for samples in config.cost_samples:
    smoothed = certified.smooth_attributions(saliency, result.params, image, cls, key,
                                             sigma=config.smoothing_sigma, num_samples=samples,
                                             k=k)
    start = time.perf_counter()
    radius = certified.certified_radius(smoothed, config.certify_fraction,
                                        confidence=config.confidence)
    rows.append({"T": samples, "sampling_seconds": smoothed.seconds,
                 "certify_seconds": time.perf_counter() - start, "certified_radius": radius})
  return rows
