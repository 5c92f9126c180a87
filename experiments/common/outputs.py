"""Writing a study's outputs: atomic JSON with JSON-safe floats, CSV, markdown tables, figures.

One place for each format, so that every study's `results.json` reads the same way (non-finite
floats as the strings "inf"/"-inf"/"nan", NumPy scalars as numbers) and a half-written file is
never left behind by a killed run.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np


def json_safe(value: Any) -> Any:
  """`value` with NumPy types as Python ones and non-finite floats as strings."""
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    value = dataclasses.asdict(value)
  if isinstance(value, Mapping):
    return {str(k): json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if isinstance(value, np.ndarray):
    return json_safe(value.tolist())
  if isinstance(value, (np.bool_, bool)):
    return bool(value)
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    value = float(value)
    return value if math.isfinite(value) else str(value)
  return value


def atomic_write_text(path: str | os.PathLike, text: str) -> str:
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", newline="") as f:
    f.write(text)
  os.replace(tmp, path)
  return path


def write_json(path: str | os.PathLike, value: Any, indent: int = 2) -> str:
  """Writes `value` as JSON atomically (JSON-safe floats); returns the path."""
  return atomic_write_text(path, json.dumps(json_safe(value), indent=indent) + "\n")


def read_json(path: str | os.PathLike) -> Any:
  with open(path) as f:
    return json.load(f)


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]],
              columns: Sequence[str] | None = None) -> str:
  """Rows as CSV through the `csv` module (fields with commas or quotes are quoted)."""
  columns = list(columns or _columns(rows))
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
  writer.writeheader()
  for row in rows:
    writer.writerow({k: _cell(row.get(k)) for k in columns})
  return atomic_write_text(path, buffer.getvalue())


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
                   headers: Mapping[str, str] | None = None, digits: int = 4) -> str:
  """A GitHub markdown table of `rows`; floats to `digits` significant digits."""
  columns = list(columns or _columns(rows))
  headers = headers or {}
  lines = ["| " + " | ".join(headers.get(c, c) for c in columns) + " |",
           "|" + "|".join("---" for _ in columns) + "|"]
  for row in rows:
    lines.append("| " + " | ".join(_format(row.get(c), digits) for c in columns) + " |")
  return "\n".join(lines) + "\n"


def save_figure(figure, path: str | os.PathLike, dpi: int = 120) -> str:
  """Saves a matplotlib figure atomically and closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel  (slow; only plotting)
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp.png"
  figure.savefig(tmp, dpi=dpi, bbox_inches="tight")
  plt.close(figure)
  os.replace(tmp, path)
  return path


def pyplot():
  """matplotlib.pyplot on the Agg backend (no display needed)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def _columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
  seen: dict[str, None] = {}
  for row in rows:
    for k in row:
      seen.setdefault(k, None)
  return list(seen)


def _cell(value: Any) -> Any:
  value = json_safe(value)
  return json.dumps(value) if isinstance(value, (list, dict)) else value


def _format(value: Any, digits: int) -> str:
  if value is None:
    return ""
  if isinstance(value, (float, np.floating)):
    value = float(value)
    return f"{value:.{digits}g}" if math.isfinite(value) else str(value)
  return str(value)
