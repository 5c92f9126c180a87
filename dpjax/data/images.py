"""Image classification data for the DP studies, one array layout whatever the source.

Every loader returns an `ImageDataset` of host NumPy arrays: images float32 NHWC scaled to
[0, 1] (as the studies did), labels int32 of shape (N,). Batches go to the device later, in the
training loop, so a dataset never has to fit in accelerator memory.

Sources: MedMNIST `.npz` files, an image folder `split/class/*.png|jpg` or a tar of one, the
Kaggle layouts of APTOS and chest X-ray pneumonia, tensorflow-datasets prepared in a local
`data_dir` (read without TensorFlow), and scikit-learn's digits as a file-free fallback.
`load_image_dataset` picks one by name.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import io
import logging
import os
import pathlib
import re
import struct
import tarfile
from collections.abc import Callable, Sequence

import numpy as np

from dpjax.data import paths

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Folder names accepted as splits; Kaggle's chest X-ray set uses "val", tfds "validation".
_SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "valid": "val",
                  "test": "test"}
APTOS_NUM_CLASSES = 5  # diabetic retinopathy grades 0 (none) to 4 (proliferative)
CHEST_XRAY_CLASSES = ("NORMAL", "PNEUMONIA")
_THREADED_DECODE_MIN_BYTES = 64 * 1024

# Files looked for under the data directory, in order, for each named dataset.
_NAMED_FILES = {
    "pneumoniamnist": ("medmnist/pneumoniamnist_balanced.npz", "medmnist/pneumoniamnist.npz",
                       "pneumoniamnist_balanced.npz", "pneumoniamnist.npz"),
    "retinamnist": ("medmnist/retinamnist.npz", "retinamnist.npz"),
    "cifar10_folder": ("cifar10/cifar10-jpeg.tar.gz", "cifar10-jpeg.tar.gz"),
}
_FILE_FREE = ("digits",)
_PREFIXES = ("tfds:", "folder:", "aptos:", "chest_xray:", "npz:")

Size = int | tuple[int, int]


@dataclasses.dataclass(frozen=True)
class ImageDataset:
  """Train/test (and optional validation) images, float32 NHWC in [0, 1], int32 labels."""
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  name: str
  val_images: np.ndarray | None = None
  val_labels: np.ndarray | None = None
  class_names: tuple[str, ...] = ()
  # The person of each training record, for per-person DP (`dpjax.user_level`); None when the
  # source names no persons.
  train_ids: np.ndarray | None = None

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train_images.shape[1:])

  def splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The splits present, as name -> (images, labels)."""
    out = {"train": (self.train_images, self.train_labels)}
    if self.val_images is not None:
      out["val"] = (self.val_images, self.val_labels)
    out["test"] = (self.test_images, self.test_labels)
    return out

  def summary(self) -> str:
    sizes = ", ".join(f"{split} {len(labels)}" for split, (_, labels) in self.splits().items())
    return (f"{self.name}: {sizes}; images {'x'.join(map(str, self.image_shape))}; "
            f"{self.num_classes} classes")


# ----------------------------------------------------------------------------- array helpers


def to_unit_float(images: np.ndarray) -> np.ndarray:
  """Integer pixels divided by their dtype's maximum (uint8 -> /255); floats kept as float32."""
  images = np.asarray(images)
  if np.issubdtype(images.dtype, np.integer):
    scaled = images.astype(np.float32)
    return np.divide(scaled, np.float32(np.iinfo(images.dtype).max), out=scaled)
  if images.dtype == np.bool_:
    return images.astype(np.float32)
  return images.astype(np.float32, copy=False)


def _with_channel_axis(images: np.ndarray, source: str) -> np.ndarray:
  if images.ndim == 3:  # grey (N, H, W), as in PneumoniaMNIST
    return images[..., None]
  if images.ndim == 4:
    return images
  raise ValueError(f"{source}: images must be (N, H, W) or (N, H, W, C), got shape {images.shape}")


def _flat_labels(labels: np.ndarray, source: str) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim == 2 and labels.shape[1] == 1:  # MedMNIST stores (N, 1)
    labels = labels[:, 0]
  if labels.ndim != 1:
    raise ValueError(f"{source}: labels must be (N,) or (N, 1) class indices, got shape "
                     f"{labels.shape} (multi-label data is not supported)")
  return labels.astype(np.int32)


def resize_images(images: np.ndarray, size: Size, *, chunk: int = 1024) -> np.ndarray:
  """Bilinear, antialiased resize of float NHWC images to `size` (int for square, or (h, w))."""
  import jax  # pylint: disable=g-import-not-at-top  (keeps `import dpjax.data.images` light)
  height, width = _size_pair(size)
  if images.shape[1:3] == (height, width):
    return images
  resize = jax.jit(lambda x: jax.image.resize(
      x, (x.shape[0], height, width, x.shape[3]), method="linear", antialias=True))
  parts = [np.asarray(resize(images[start:start + chunk]))
           for start in range(0, len(images), chunk)]
  # Linear weights are convex, so only float rounding can leave [0, 1].
  return np.clip(np.concatenate(parts), 0.0, 1.0).astype(np.float32)


def _size_pair(size: Size) -> tuple[int, int]:
  height, width = (size, size) if isinstance(size, int) else tuple(size)
  if height < 1 or width < 1:
    raise ValueError(f"resize must be a positive size, got {size!r}")
  return int(height), int(width)


def _class_rng(entropy: Sequence[int], label) -> np.random.Generator:
  """An RNG of its own for one class: `default_rng([*entropy, label])`.

  One generator per class (not one shared by all classes) makes class selection 1-stable:
  adding or removing a record of class c changes only class c's draws, never another class's
  (a shared generator would shift every later class's draws by however many numbers class c
  consumed).
  """
  return np.random.default_rng([*map(int, entropy), int(label) & 0xFFFFFFFF])


def _indices_per_class(labels: np.ndarray, max_per_class: int | None,
                       entropy: Sequence[int]) -> np.ndarray:
  """Sorted indices keeping at most `max_per_class` random examples of each class.

  Class c's draw uses its own RNG `default_rng([*entropy, c])` (see `_class_rng`), so the
  records kept of class c depend only on class c's records (in their order).
  """
  if max_per_class is None:
    return np.arange(len(labels))
  if max_per_class < 1:
    raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
  kept = []
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    if len(members) > max_per_class:
      members = _class_rng(entropy, label).choice(members, max_per_class, replace=False)
    kept.append(members)
  return np.sort(np.concatenate(kept)) if kept else np.arange(0)


def _stratified_holdout(labels: np.ndarray, fraction: float,
                        seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train_indices, test_indices): `fraction` of each class held out, chosen by `seed`.

  Each class is shuffled by its own RNG (`_class_rng([seed], c)`), so the split of one class
  does not depend on the other classes' records.
  """
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"test_fraction must be in (0, 1), got {fraction}")
  train, test = [], []
  for label in np.unique(labels):
    members = _class_rng([seed], label).permutation(np.flatnonzero(labels == label))
    num_test = int(round(fraction * len(members)))
    if len(members) >= 2:  # every class with two examples appears on both sides
      num_test = min(max(num_test, 1), len(members) - 1)
    test.append(members[:num_test])
    train.append(members[num_test:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _subsample_splits(dataset: ImageDataset, max_per_class: int | None,
                      seed: int) -> ImageDataset:
  if max_per_class is None:
    return dataset
  changes = {}
  for offset, (split, (images, labels)) in enumerate(dataset.splits().items()):
    keep = _indices_per_class(labels, max_per_class, (seed, offset))
    changes[f"{split}_images"], changes[f"{split}_labels"] = images[keep], labels[keep]
    if split == "train" and dataset.train_ids is not None:
      changes["train_ids"] = dataset.train_ids[keep]
  return dataclasses.replace(dataset, **changes)


def _resize_splits(dataset: ImageDataset, size: Size | None) -> ImageDataset:
  if size is None:
    return dataset
  changes = {f"{split}_images": resize_images(images, size)
             for split, (images, _) in dataset.splits().items()}
  return dataclasses.replace(dataset, **changes)


def validate_image_dataset(dataset: ImageDataset) -> ImageDataset:
  """Raises ValueError naming the split and the problem; returns `dataset` when it is sound.

  Checks: non-empty splits, NHWC float32 images of one shape, finite pixels in [0, 1], 1-D
  integer labels of matching length in [0, num_classes).
  """
  where = f"dataset {dataset.name!r}"
  if dataset.num_classes < 2:
    raise ValueError(f"{where}: num_classes is {dataset.num_classes}; classification needs >= 2")
  if (dataset.val_images is None) != (dataset.val_labels is None):
    raise ValueError(f"{where}: val_images and val_labels must be given together")
  shape = None
  for split, (images, labels) in dataset.splits().items():
    at = f"{where}, split {split!r}"
    if images.ndim != 4:
      raise ValueError(f"{at}: images must be NHWC (4-D), got shape {images.shape}")
    if images.dtype != np.float32:
      raise ValueError(f"{at}: images must be float32, got {images.dtype}")
    if len(images) == 0:
      raise ValueError(f"{at}: no images (check the data path or max_per_class)")
    if labels.ndim != 1 or len(labels) != len(images):
      raise ValueError(f"{at}: labels shape {labels.shape} does not match {len(images)} images")
    if not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(f"{at}: labels must be integers, got {labels.dtype}")
    if shape is not None and images.shape[1:] != shape:
      raise ValueError(f"{at}: image shape {images.shape[1:]} differs from train's {shape}; "
                       "pass resize=N")
    shape = images.shape[1:]
    finite = np.isfinite(images)
    if not finite.all():
      bad = np.flatnonzero(~finite.reshape(len(images), -1).all(axis=1))
      raise ValueError(f"{at}: {len(bad)} images contain NaN or Inf pixels "
                       f"(first at index {bad[0]})")
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
      raise ValueError(f"{at}: pixels span [{low:g}, {high:g}], expected [0, 1] "
                       "(integer images should be divided by 255)")
    out_of_range = (labels < 0) | (labels >= dataset.num_classes)
    if out_of_range.any():
      raise ValueError(f"{at}: {int(out_of_range.sum())} labels outside [0, "
                       f"{dataset.num_classes}), e.g. {np.unique(labels[out_of_range])[:5]}")
  if dataset.train_ids is not None:
    ids = np.asarray(dataset.train_ids)
    if ids.shape != dataset.train_labels.shape or not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f"{where}: train_ids must be integers, one per training image "
                       f"({dataset.train_labels.shape}), got {ids.dtype} {ids.shape}")
  return dataset


# ------------------------------------------------------------------------------ decoding


def _decode_image(data: bytes, size: Size | None, channels: int | None) -> np.ndarray:
  """PNG/JPEG bytes -> uint8 (H, W) grey or (H, W, 3) colour, optionally resized with PIL."""
  import PIL.Image  # pylint: disable=g-import-not-at-top
  with PIL.Image.open(io.BytesIO(data)) as image:
    image.load()
    if image.mode.startswith("I;16"):  # 16-bit grey PNGs (some X-ray sets): keep the top byte
      image = PIL.Image.fromarray((np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8))
    if channels == 1 or (channels is None and image.mode in ("L", "1", "I", "F")):
      image = image.convert("L")
    else:
      image = image.convert("RGB")
    if size is not None:
      height, width = _size_pair(size)
      image = image.resize((width, height), PIL.Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def _decode_all(blobs: Sequence[bytes], size: Size | None, channels: int | None,
                source: str) -> np.ndarray:
  """Decodes and stacks to uint8 NHWC; large files in threads (PIL releases the GIL)."""
  decode = lambda blob: _decode_image(blob, size, channels)
  # Threads only pay off for large files: on 32x32 JPEGs, GIL hand-offs made them 2x slower.
  if blobs and sum(map(len, blobs)) / len(blobs) > _THREADED_DECODE_MIN_BYTES:
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
      return _stack_uint8(list(pool.map(decode, blobs)), source)
  return _stack_uint8([decode(blob) for blob in blobs], source)


def _stack_uint8(arrays: list[np.ndarray], source: str) -> np.ndarray:
  if not arrays:
    raise ValueError(f"{source}: no images found")
  sizes = sorted({array.shape[:2] for array in arrays})
  if len(sizes) > 1:
    raise ValueError(f"{source}: images have different sizes ({sizes[0]} ... {sizes[-1]}); "
                     "pass resize=N (--resize=N) to bring them to one size")
  # Mixed grey and colour files (common in the chest X-ray set): promote grey to RGB.
  if any(array.ndim == 3 for array in arrays):
    arrays = [np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a for a in arrays]
  return _with_channel_axis(np.stack(arrays), source)


# ------------------------------------------------------------------------------ person ids


# Kermany's PNEUMONIA files are person<patient>_<bacteria|virus>_<image>.jpeg; "normal" admits
# NORMAL files renamed the same way from a verified patient list.
_KERMANY_PERSON = re.compile(r"^person(\d+)_(?:bacteria|virus|normal)_\d+\.jpe?g$",
                             re.IGNORECASE)


def kermany_person_id(file_name: str) -> int:
  """The patient number in a Kermany chest X-ray file name: `person123_bacteria_456.jpeg` -> 123.

  Only PNEUMONIA files name a patient (`person<patient>_<bacteria|virus>_<image>.jpeg`; the same
  patient number under bacteria and virus is taken as one person, which can only merge persons,
  never split one). NORMAL files are `IM-0001-0001.jpeg` or `NORMAL2-IM-0007-0001.jpeg`: the
  dataset documents no patient in them (the first number may or may not be a patient), and a
  wrong guess that splits one patient over two ids silently breaks the per-person guarantee, so
  they are refused.
  """
  name = os.path.basename(file_name)
  match = _KERMANY_PERSON.match(name)
  if match is None:
    raise ValueError(
        f"{file_name!r} names no person: only Kermany PNEUMONIA files "
        "(person<patient>_<bacteria|virus>_<image>.jpeg) carry a patient number; NORMAL files "
        "(IM-XXXX-XXXX.jpeg, NORMAL2-IM-...) document none, and guessing could split one "
        "patient into two persons. Give the ids explicitly (an npz with a train_ids array), or "
        "rename the files person<patient>_normal_<n>.jpeg from a verified patient list.")
  return int(match.group(1))


def ids_from_names(file_names: Sequence[str],
                   person_id: Callable[[str], int] = None) -> np.ndarray:
  """Person ids of file names (Kermany's by default); raises naming which state no person."""
  person_id = person_id or kermany_person_id
  ids, unnamed = [], []
  for name in file_names:
    try:
      ids.append(person_id(name))
    except ValueError:
      unnamed.append(os.path.basename(name))
  if unnamed:
    raise ValueError(
        f"{len(unnamed)} of {len(file_names)} files name no person (e.g. {unnamed[:3]}): only "
        "Kermany PNEUMONIA files (person<patient>_<bacteria|virus>_<image>.jpeg) carry a "
        "patient number, NORMAL files (IM-XXXX-XXXX.jpeg) document none and are not guessed. "
        "Give the ids explicitly (an npz with a train_ids array), or rename the files "
        "person<patient>_normal_<n>.jpeg from a verified patient list.")
  return np.asarray(ids, np.int64)


# ------------------------------------------------------------------------------- loaders


def load_npz(path: str | os.PathLike, *, name: str | None = None) -> ImageDataset:
  """A MedMNIST-layout `.npz`: train_images/train_labels, test_*, optional val_*.

  An optional `train_ids` array (one integer per training image) names the person of each
  record, for per-person DP; `ids` is accepted for it too.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"image .npz file not found: {path}; pass --config.data_dir=DIR")
  with np.load(path) as arrays:
    missing = [key for key in ("train_images", "train_labels", "test_images", "test_labels")
               if key not in arrays.files]
    if missing:
      raise ValueError(f"{path}: missing keys {missing}; found {sorted(arrays.files)} "
                       "(expected the MedMNIST layout train_images, train_labels, ...)")
    splits = {}
    for split in ("train", "val", "test"):
      if f"{split}_images" in arrays.files:
        splits[f"{split}_images"] = to_unit_float(
            _with_channel_axis(arrays[f"{split}_images"], str(path)))
        splits[f"{split}_labels"] = _flat_labels(arrays[f"{split}_labels"], str(path))
    for key in ("train_ids", "ids"):
      if key in arrays.files:
        splits["train_ids"] = np.asarray(arrays[key]).reshape(-1)
        break
  num_classes = 1 + max(int(labels.max(initial=0))
                        for key, labels in splits.items() if key.endswith("labels"))
  return ImageDataset(num_classes=num_classes, name=name or path.stem, **splits)


@dataclasses.dataclass(frozen=True)
class _ImageFile:
  split: str
  class_name: str
  key: str  # path inside the folder or archive: sorts files deterministically
  read: Callable[[], bytes]


def _split_and_class(parts: Sequence[str]) -> tuple[int, str, str] | None:
  """(position of the split folder, split, class) for `.../split/class/.../file.png`."""
  if any(part.startswith(".") or part == "__MACOSX" for part in parts):
    return None
  if not parts[-1].lower().endswith(IMAGE_SUFFIXES):
    return None
  for position, part in enumerate(parts[:-2]):
    split = _SPLIT_ALIASES.get(part.lower())
    if split:
      return position, split, parts[position + 1]
  return None


def _list_image_files(root: pathlib.Path) -> list[_ImageFile]:
  """Image files under a folder or inside a tar archive, each with its split and class."""
  found = []  # (prefix before the split folder, _ImageFile)
  if root.is_dir():
    for directory, _, names in os.walk(root):
      for file_name in names:
        full = pathlib.Path(directory, file_name)
        parts = full.relative_to(root).parts
        if (parsed := _split_and_class(parts)) is not None:
          position, split, class_name = parsed
          found.append((parts[:position], _ImageFile(split, class_name, "/".join(parts),
                                                     full.read_bytes)))
  elif tarfile.is_tarfile(root):
    # Streamed once: gzip allows no cheap random access, and JPEG bytes are small next to the
    # decoded arrays. For very large archives, extract them and pass the folder instead.
    with tarfile.open(root, mode="r:*") as archive:
      for member in archive:
        parts = tuple(part for part in member.name.split("/") if part not in ("", "."))
        if member.isfile() and parts and (parsed := _split_and_class(parts)) is not None:
          position, split, class_name = parsed
          blob = archive.extractfile(member).read()
          found.append((parts[:position], _ImageFile(split, class_name, "/".join(parts),
                                                     lambda blob=blob: blob)))
  else:
    raise FileNotFoundError(f"image folder or .tar(.gz) not found: {root}; pass an existing "
                            "path (layout split/class/*.png) or --config.data_dir=DIR")
  prefixes = sorted({prefix for prefix, _ in found}, key=lambda p: (len(p), p))
  if len(prefixes) > 1:  # e.g. Kaggle's chest_xray.zip holds the same images twice
    logging.warning("%s holds several image trees %s; using %s", root,
                    ["/".join(p) or "." for p in prefixes], "/".join(prefixes[0]) or ".")
  files = [file for prefix, file in found if prefix == prefixes[0]] if prefixes else []
  return sorted(files, key=lambda file: (file.split, file.key))


def load_image_folder(root: str | os.PathLike, *, resize: Size | None = None,
                      max_per_class: int | None = None, seed: int = 0,
                      test_fraction: float = 0.2, channels: int | None = None,
                      name: str | None = None,
                      person_id: Callable[[str], int] | None = None) -> ImageDataset:
  """Images laid out as `root/{train,val,test}/<class>/*.{png,jpg,jpeg}`, or a tar(.gz) of that.

  Classes are the train folder names sorted alphabetically. Without a test folder,
  `test_fraction` of each train class is held out (chosen by `seed`). `max_per_class` keeps a
  random subset of each class in each split before decoding, for quick runs. `channels` forces
  grey (1) or colour (3); by default colour unless every file is grey. `person_id(file name)`
  gives the person of each training image (`train_ids`); it raises on a name naming none.
  """
  root = pathlib.Path(root).expanduser()
  source = str(root)
  files = _list_image_files(root)
  by_split = {split: [f for f in files if f.split == split] for split in ("train", "val", "test")}
  if not by_split["train"]:
    raise ValueError(f"{source}: no training images found; expected "
                     "train/<class>/*.png|jpg (and optionally test/<class>/, val/<class>/)")
  class_names = tuple(sorted({f.class_name for f in by_split["train"]}))
  class_index = {class_name: index for index, class_name in enumerate(class_names)}
  for split in ("val", "test"):
    unknown = sorted({f.class_name for f in by_split[split]} - set(class_names))
    if unknown:
      raise ValueError(f"{source}: {split} classes {unknown} have no training folder "
                       f"(train classes: {list(class_names)})")
  labels_of = lambda chosen: np.array([class_index[f.class_name] for f in chosen], np.int32)
  if not by_split["test"]:
    train_idx, test_idx = _stratified_holdout(labels_of(by_split["train"]), test_fraction, seed)
    by_split["test"] = [by_split["train"][i] for i in test_idx]
    by_split["train"] = [by_split["train"][i] for i in train_idx]

  arrays = {}
  for offset, split in enumerate(("train", "val", "test")):
    chosen = by_split[split]
    if not chosen:
      continue
    keep = _indices_per_class(labels_of(chosen), max_per_class, (seed, offset))
    chosen = [chosen[i] for i in keep]
    pixels = _decode_all([f.read() for f in chosen], resize, channels, f"{source} ({split})")
    arrays[f"{split}_images"] = to_unit_float(pixels)
    arrays[f"{split}_labels"] = labels_of(chosen)
    if split == "train" and person_id is not None:
      arrays["train_ids"] = ids_from_names([f.key for f in chosen], person_id)
  _check_same_channels(arrays, source)
  return ImageDataset(num_classes=len(class_names), name=name or root.name,
                      class_names=class_names, **arrays)


def _check_same_channels(arrays: dict[str, np.ndarray], source: str) -> None:
  shapes = {key: value.shape[1:] for key, value in arrays.items() if key.endswith("_images")}
  if len(set(shapes.values())) > 1:
    raise ValueError(f"{source}: splits decode to different image shapes {shapes}; "
                     "pass resize=N and channels=1 or 3")


def load_chest_xray(root: str | os.PathLike, *, resize: Size | None = None,
                    max_per_class: int | None = None, seed: int = 0,
                    channels: int = 1, person_ids: bool = False) -> ImageDataset:
  """Kaggle's chest X-ray pneumonia layout: {train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg.

  The X-rays vary in size, so real data needs `resize`; they are read as grey by default.
  `person_ids`: read each training image's patient from its Kermany file name
  (`kermany_person_id`); refused when a file (e.g. a NORMAL one) names no patient.
  """
  dataset = load_image_folder(root, resize=resize, max_per_class=max_per_class, seed=seed,
                              channels=channels, name="chest_xray",
                              person_id=kermany_person_id if person_ids else None)
  if dataset.class_names != CHEST_XRAY_CLASSES:
    raise ValueError(f"{root}: chest X-ray classes must be {list(CHEST_XRAY_CLASSES)}, found "
                     f"{list(dataset.class_names)}; use folder:PATH for other class layouts")
  return dataset


def load_aptos(root: str | os.PathLike, *, resize: Size | None = None,
               max_per_class: int | None = None, seed: int = 0,
               test_fraction: float = 0.2) -> ImageDataset:
  """Kaggle APTOS 2019 layout: train.csv (id_code, diagnosis 0-4) and train_images/<id>.png.

  Kaggle's test.csv has no labels, so `test_fraction` of each grade is held out of train.csv.
  """
  root = pathlib.Path(root).expanduser()
  csv_path, image_dir = root / "train.csv", root / "train_images"
  if not csv_path.is_file():
    raise FileNotFoundError(f"APTOS labels not found: {csv_path}; pass the folder holding "
                            "train.csv and train_images/ (or --config.data_dir=DIR)")
  with open(csv_path, newline="") as handle:
    rows = list(csv.DictReader(handle))
  if not rows or not {"id_code", "diagnosis"} <= set(rows[0]):
    raise ValueError(f"{csv_path}: needs columns id_code and diagnosis, found "
                     f"{list(rows[0]) if rows else 'no rows'}")
  paths_found, missing = [], []
  for row in rows:
    candidates = [image_dir / (row["id_code"] + suffix) for suffix in IMAGE_SUFFIXES]
    existing = next((path for path in candidates if path.is_file()), None)
    (paths_found.append(existing) if existing else missing.append(row["id_code"]))
  if missing:
    raise FileNotFoundError(f"{image_dir}: no image for {len(missing)} ids in train.csv, e.g. "
                            f"{missing[:3]} (looked for {', '.join(IMAGE_SUFFIXES)})")
  labels = np.array([int(row["diagnosis"]) for row in rows], np.int32)
  train_idx, test_idx = _stratified_holdout(labels, test_fraction, seed)
  arrays = {}
  for offset, (split, indices) in enumerate((("train", train_idx), ("test", test_idx))):
    keep = indices[_indices_per_class(labels[indices], max_per_class,
                                      (seed, offset))]
    blobs = [paths_found[i].read_bytes() for i in keep]
    arrays[f"{split}_images"] = to_unit_float(_decode_all(blobs, resize, 3, f"{root} ({split})"))
    arrays[f"{split}_labels"] = labels[keep]
  return ImageDataset(num_classes=APTOS_NUM_CLASSES, name="aptos",
                      class_names=("0", "1", "2", "3", "4"), **arrays)


def load_digits(*, seed: int = 0, test_fraction: float = 0.2) -> ImageDataset:
  """scikit-learn's embedded handwritten digits: 1,797 real 8x8 grey images, 10 classes."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = (digits.images.astype(np.float32) / 16.0)[..., None]  # pixel counts run 0..16
  labels = digits.target.astype(np.int32)
  train_idx, test_idx = _stratified_holdout(labels, test_fraction, seed)
  return ImageDataset(train_images=images[train_idx], train_labels=labels[train_idx],
                      test_images=images[test_idx], test_labels=labels[test_idx],
                      num_classes=10, name="digits", class_names=tuple(map(str, range(10))))


# ------------------------------------------------------------------- tensorflow-datasets


def _tfrecord_payloads(path: str | os.PathLike) -> list[bytes]:
  """Records of a TFRecord file (uint64 length, CRC, bytes, CRC), read without TensorFlow.

  CRCs are not verified: the files were written by tfds on the user's machine.
  """
  payloads = []
  with open(path, "rb") as handle:
    while header := handle.read(12):
      if len(header) < 12:
        raise ValueError(f"{path}: truncated TFRecord header; re-prepare the dataset")
      (length,) = struct.unpack("<Q", header[:8])
      payload = handle.read(length)
      if len(payload) < length or len(handle.read(4)) < 4:
        raise ValueError(f"{path}: truncated TFRecord; re-prepare the dataset")
      payloads.append(payload)
  return payloads


def _tfds_records(builder, split: str) -> list[bytes]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  file_format = builder.info.file_format.value if builder.info.file_format else "tfrecord"
  if file_format == "array_record":
    source = builder.as_data_source(
        split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    return list(source.__getitems__(range(len(source))))
  if file_format == "tfrecord":
    return [payload for path in builder.info.splits[split].filepaths
            for payload in _tfrecord_payloads(path)]
  raise ValueError(f"tfds dataset {builder.info.full_name} is stored as {file_format}; dpjax "
                   "reads array_record or tfrecord (or pip install tensorflow and convert)")


def load_tfds(name: str, data_dir: str | os.PathLike | None = None, *,
              resize: Size | None = None, max_per_class: int | None = None, seed: int = 0,
              test_fraction: float = 0.2, image_key: str | None = None,
              label_key: str | None = None) -> ImageDataset:
  """A tensorflow-datasets image dataset already prepared under `data_dir`, read without TF.

  Works for datasets prepared in the array_record or tfrecord format (e.g. `cifar10`,
  `cats_vs_dogs`); nothing is downloaded. Images are decoded with PIL. Without a test split
  (cats_vs_dogs has only train), `test_fraction` of each class is held out.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  where = f"under {data_dir}" if data_dir else "in the default tfds folder (~/tensorflow_datasets)"
  how_to_prepare = (f"prepare it on a machine with internet (pip install tensorflow; "
                    f"tfds build {name} --data_dir=DIR) and pass --config.data_dir=DIR")
  try:
    builder = tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir))
  except tfds.core.registered.DatasetNotFoundError:
    raise FileNotFoundError(f"tfds dataset {name!r} not found {where}; {how_to_prepare}") from None
  if not pathlib.Path(builder.data_dir, "dataset_info.json").is_file():
    raise FileNotFoundError(f"tfds dataset {name!r} is not prepared {where} (no "
                            f"{builder.data_dir}/dataset_info.json); {how_to_prepare}")
  info = builder.info
  image_key, label_key = _tfds_keys(info, image_key, label_key)
  features = info.features
  # 8-bit PNG/JPEG bytes are decoded (and resized) by PIL like every other source; other
  # encodings (16-bit, float) go through tfds' own NumPy decoder.
  decode_pixels_ourselves = (isinstance(features[image_key], tfds.features.Image)
                             and features[image_key].np_dtype == np.uint8)
  decoders = {image_key: tfds.decode.SkipDecoding()} if decode_pixels_ourselves else None
  available = {_SPLIT_ALIASES.get(split, split): split for split in info.splits.keys()}
  if "train" not in available:
    raise ValueError(f"tfds dataset {name!r} has no train split (splits: {list(info.splits)})")

  def read_split(split: str) -> tuple[list, np.ndarray]:
    examples = [features.deserialize_example_np(record, decoders=decoders)
                for record in _tfds_records(builder, available[split])]
    return [example[image_key] for example in examples], np.array(
        [example[label_key] for example in examples], np.int32)

  raw = {split: read_split(split) for split in ("train", "val", "test") if split in available}
  if "test" not in raw:
    images, labels = raw["train"]
    train_idx, test_idx = _stratified_holdout(labels, test_fraction, seed)
    raw["train"] = ([images[i] for i in train_idx], labels[train_idx])
    raw["test"] = ([images[i] for i in test_idx], labels[test_idx])
  arrays = {}
  for offset, split in enumerate(("train", "val", "test")):
    if split not in raw:
      continue
    images, labels = raw[split]
    keep = _indices_per_class(labels, max_per_class, (seed, offset))
    source = f"tfds {name} ({split})"
    if decode_pixels_ourselves:
      pixels = _decode_all([images[i] for i in keep], resize, None, source)
    else:
      pixels = _with_channel_axis(np.stack([images[i] for i in keep]), source)
    arrays[f"{split}_images"] = to_unit_float(pixels)
    arrays[f"{split}_labels"] = labels[keep]
  _check_same_channels(arrays, f"tfds {name}")
  label_feature = features[label_key]
  class_names = tuple(getattr(label_feature, "names", None) or ())
  num_classes = getattr(label_feature, "num_classes", None) or 1 + max(
      int(arrays[f"{split}_labels"].max()) for split in raw)
  dataset = ImageDataset(num_classes=int(num_classes), name=f"tfds:{name}",
                         class_names=class_names, **arrays)
  return _resize_splits(dataset, resize) if not decode_pixels_ourselves else dataset


def _tfds_keys(info, image_key: str | None, label_key: str | None) -> tuple[str, str]:
  supervised = info.supervised_keys or ()
  image_key = image_key or (supervised[0] if len(supervised) == 2 else "image")
  label_key = label_key or (supervised[1] if len(supervised) == 2 else "label")
  for role, key in (("image", image_key), ("label", label_key)):
    if key not in info.features:
      raise ValueError(f"tfds dataset {info.full_name}: no {role} feature {key!r}; features are "
                       f"{list(info.features.keys())} (pass {role}_key=...)")
  return image_key, label_key


# ------------------------------------------------------------------------- one entry point


def dataset_names() -> list[str]:
  """Valid `load_image_dataset` names (prefixed forms take a path or tfds name after ':')."""
  return sorted(_NAMED_FILES) + list(_FILE_FREE) + [prefix + "..." for prefix in _PREFIXES]


def _named_file(name: str, data_dir: str | None) -> pathlib.Path:
  candidates = _NAMED_FILES[name]
  data_dir = data_dir or paths.default_data_dir()
  if not data_dir:
    raise FileNotFoundError(f"dataset {name!r} reads {candidates[0]} from a data directory: "
                            f"pass --config.data_dir=DIR or set {paths.ENV_VAR}")
  for candidate in candidates:
    path = pathlib.Path(data_dir).expanduser() / candidate
    if path.exists():
      return path
  raise FileNotFoundError(f"dataset {name!r}: file {pathlib.Path(data_dir) / candidates[0]} not "
                          f"found (also tried {list(candidates[1:])}); pass --config.data_dir=DIR "
                          f"holding it or set {paths.ENV_VAR}")


def _user_path(text: str, data_dir: str | None, what: str) -> pathlib.Path:
  path = pathlib.Path(text).expanduser()
  if not path.exists() and not path.is_absolute():
    base = data_dir or paths.default_data_dir()
    if base and (pathlib.Path(base) / path).exists():
      return pathlib.Path(base) / path
  if not path.exists():
    raise FileNotFoundError(f"{what} path not found: {text}; pass an existing path, or one "
                            "relative to --config.data_dir=DIR")
  return path


def load_image_dataset(name: str, data_dir: str | None = None, *, resize: Size | None = None,
                       max_per_class: int | None = None, seed: int = 0,
                       person_ids: bool = False) -> ImageDataset:
  """Loads, optionally resizes and subsamples, and validates an image dataset by name.

  Names: "pneumoniamnist", "retinamnist" (MedMNIST .npz under `data_dir`), "cifar10_folder"
  (cifar10/cifar10-jpeg.tar.gz under `data_dir`), "digits" (no files), and "tfds:NAME",
  "folder:PATH", "aptos:PATH", "chest_xray:PATH", "npz:PATH". `data_dir` defaults to
  `dpjax.data.paths.default_data_dir()` for files, and to tfds' own default for "tfds:".
  `max_per_class` keeps a random subset (by `seed`) of each class in every split.
  `person_ids`: the training images must name their persons (`train_ids`, for per-person DP):
  from Kermany file names for "chest_xray:", from a `train_ids` array for npz files.
  """
  kind, _, argument = name.partition(":")
  common = dict(resize=resize, max_per_class=max_per_class, seed=seed)
  if name in ("pneumoniamnist", "retinamnist"):
    dataset = load_npz(_named_file(name, data_dir), name=name)
  elif name == "cifar10_folder":
    dataset = load_image_folder(_named_file(name, data_dir), name=name, **common)
  elif name == "digits":
    dataset = load_digits(seed=seed)
  elif argument and kind == "tfds":
    dataset = load_tfds(argument, data_dir, **common)
  elif argument and kind == "folder":
    dataset = load_image_folder(_user_path(argument, data_dir, "image folder"), **common)
  elif argument and kind == "aptos":
    dataset = load_aptos(_user_path(argument, data_dir, "APTOS"), **common)
  elif argument and kind == "chest_xray":
    dataset = load_chest_xray(_user_path(argument, data_dir, "chest X-ray"),
                              person_ids=person_ids, **common)
  elif argument and kind == "npz":
    path = _user_path(argument, data_dir, "image .npz")
    dataset = load_npz(path, name=path.stem)
  else:
    raise ValueError(f"unknown image dataset {name!r}; valid names: {', '.join(dataset_names())}")
  if person_ids and dataset.train_ids is None:
    raise ValueError(f"dataset {name!r} names no persons: per-person DP needs "
                     "chest_xray:PATH with Kermany file names (person<patient>_...jpeg) or an "
                     "npz with a train_ids array; or set --config.records_per_person=0 for "
                     "per-record DP.")
  # File decoders already applied these two; on arrays they are cheap no-ops when unneeded.
  dataset = _resize_splits(_subsample_splits(dataset, max_per_class, seed), resize)
  return validate_image_dataset(dataset)
