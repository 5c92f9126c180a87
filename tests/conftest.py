"""Shared test fixtures."""

import functools
import os
import pathlib
import re

# Under pytest-xdist each worker runs XLA on one thread, so that two workers on two cores do not
# each start a thread pool as wide as the machine (the tests' arrays are tiny). Not measured on
# its own: the fresh-clone suite with it took 10:02, the main venv's without it 10:34 (different
# test counts and load). A run without -n, or an XLA_FLAGS of the user's, keeps XLA's default.
if os.environ.get("PYTEST_XDIST_WORKER") and "XLA_FLAGS" not in os.environ:
  os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
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


_SHARED_FIXTURE = re.compile(r"""scope\s*=\s*["'](module|package|class)["']""")


@functools.lru_cache(maxsize=None)
def _has_shared_fixture(path: str) -> bool:
  try:
    return bool(_SHARED_FIXTURE.search(pathlib.Path(path).read_text()))
  except OSError:
    return False


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist
def pytest_xdist_make_scheduler(config, log):
  """`--dist loadgroup` (pyproject.toml): one xdist worker per module that has a shared fixture.

  With `-n 2 --dist load` the tests of a module alternate between the workers, so both built the
  module's expensive fixture (a 4-device subprocess, a whole study run). xdist 3.8's own
  loadgroup renames the nodeids of `xdist_group` tests, which pytest 9.2 ignores (the groups
  were silently dropped), so the groups are made here from the nodeids: every test of a module
  that defines a module-, class- or package-scoped fixture goes to one worker; every other test
  is balanced on its own. Groups are sent largest first.
  """
  if config.getvalue("dist") != "loadgroup":
    return None
  from xdist.scheduler import LoadScopeScheduling  # pylint: disable=import-outside-toplevel

  class ModuleFixtureScheduling(LoadScopeScheduling):

    def _split_scope(self, nodeid):
      module = nodeid.split("::", 1)[0]
      return module if _has_shared_fixture(os.path.join(config.rootpath, module)) else nodeid

  return ModuleFixtureScheduling(config, log)
