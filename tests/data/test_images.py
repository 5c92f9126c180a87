"""Image loaders: each layout on a tiny fixture written here, plus the real files when present."""

import csv
import json
import pathlib
import struct
import tarfile

import numpy as np
import PIL.Image
import pytest

from dpjax.data import images


def _write_png(path: pathlib.Path, pixels: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  PIL.Image.fromarray(pixels).save(path)


def _random_pixels(rng, shape=(6, 6, 3)) -> np.ndarray:
  return rng.integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture
def image_folder(tmp_path):
  """root/{train,test}/{zebra,ant}/*.png with known pixels; returns (root, {split: [(class, px)]})."""
  rng = np.random.default_rng(0)
  root = tmp_path / "folder"
  written = {"train": [], "test": []}
  for split, per_class in (("train", 4), ("test", 2)):
    for class_name in ("zebra", "ant"):  # written unsorted: labels must follow sorted names
      for index in range(per_class):
        pixels = _random_pixels(rng)
        _write_png(root / split / class_name / f"{index:03d}.png", pixels)
        written[split].append((class_name, pixels))
  (root / "train" / "ant" / "notes.txt").write_text("not an image")
  return root, written


def _sorted_by_label_then_pixels(images_, labels):
  order = np.lexsort((images_.reshape(len(images_), -1).sum(axis=1), labels))
  return images_[order], labels[order]


def test_npz_layout_grey_gets_channel_axis_and_unit_scale(tmp_path):
  rng = np.random.default_rng(1)
  raw = {f"{split}_images": rng.integers(0, 256, (n, 5, 5), dtype=np.uint8)
         for split, n in (("train", 7), ("val", 2), ("test", 3))}
  raw |= {f"{split}_labels": rng.integers(0, 3, (n, 1), dtype=np.uint8)
          for split, n in (("train", 7), ("val", 2), ("test", 3))}
  raw["train_labels"][0, 0] = 2  # make sure the top class appears
  path = tmp_path / "tiny.npz"
  np.savez(path, **raw)

  dataset = images.load_image_dataset(f"npz:{path}")

  assert dataset.train_images.shape == (7, 5, 5, 1)
  assert dataset.train_images.dtype == np.float32 and dataset.train_labels.dtype == np.int32
  np.testing.assert_allclose(dataset.test_images[..., 0], raw["test_images"] / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(dataset.val_labels, raw["val_labels"][:, 0])
  assert dataset.num_classes == 3


def test_npz_missing_keys_are_named(tmp_path):
  path = tmp_path / "bad.npz"
  np.savez(path, train_images=np.zeros((2, 4, 4), np.uint8))
  with pytest.raises(ValueError, match="missing keys.*train_labels"):
    images.load_npz(path)


def test_folder_reads_exact_pixels_and_sorted_classes(image_folder):
  root, written = image_folder
  dataset = images.load_image_dataset(f"folder:{root}")

  assert dataset.class_names == ("ant", "zebra")
  for split, got_images, got_labels in (("train", dataset.train_images, dataset.train_labels),
                                        ("test", dataset.test_images, dataset.test_labels)):
    want_labels = np.array([0 if c == "ant" else 1 for c, _ in written[split]], np.int32)
    want_images = np.stack([p for _, p in written[split]]).astype(np.float32) / 255
    got = _sorted_by_label_then_pixels(got_images, got_labels)
    want = _sorted_by_label_then_pixels(want_images, want_labels)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)


def test_tar_gz_of_folder_equals_folder(image_folder, tmp_path):
  root, _ = image_folder
  archive = tmp_path / "images.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(root, arcname="some_prefix")  # archives often wrap the tree in one folder
  from_folder = images.load_image_folder(root)
  from_tar = images.load_image_folder(archive)
  np.testing.assert_array_equal(from_tar.train_images, from_folder.train_images)
  np.testing.assert_array_equal(from_tar.test_labels, from_folder.test_labels)
  assert from_tar.class_names == from_folder.class_names


def test_folder_max_per_class_is_seeded_subset(image_folder):
  root, _ = image_folder
  first = images.load_image_folder(root, max_per_class=2, seed=3)
  again = images.load_image_folder(root, max_per_class=2, seed=3)
  full = images.load_image_folder(root)
  assert np.bincount(first.train_labels).tolist() == [2, 2]
  np.testing.assert_array_equal(first.train_images, again.train_images)
  full_rows = {row.tobytes() for row in full.train_images}
  assert all(row.tobytes() in full_rows for row in first.train_images)


def _kept_ids_by_class(ids, labels, keep):
  return {int(c): sorted(ids[keep][labels[keep] == c].tolist()) for c in np.unique(labels)}


@pytest.mark.parametrize("added_class", [0, 1, 2])
def test_max_per_class_is_one_stable(added_class):
  """Adding one record of class c changes only class c's draw (the others keep their records)."""
  # Class 0 holds exactly max_per_class records, so one more makes it draw for the first
  # time: with one generator shared by all classes, that shifted every later class's draws.
  labels = np.random.default_rng(5).permutation(np.repeat([0, 1, 2], [10, 25, 40]))
  ids = np.arange(len(labels))  # record identities, to compare kept records across datasets
  base = _kept_ids_by_class(ids, labels, images._indices_per_class(labels, 10, (7, 0)))
  for position in (0, 37, len(labels)):  # the new record first, in the middle, last
    grown_labels = np.insert(labels, position, added_class)
    grown_ids = np.insert(ids, position, -1)
    grown = _kept_ids_by_class(grown_ids, grown_labels,
                               images._indices_per_class(grown_labels, 10, (7, 0)))
    for c in (0, 1, 2):
      if c != added_class:
        assert grown[c] == base[c], (position, c)
      assert len(grown[c]) == 10


def test_max_per_class_is_one_stable_through_the_loader(tmp_path):
  rng = np.random.default_rng(6)
  labels = rng.permutation(np.repeat([0, 1, 2], [5, 25, 30])).astype(np.uint8)  # class 0: 5
  pixels = rng.integers(0, 256, (60, 4, 4), dtype=np.uint8)
  pixels[:, 0, 0], pixels[:, 0, 1] = np.arange(60) % 256, np.arange(60) // 256  # unique rows
  def load(train_pixels, train_labels, name):
    path = tmp_path / f"{name}.npz"
    np.savez(path, train_images=train_pixels, train_labels=train_labels[:, None],
             test_images=pixels[:6], test_labels=labels[:6, None])
    dataset = images.load_image_dataset(f"npz:{path}", max_per_class=5, seed=2)
    return {c: sorted(row.tobytes() for row in dataset.train_images[dataset.train_labels == c])
            for c in range(3)}
  base = load(pixels, labels, "base")
  extra = np.full((1, 4, 4), 255, np.uint8)
  grown = load(np.concatenate([extra, pixels]), np.concatenate([[0], labels]).astype(np.uint8),
               "grown")
  assert grown[1] == base[1] and grown[2] == base[2]


def test_stratified_holdout_is_one_stable():
  rng = np.random.default_rng(8)
  labels = rng.integers(0, 4, 200).astype(np.int32)
  ids = np.arange(200)
  def split(labels_, ids_):
    train, test = images._stratified_holdout(labels_, 0.25, seed=1)
    return _kept_ids_by_class(ids_, labels_, test), _kept_ids_by_class(ids_, labels_, train)
  base_test, base_train = split(labels, ids)
  grown_test, grown_train = split(np.insert(labels, 3, 2), np.insert(ids, 3, 999))
  for c in (0, 1, 3):
    assert grown_test[c] == base_test[c] and grown_train[c] == base_train[c]


def test_folder_without_test_split_holds_out_each_class(tmp_path):
  rng = np.random.default_rng(2)
  for class_name in ("a", "b"):
    for index in range(10):
      _write_png(tmp_path / "train" / class_name / f"{index}.png", _random_pixels(rng))
  dataset = images.load_image_folder(tmp_path, seed=0, test_fraction=0.2)
  assert np.bincount(dataset.test_labels).tolist() == [2, 2]
  assert np.bincount(dataset.train_labels).tolist() == [8, 8]
  train_rows = {row.tobytes() for row in dataset.train_images}
  assert not any(row.tobytes() in train_rows for row in dataset.test_images)


def test_mixed_sizes_need_resize(tmp_path):
  rng = np.random.default_rng(3)
  _write_png(tmp_path / "train" / "a" / "0.png", _random_pixels(rng, (6, 6, 3)))
  _write_png(tmp_path / "train" / "b" / "0.png", _random_pixels(rng, (9, 7, 3)))
  _write_png(tmp_path / "test" / "a" / "0.png", _random_pixels(rng, (6, 6)))  # grey
  _write_png(tmp_path / "test" / "b" / "0.png", _random_pixels(rng, (5, 8, 3)))
  with pytest.raises(ValueError, match="resize"):
    images.load_image_folder(tmp_path)
  dataset = images.load_image_dataset(f"folder:{tmp_path}", resize=4)
  assert dataset.train_images.shape == (2, 4, 4, 3) and dataset.test_images.shape == (2, 4, 4, 3)


def test_chest_xray_layout_picks_one_tree_and_reads_grey(tmp_path):
  rng = np.random.default_rng(4)
  root = tmp_path / "kaggle"
  for tree in ("chest_xray", "chest_xray/chest_xray"):  # Kaggle's zip holds both
    for split, count in (("train", 3), ("val", 1), ("test", 2)):
      for class_name in ("NORMAL", "PNEUMONIA"):
        for index in range(count):
          path = root / tree / split / class_name / f"p{index}.jpeg"
          path.parent.mkdir(parents=True, exist_ok=True)
          size = (20 + index, 16 + 2 * index)
          PIL.Image.fromarray(_random_pixels(rng, size)).save(path, format="JPEG")
  (root / "__MACOSX" / "chest_xray" / "train" / "NORMAL").mkdir(parents=True)
  (root / "__MACOSX" / "chest_xray" / "train" / "NORMAL" / "._p0.jpeg").write_bytes(b"junk")

  dataset = images.load_image_dataset(f"chest_xray:{root}", resize=8)

  assert dataset.class_names == ("NORMAL", "PNEUMONIA")
  assert dataset.train_images.shape == (6, 8, 8, 1)
  assert dataset.val_images.shape == (2, 8, 8, 1) and dataset.test_images.shape == (4, 8, 8, 1)
  assert np.bincount(dataset.test_labels).tolist() == [2, 2]


def test_chest_xray_rejects_other_classes(image_folder):
  root, _ = image_folder
  with pytest.raises(ValueError, match="NORMAL"):
    images.load_chest_xray(root)


def _write_aptos(root: pathlib.Path, grades, rng) -> None:
  root.mkdir(parents=True, exist_ok=True)
  with open(root / "train.csv", "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["id_code", "diagnosis"])
    for index, grade in enumerate(grades):
      writer.writerow([f"id{index:03d}", grade])
      _write_png(root / "train_images" / f"id{index:03d}.png",
                 _random_pixels(rng, (10 + index % 3, 12, 3)))


def test_aptos_layout_holds_out_each_grade(tmp_path):
  grades = [grade for grade in range(5) for _ in range(5)]
  _write_aptos(tmp_path / "aptos", grades, np.random.default_rng(5))

  dataset = images.load_image_dataset(f"aptos:{tmp_path / 'aptos'}", resize=6, seed=1)

  assert dataset.num_classes == 5 and dataset.train_images.shape[1:] == (6, 6, 3)
  assert np.bincount(dataset.test_labels, minlength=5).tolist() == [1] * 5
  assert np.bincount(dataset.train_labels, minlength=5).tolist() == [4] * 5


def test_aptos_missing_image_and_bad_columns_are_named(tmp_path):
  _write_aptos(tmp_path / "a", [0, 1, 2], np.random.default_rng(6))
  (tmp_path / "a" / "train_images" / "id001.png").unlink()
  with pytest.raises(FileNotFoundError, match="id001"):
    images.load_aptos(tmp_path / "a")
  (tmp_path / "b").mkdir()
  (tmp_path / "b" / "train.csv").write_text("image,level\nx,0\n")
  with pytest.raises(ValueError, match="id_code and diagnosis"):
    images.load_aptos(tmp_path / "b")


def test_digits_fallback_is_real_stratified_and_seeded():
  dataset = images.load_image_dataset("digits", seed=0)
  again = images.load_digits(seed=0)
  other = images.load_digits(seed=1)
  assert dataset.image_shape == (8, 8, 1) and dataset.num_classes == 10
  assert len(dataset.train_labels) + len(dataset.test_labels) == 1797
  assert dataset.train_images.max() == 1.0 and dataset.train_images.min() == 0.0
  np.testing.assert_array_equal(dataset.test_images, again.test_images)
  assert not np.array_equal(dataset.test_images, other.test_images)
  # Stratified: every digit is about 20% of the test set's share.
  counts = np.bincount(dataset.test_labels, minlength=10)
  assert counts.min() >= 34 and counts.max() <= 38


def test_resize_keeps_constants_and_shape():
  constant = np.full((3, 9, 7, 2), 0.25, np.float32)
  resized = images.resize_images(constant, (4, 5))
  assert resized.shape == (3, 4, 5, 2)
  np.testing.assert_allclose(resized, 0.25, atol=1e-6)
  # Antialiased 2x shrink = a triangle filter of half-width 2 input pixels centred at input
  # positions 0.5 and 2.5, weights renormalised at the border: written out by hand.
  weights = np.array([[0.75, 0.75, 0.25, 0.0], [0.0, 0.25, 0.75, 0.75]]) / 1.75
  image = np.random.default_rng(8).uniform(size=(4, 4))
  shrunk = images.resize_images(image[None, :, :, None].astype(np.float32), 2)
  np.testing.assert_allclose(shrunk[0, :, :, 0], weights @ image @ weights.T, atol=1e-6)


def _tiny(num_train=4, num_test=2, **changes):
  rng = np.random.default_rng(7)
  dataset = images.ImageDataset(
      train_images=rng.uniform(size=(num_train, 3, 3, 1)).astype(np.float32),
      train_labels=np.arange(num_train, dtype=np.int32) % 2,
      test_images=rng.uniform(size=(num_test, 3, 3, 1)).astype(np.float32),
      test_labels=np.arange(num_test, dtype=np.int32) % 2, num_classes=2, name="tiny")
  return images.dataclasses.replace(dataset, **changes)


def test_validate_names_each_problem():
  assert images.validate_image_dataset(_tiny()).name == "tiny"
  with_nan = _tiny().train_images.copy()
  with_nan[1, 0, 0, 0] = np.nan
  with pytest.raises(ValueError, match="'train'.*NaN.*index 1"):
    images.validate_image_dataset(_tiny(train_images=with_nan))
  with pytest.raises(ValueError, match="'test'.*labels outside"):
    images.validate_image_dataset(_tiny(test_labels=np.array([0, 2], np.int32)))
  with pytest.raises(ValueError, match="'test'.*no images"):
    images.validate_image_dataset(_tiny(num_test=0))
  with pytest.raises(ValueError, match="divided by 255"):
    images.validate_image_dataset(_tiny(train_images=_tiny().train_images * 255))


def test_unknown_name_lists_valid_names_and_missing_file_names_data_dir(tmp_path):
  with pytest.raises(ValueError, match="retinamnist.*digits.*tfds:"):
    images.load_image_dataset("imagenet")
  with pytest.raises(FileNotFoundError, match="retinamnist.npz.*--config.data_dir"):
    images.load_image_dataset("retinamnist", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="--config.data_dir"):
    images.load_image_dataset(f"folder:{tmp_path / 'nowhere'}")


# -------------------------------------------------------------- tensorflow-datasets, offline

tfds = pytest.importorskip("tensorflow_datasets")


class DpjaxTinyImages(tfds.core.GeneratorBasedBuilder):
  """A 3-class dataset of 8x8 RGB images built locally (tfds writes array_record without TF)."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, supervised_keys=("image", "label"),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 3)),
            "label": tfds.features.ClassLabel(names=["cat", "dog", "fox"])}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(9, seed=0), "test": self._generate_examples(3, seed=1)}

  def _generate_examples(self, count, seed):
    for index in range(count):
      # PIL images are encoded by PIL; NumPy arrays would need TensorFlow to encode.
      yield index, {"image": PIL.Image.fromarray(self.pixels(seed, index)), "label": index % 3}

  @staticmethod
  def pixels(seed, index):
    return np.random.default_rng([seed, index]).integers(0, 256, (8, 8, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  DpjaxTinyImages(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return data_dir


def _expected_tfds_split(seed, count):
  pixels = np.stack([DpjaxTinyImages.pixels(seed, i) for i in range(count)])
  return pixels.astype(np.float32) / 255, np.arange(count) % 3


def _assert_same_examples(got_images, got_labels, want_images, want_labels):
  got = _sorted_by_label_then_pixels(got_images, got_labels)
  want = _sorted_by_label_then_pixels(want_images, want_labels)
  np.testing.assert_array_equal(got[1], want[1])
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6)


def test_tfds_array_record_reads_without_tensorflow(tfds_dir):
  dataset = images.load_image_dataset("tfds:dpjax_tiny_images", str(tfds_dir))
  assert dataset.class_names == ("cat", "dog", "fox") and dataset.num_classes == 3
  _assert_same_examples(dataset.train_images, dataset.train_labels, *_expected_tfds_split(0, 9))
  _assert_same_examples(dataset.test_images, dataset.test_labels, *_expected_tfds_split(1, 3))


def _as_tfrecord_copy(tfds_dir: pathlib.Path, target: pathlib.Path) -> None:
  """Rewrites the prepared array_record dataset as TFRecord files, as `tfds build` writes them."""
  source = tfds.builder_from_directory(str(tfds_dir / "dpjax_tiny_images" / "1.0.0"))
  version_dir = target / "dpjax_tiny_images" / "1.0.0"
  version_dir.mkdir(parents=True)
  for split in ("train", "test"):
    records = source.as_data_source(
        split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    with open(version_dir / f"dpjax_tiny_images-{split}.tfrecord-00000-of-00001", "wb") as out:
      for index in range(len(records)):
        payload = records[index]
        out.write(struct.pack("<Q", len(payload)) + b"\0" * 4 + payload + b"\0" * 4)
  info = json.loads((pathlib.Path(source.data_dir) / "dataset_info.json").read_text())
  info["fileFormat"] = "tfrecord"
  (version_dir / "dataset_info.json").write_text(json.dumps(info))
  (version_dir / "features.json").write_text((pathlib.Path(source.data_dir) / "features.json").read_text())


def test_tfds_tfrecord_reads_without_tensorflow(tfds_dir, tmp_path):
  _as_tfrecord_copy(tfds_dir, tmp_path)
  dataset = images.load_tfds("dpjax_tiny_images", tmp_path, max_per_class=2, resize=4)
  assert dataset.train_images.shape == (6, 4, 4, 3)
  assert np.bincount(dataset.train_labels).tolist() == [2, 2, 2]


def test_tfds_unprepared_dataset_says_how_to_prepare(tmp_path):
  with pytest.raises(FileNotFoundError, match="not prepared.*tensorflow.*data_dir"):
    images.load_image_dataset("tfds:cifar10", str(tmp_path))


# ----------------------------------------------------------------------------- real data


def test_real_medmnist_files(shared_data_dir):
  for name, shape, classes in (("pneumoniamnist", (28, 28, 1), 2), ("retinamnist", (28, 28, 3), 5)):
    dataset = images.load_image_dataset(name, str(shared_data_dir))
    assert dataset.image_shape == shape and dataset.num_classes == classes
    raw = np.load(next(shared_data_dir.glob(f"medmnist/{name}*.npz")))
    np.testing.assert_allclose(dataset.test_images.reshape(raw["test_images"].shape),
                               raw["test_images"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(np.bincount(dataset.train_labels),
                                  np.bincount(raw["train_labels"][:, 0]))


def test_real_cifar10_archive_subset(shared_data_dir):
  dataset = images.load_image_dataset("cifar10_folder", str(shared_data_dir), max_per_class=3)
  assert dataset.class_names[:3] == ("airplane", "automobile", "bird")
  assert dataset.train_images.shape == (30, 32, 32, 3) and dataset.test_images.shape == (30, 32, 32, 3)
  assert np.bincount(dataset.train_labels).tolist() == [3] * 10
  assert 0.2 < dataset.train_images.mean() < 0.8  # real photos, not blank decodes
