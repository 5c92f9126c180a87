"""The classify study's figures: the local-DP perturbation grid and the accuracy curves."""

import jax
import numpy as np
import PIL.Image

from experiments.classify import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_perturbation_grid_is_a_valid_png(tmp_path):
  batch = np.random.default_rng(7).uniform(size=(3, 8, 8, 1)).astype(np.float32)
  path = plots.save_perturbation_grid(tmp_path / "grid.png", batch, [1.0, 2.0, 4.0],
                                      jax.random.key(8))
  with open(path, "rb") as f:
    assert f.read(8) == PNG_MAGIC
  with PIL.Image.open(path) as image:
    image.verify()
  with PIL.Image.open(path) as image:
    width, height = image.size
    pixels = np.asarray(image.convert("L"))
  assert width > height > 100 and pixels.std() > 10  # 4 columns, 3 rows, not blank


def test_accuracy_plots_one_panel_per_dataset(tmp_path):
  def row(run, epsilon, history):
    return {"run": run, "dataset": run.split("/")[0], "epsilon": epsilon, "test_accuracy": 0.7,
            "history": [{"epoch": e, "epsilon": eps, "test_accuracy": a} for e, eps, a in history]}
  rows = [row("a/original", "inf", [(1, "inf", 0.6), (2, "inf", 0.7)]),
          row("a/dpsgd_gaussian_eps8", 7.9, [(1, 5.0, 0.5), (2, 7.9, 0.6)]),
          row("b/original", "inf", [(1, "inf", 0.4)])]
  paths = plots.plot_accuracy(rows, str(tmp_path))
  assert [p.rsplit("/", 1)[1] for p in paths] == ["accuracy_vs_epoch.png",
                                                  "accuracy_vs_epsilon.png"]
  for path in paths:
    with PIL.Image.open(path) as image:
      assert image.size[0] > 1.5 * image.size[1]  # two panels side by side
