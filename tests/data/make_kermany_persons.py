"""A chest X-ray folder with several images per person, in Kermany's naming, built from
PneumoniaMNIST (no such public set is in ../shared/data).

  python tests/data/make_kermany_persons.py --data_dir=../shared/data --out=/tmp/kermany_persons

What it is, honestly: each training image of `medmnist/pneumoniamnist_balanced.npz` becomes one
person; the person gets 1 to 4 records (probabilities 0.4, 0.3, 0.2, 0.1, from a public seed):
the image itself and copies shifted by up to 2 pixels with brightness changed by up to 5%, a
stand-in for follow-up X-rays of one patient (real follow-ups differ more). Files are named
`train/PNEUMONIA/person<id>_bacteria_<n>.jpeg` and `train/NORMAL/person<id>_normal_<n>.jpeg` (the
Kermany PNEUMONIA form; NORMAL files named the same way as if renamed from a verified patient
list). Test images are one per person (the test split is not trained on). The person ids are
true by construction: every record of person i derives from image i.
"""

import argparse
import pathlib

import numpy as np
from PIL import Image

PROBABILITIES = (0.4, 0.3, 0.2, 0.1)  # 1, 2, 3 or 4 records


def follow_up(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  dy, dx = rng.integers(-2, 3, size=2)
  shifted = np.roll(image, (dy, dx), axis=(0, 1))
  return np.clip(shifted * rng.uniform(0.95, 1.05), 0, 255).astype(np.uint8)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--data_dir", default="../shared/data")
  parser.add_argument("--out", required=True)
  parser.add_argument("--seed", type=int, default=0)  # public: the set's construction
  args = parser.parse_args()
  rng = np.random.default_rng(args.seed)
  with np.load(pathlib.Path(args.data_dir) / "medmnist/pneumoniamnist_balanced.npz") as f:
    splits = {s: (f[f"{s}_images"], f[f"{s}_labels"].reshape(-1)) for s in ("train", "test")}
  out = pathlib.Path(args.out)
  counts = []
  for split, (images, labels) in splits.items():
    for cls in ("NORMAL", "PNEUMONIA"):
      (out / split / cls).mkdir(parents=True, exist_ok=True)
    offset = 0 if split == "train" else 100_000  # test persons are other persons
    for i, (image, label) in enumerate(zip(images, labels)):
      person = offset + i
      records = 1 if split == "test" else 1 + rng.choice(4, p=PROBABILITIES)
      counts.append(records) if split == "train" else None
      cls, kind = ("PNEUMONIA", "bacteria") if label == 1 else ("NORMAL", "normal")
      for n in range(records):
        pixels = image if n == 0 else follow_up(image, rng)
        Image.fromarray(pixels).save(out / split / cls / f"person{person}_{kind}_{n}.jpeg",
                                     quality=95)
  print(f"{len(counts)} training persons, {sum(counts)} training records "
        f"({np.bincount(counts)[1:].tolist()} persons with 1..4 records); "
        f"{len(splits['test'][1])} test images -> {out}")


if __name__ == "__main__":
  main()
