"""Extra test sets built from data already on the machine, in the MedMNIST .npz layout, so the
transfer recipe can be checked on sets it was not chosen on (`--config.dataset=npz:FILE`).

  python -m experiments.classify.make_sets --out=runs/sets

digits_binary.npz: scikit-learn's 8x8 digits (1,797 images, bundled with scikit-learn), label 1
for digits 5-9 and 0 for 0-4; a public split by a fixed permutation (80% train, 20% test, no
validation split: the transfer study carves one from train).
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags


def digits_binary(seed: int = 0) -> dict[str, np.ndarray]:
  from sklearn import datasets  # pylint: disable=import-outside-toplevel
  digits = datasets.load_digits()
  images = np.round(digits.images / 16.0 * 255.0).astype(np.uint8)  # 0-16 grey levels -> uint8
  labels = (digits.target >= 5).astype(np.int64)[:, None]
  order = np.random.default_rng(seed).permutation(len(labels))
  cut = int(0.8 * len(order))
  train, test = order[:cut], order[cut:]
  return {"train_images": images[train], "train_labels": labels[train],
          "test_images": images[test], "test_labels": labels[test]}


def write_sets(out: str) -> list[str]:
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, "digits_binary.npz")
  np.savez_compressed(path, **digits_binary())
  return [path]


def main(_):
  for path in write_sets(flags.FLAGS.out):
    print(path)


if __name__ == "__main__":
  flags.DEFINE_string("out", "runs/sets", "folder for the .npz files")
  app.run(main)
