"""The study's figures: Grad-CAM overlays in a grid, and line plots."""

from __future__ import annotations

import numpy as np

from experiments.common import outputs


def _overlay(ax, image, cam):
  shown = image[..., 0] if image.shape[-1] == 1 else image
  ax.imshow(shown, cmap="gray" if image.shape[-1] == 1 else None, vmin=0, vmax=1)
  if cam is not None:
    ax.imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
  ax.set_xticks([])
  ax.set_yticks([])


def save_grid(path: str, images: np.ndarray, rows: dict[str, dict[str, np.ndarray]]) -> None:
  """Per image and row (e.g. Gaussian, Laplace): the input, then its map at each column."""
  plt = outputs.pyplot()
  columns = max(len(r) for r in rows.values()) + 1
  figure, axes = plt.subplots(len(images) * len(rows), columns,
                              figsize=(1.6 * columns, 1.7 * len(images) * len(rows)), squeeze=False)
  for i, image in enumerate(images):
    for r, (row_name, maps) in enumerate(rows.items()):
      line = axes[i * len(rows) + r]
      _overlay(line[0], image, None)
      line[0].set_ylabel(row_name, fontsize=7)
      for c, (label, cams) in enumerate(maps.items(), start=1):
        _overlay(line[c], image, cams[i])
        line[c].set_title(label, fontsize=7)
      for c in range(len(maps) + 1, columns):
        line[c].axis("off")
  figure.tight_layout()
  outputs.save_figure(figure, path, dpi=110)


def save_line_plot(path: str, xlabel: str, ylabel: str, series: dict, *, logx=False) -> None:
  """One line per `series` entry, name -> (xs, ys)."""
  plt = outputs.pyplot()
  figure, ax = plt.subplots(figsize=(4.8, 3.4))
  for name, (xs, ys) in series.items():
    ax.plot(xs, ys, marker="o", label=name)
  if logx:
    ax.set_xscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  figure.tight_layout()
  outputs.save_figure(figure, path, dpi=110)
