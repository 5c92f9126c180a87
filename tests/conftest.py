"""Shared test fixtures."""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "")

import pytest

from dpjax.data import paths


@pytest.fixture(scope="session")
def shared_data_dir() -> pathlib.Path:
  """The real data folder (`../shared/data` or $DPJAX_DATA_DIR); skips the test when absent."""
  data_dir = paths.default_data_dir()
  if data_dir is None or not pathlib.Path(data_dir).is_dir():
    pytest.skip(f"real data not found: set {paths.ENV_VAR} or place shared/data beside the project")
  return pathlib.Path(data_dir)
