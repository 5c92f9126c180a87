"""The classify study's figures: test accuracy curves, and a grid of local-DP perturbed images."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import jax
import numpy as np

from experiments.classify import ldp
from experiments.common import outputs


def _number(value) -> float:
  """A result value as a float: None -> nan, "inf" -> inf."""
  return float(value) if value is not None else math.nan


def plot_accuracy(rows: list[dict], workdir: str) -> list[str]:
  """accuracy_vs_epoch.png (every run) and accuracy_vs_epsilon.png (DP-SGD runs; runs without
  a finite epsilon as dashed lines) of the sweep's result rows; returns the paths."""
  plt = outputs.pyplot()
  datasets = list(dict.fromkeys(row["dataset"] for row in rows))
  written = []
  for x_key, file_name in (("epoch", "accuracy_vs_epoch.png"),
                           ("epsilon", "accuracy_vs_epsilon.png")):
    figure, axes = plt.subplots(1, len(datasets), squeeze=False, figsize=(5.5 * len(datasets), 4))
    for axis, dataset in zip(axes[0], datasets):
      for row in (r for r in rows if r["dataset"] == dataset):
        points = [(_number(e[x_key]), e["test_accuracy"]) for e in row["history"]
                  if "test_accuracy" in e]
        label = row["run"].split("/", 1)[1]
        if x_key == "epsilon" and not math.isfinite(_number(row["epsilon"])):
          axis.axhline(row["test_accuracy"], linestyle="--", linewidth=1, label=f"{label} (eps inf)",
                       color="gray" if label == "original" else None)
          continue
        if points:
          axis.plot(*zip(*points), marker="o", markersize=3, label=label)
      axis.set_xlabel("epoch" if x_key == "epoch" else "epsilon spent (delta fixed)")
      axis.set_ylabel("test accuracy")
      axis.set_title(dataset)
      axis.legend(fontsize=7)
    figure.tight_layout()
    written.append(outputs.save_figure(figure, os.path.join(workdir, file_name), dpi=90))
  return written


def save_perturbation_grid(path: str | os.PathLike, images: np.ndarray, scales: Sequence[float],
                           key: jax.Array, *, clip: bool = True) -> str:
  """Writes a PNG grid: one row per image, the original then one column per Laplace scale,
  titled with the per-pixel and per-image epsilon; returns the path.

  Perturbed images are shown clipped to [0, 1] (display only when `clip=False`). An
  illustration: pass a public key, never the secret one of a real release.
  """
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or len(images) == 0:
    raise ValueError(f"images must be a non-empty NHWC batch, got shape {images.shape}")
  num_pixels = int(np.prod(images.shape[1:]))
  columns = [("original", images)]
  for index, scale in enumerate(scales):
    noisy = ldp.laplace_perturb(jax.random.fold_in(key, index), images, scale, clip=clip)
    epsilon = ldp.ldp_epsilon(scale, num_pixels=num_pixels)
    columns.append((f"beta={scale:g}\neps/pixel={epsilon.per_pixel:g}\n"
                    f"eps/image={epsilon.per_image:g}", np.asarray(noisy)))

  plt = outputs.pyplot()
  figure, axes = plt.subplots(len(images), len(columns), squeeze=False,
                              figsize=(1.8 * len(columns), 1.8 * len(images) + 0.6))
  for column, (title, batch) in enumerate(columns):
    for row in range(len(images)):
      axis = axes[row, column]
      pixels = np.clip(batch[row], 0.0, 1.0)
      if pixels.shape[-1] == 1:
        axis.imshow(pixels[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
      else:
        axis.imshow(pixels)
      axis.set_xticks([])
      axis.set_yticks([])
      if row == 0:
        axis.set_title(title, fontsize=7)
  figure.tight_layout()
  return outputs.save_figure(figure, path, dpi=100)
