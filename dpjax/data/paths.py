"""Where dpjax looks for local data: one place, so every entry point agrees."""

import os
import pathlib

ENV_VAR = "DPJAX_DATA_DIR"
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def default_data_dir() -> str | None:
  """`$DPJAX_DATA_DIR`, else `../shared/data` beside the project when it exists, else None."""
  from_env = os.environ.get(ENV_VAR)
  if from_env:
    return from_env
  for candidate in (_REPO_ROOT.parent / "shared" / "data",
                    pathlib.Path.cwd().parent / "shared" / "data"):
    if candidate.is_dir():
      return str(candidate)
  return None


def require_data_dir(data_dir: str | None, what: str) -> pathlib.Path:
  """Returns `data_dir` as a Path, or raises a message that says how to point at the data."""
  if not data_dir:
    raise FileNotFoundError(
        f"{what} needs a data directory: pass --config.data_dir=DIR or set {ENV_VAR}.")
  path = pathlib.Path(data_dir).expanduser()
  if not path.is_dir():
    raise FileNotFoundError(
        f"--config.data_dir={data_dir} is not a directory ({what}); pass --config.data_dir=DIR or set {ENV_VAR}.")
  return path
