"""Atomic single-file checkpoints: the train state and a JSON record (privacy ledger, config).

One file, written to a temporary name and renamed over the old one, so a run killed at any
moment leaves either the previous checkpoint or the new one, never half of each.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import numpy as np
from flax import serialization

FILENAME = "checkpoint.msgpack"


def path(workdir: str) -> str:
  return os.path.join(workdir, FILENAME)


def _is_typed_key(x) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_host(x):
  return np.asarray(jax.random.key_data(x) if _is_typed_key(x) else x)


def _like_template(template_leaf, restored_leaf):
  if _is_typed_key(template_leaf):  # typed keys are stored as their raw key data
    return jax.random.wrap_key_data(restored_leaf, impl=jax.random.key_impl(template_leaf))
  return restored_leaf


def save(workdir: str, state: Any, meta: dict) -> str:
  """Writes `state` (any pytree) and `meta` (JSON-serialisable) atomically; returns the path."""
  os.makedirs(workdir, exist_ok=True)
  host_state = jax.tree.map(_to_host, serialization.to_state_dict(state))
  payload = serialization.msgpack_serialize({"state": host_state, "meta": json.dumps(meta)})
  final = path(workdir)
  tmp = f"{final}.tmp{os.getpid()}"  # never two writers on one temporary file
  with open(tmp, "wb") as f:
    f.write(payload)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, final)
  return final


def restore(workdir: str, template: Any) -> tuple[Any, dict] | None:
  """(state, meta) from `workdir`'s checkpoint, shaped like `template`; None when there is none."""
  file = pathlib.Path(path(workdir))
  if not file.exists():
    return None
  try:
    payload = serialization.msgpack_restore(file.read_bytes())
    state = serialization.from_state_dict(template, payload["state"])
    state = jax.tree.map(_like_template, template, state)
    meta = json.loads(payload["meta"])
    expected = jax.tree.map(np.shape, template)
    found = jax.tree.map(np.shape, state)
    if expected != found:
      raise ValueError("parameter shapes differ from the model being trained")
  except Exception as e:  # a truncated or foreign file must not be trained on
    raise ValueError(f"checkpoint {file} is unreadable or does not match this model ({e}); "
                     "move it away to start afresh.") from e
  return state, meta
