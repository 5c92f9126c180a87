"""Checks on training inputs that fail early with a message naming the input and the fix.

The core loop already refuses NaN/Inf data, batch sizes larger than the data and unreadable
checkpoints; these helpers add what a loader must check before that: shapes, label ranges,
empty data, hyperparameter signs and unreadable array files.
"""

from __future__ import annotations

import math
import os
import pathlib
import zipfile

import numpy as np


def check_classification_data(x: np.ndarray, y: np.ndarray, *, num_classes: int | None = None,
                              feature_shape: tuple[int, ...] | None = None,
                              name: str = "data") -> int:
  """Validates features `x` (N, ...) and integer labels `y` (N,); returns the number of classes."""
  x, y = np.asarray(x), np.asarray(y)
  if x.ndim < 2:
    raise ValueError(f"{name}: features have shape {x.shape}; expected (examples, features...).")
  if y.ndim != 1:
    raise ValueError(f"{name}: labels have shape {y.shape}; expected one integer per example (N,).")
  if x.shape[0] != y.shape[0]:
    raise ValueError(f"{name}: {x.shape[0]} feature rows but {y.shape[0]} labels; they must match.")
  if x.shape[0] == 0:
    raise ValueError(f"{name} is empty: no example to train on.")
  if feature_shape is not None and tuple(x.shape[1:]) != tuple(feature_shape):
    raise ValueError(f"{name}: features have shape {tuple(x.shape[1:])} per example; the model "
                     f"expects {tuple(feature_shape)}.")
  if not np.issubdtype(x.dtype, np.number):
    raise ValueError(f"{name}: features have dtype {x.dtype}; expected numbers.")
  if np.issubdtype(x.dtype, np.floating):
    bad = int(np.sum(~np.isfinite(x)))
    if bad:
      raise ValueError(f"{name}: features hold {bad} NaN/Inf values; clean or impute them first.")
  if not np.issubdtype(y.dtype, np.integer):
    if not (np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
      raise ValueError(f"{name}: labels have dtype {y.dtype} with non-integer values; expected "
                       "class indices 0..K-1.")
  if num_classes is None:
    num_classes = int(y.max()) + 1
  out_of_range = (y < 0) | (y >= num_classes)
  if np.any(out_of_range):
    raise ValueError(f"{name}: {int(out_of_range.sum())} labels are outside 0..{num_classes - 1} "
                     f"(e.g. {y[out_of_range][0]}); labels must be class indices.")
  return num_classes


def check_positive(**hyperparameters: float | int | None) -> None:
  """Raises for any value that is not a finite number > 0 (None is skipped), naming the flag."""
  for flag, value in hyperparameters.items():
    if value is None:
      continue
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
      raise ValueError(f"--{flag}={value} must be a finite number > 0.")


def check_nonnegative(**hyperparameters: float | int | None) -> None:
  for flag, value in hyperparameters.items():
    if value is None:
      continue
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
      raise ValueError(f"--{flag}={value} must be a finite number >= 0.")


def check_choice(flag: str, value: str, valid) -> None:
  if value not in valid:
    raise ValueError(f"--{flag}={value!r} is unknown; valid: {', '.join(sorted(valid))}.")


def load_npz_arrays(path: str | os.PathLike, keys=("x", "y")) -> tuple[np.ndarray, ...]:
  """The named arrays of an .npz file, with a clear error for a missing, truncated or foreign file."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"data file {path} does not exist.")
  try:
    with np.load(path, allow_pickle=False) as archive:
      files = list(archive.files)
      arrays = {k: np.asarray(archive[k]) for k in keys if k in files}
  except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
    raise ValueError(f"data file {path} is unreadable or truncated ({e}); re-create or "
                     "re-download it.") from e
  missing = [k for k in keys if k not in arrays]
  if missing:
    raise ValueError(f"data file {path} has arrays {files}; missing {missing}.")
  return tuple(arrays[k] for k in keys)
