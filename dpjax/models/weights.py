"""Saving parameters to, and initialising them from, local files (nothing is ever downloaded).

Formats: `.npz` of the flat parameter dict (keys joined by "/", e.g. "stem_conv/kernel"), which
any framework can write; anything else is Flax msgpack (`flax.serialization.to_bytes`).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import flax.serialization
import flax.traverse_util
import jax.numpy as jnp
import numpy as np

_SEPARATOR = "/"


def _flat(tree) -> dict[str, object]:
  return flax.traverse_util.flatten_dict(flax.serialization.to_state_dict(tree), sep=_SEPARATOR)


def save_params(path: str | os.PathLike, params) -> None:
  """Writes `params` as `.npz` (flat "a/b/kernel" keys) or, for other suffixes, Flax msgpack."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if path.suffix == ".npz":
    np.savez(path, **{key: np.asarray(value) for key, value in _flat(params).items()})
  else:
    path.write_bytes(flax.serialization.to_bytes(params))


def _read_flat(path: pathlib.Path) -> dict[str, np.ndarray]:
  if path.suffix == ".npz":
    with np.load(path) as arrays:
      return {key: arrays[key] for key in arrays.files}
  try:
    state = flax.serialization.msgpack_restore(path.read_bytes())
  except Exception as error:  # msgpack raises several types for a foreign file
    raise ValueError(f"{path}: not a Flax msgpack file ({error}); use .npz for flat arrays") from error
  return flax.traverse_util.flatten_dict(state, sep=_SEPARATOR)


def _kept(keep_from_like: Sequence[str]):
  return lambda key: any(key == p or key.startswith(p + _SEPARATOR) for p in keep_from_like)


def check_fits(loaded: dict, wanted: dict, *, source: str,
               keep_from_like: Sequence[str] = ()) -> None:
  """Refuses (ValueError naming `source`) flat arrays `loaded` that do not fit the flat model
  tree `wanted` (arrays or shape structs): a missing key, an extra key, or another shape; keys
  under a `keep_from_like` prefix are not required."""
  kept = _kept(keep_from_like)
  missing = sorted(key for key in wanted if key not in loaded and not kept(key))
  unexpected = sorted(key for key in loaded if key not in wanted)
  mismatched = [f"{key}: file {tuple(np.shape(loaded[key]))} vs model {tuple(wanted[key].shape)}"
                for key in sorted(wanted)
                if key in loaded and not kept(key)
                and tuple(np.shape(loaded[key])) != tuple(wanted[key].shape)]
  problems = []
  if missing:
    problems.append(f"missing from file: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
  if unexpected:
    problems.append(f"not in the model: {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
  if mismatched:
    problems.append("shape mismatch: " + "; ".join(mismatched[:5]))
  if problems:
    raise ValueError(f"{source} does not fit the model ({len(wanted)} arrays): "
                     + " | ".join(problems)
                     + ". Pass keep_from_like=('head',) to re-initialise a classifier head.")


def load_params(path: str | os.PathLike, like, *, keep_from_like: Sequence[str] = ()):
  """Parameters from a local file, checked key by key against the tree `like`.

  `like` is the model's parameter tree (real arrays, or `jax.eval_shape` shapes). Every key
  must be present with the same shape; a file holding {"params": ...} is unwrapped.
  `keep_from_like` lists key prefixes (e.g. "head") whose values are taken from `like` instead,
  which is how a pretrained body gets a new classifier head for a different number of classes.
  """
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f"weights file not found: {path} (nothing is downloaded; pass a "
                            "local .npz or Flax msgpack file)")
  loaded = _read_flat(path)
  wanted = _flat(like)
  if not set(wanted) & set(loaded) and all(k.startswith("params/") for k in loaded):
    loaded = {key[len("params/"):]: value for key, value in loaded.items()}
  kept = _kept(keep_from_like)
  check_fits(loaded, wanted, source=str(path), keep_from_like=keep_from_like)
  merged = {key: (wanted[key] if kept(key) else jnp.asarray(loaded[key], dtype=wanted[key].dtype))
            for key in wanted}
  return flax.traverse_util.unflatten_dict(merged, sep=_SEPARATOR)
