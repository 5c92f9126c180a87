"""The thin `main` of every study: `--config` (an ml_collections config file) and `--workdir`.

  python -m experiments.<study> --config=experiments/<study>/configs/<name>.py[:arg] \
      --workdir=runs/<name> [--config.field=value ...]

A config file's optional argument (e.g. `:quick`) shrinks the real configuration to a laptop
run on the same code path. A bad value ends the run with `<study>: error: <message>` naming the
field, and exit status 1, without a traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from absl import app
from absl import flags
from ml_collections import config_flags

from dpjax import parallel


def run(study: str, train_and_evaluate: Callable, default_config: str,
        summarize: Callable[[dict], str] | None = None) -> None:
  """Defines `--config` and `--workdir` and runs `train_and_evaluate(config, workdir)`."""
  try:  # ml_collections already reads --config.FIELD overrides here
    config_flag = config_flags.DEFINE_config_file(
        "config", default_config, f"{study} config file (experiments/{study}/configs/*.py), "
        "optionally with an argument as in FILE:quick; override fields with --config.NAME=VALUE.",
        lock_config=True)
  except (AttributeError, KeyError) as error:
    sys.exit(f"{study}: error: unknown config field {str(error).strip(chr(39) + chr(34))!r} "
             f"in {[a for a in sys.argv[1:] if a.startswith('--config.')]}; see the fields of "
             f"the config file ({default_config} by default).")
  flags.DEFINE_string("workdir", None, "Output folder; a rerun on the same folder resumes.")

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    workdir = flags.FLAGS.workdir
    if not workdir:
      raise app.UsageError("--workdir is required.")
    # One process per host of a multi-host run (SLURM, or DPJAX_NUM_PROCESSES): join it first.
    parallel.initialize_distributed()
    try:
      results = train_and_evaluate(config_flag.value, workdir)
    except (ValueError, FileNotFoundError) as error:
      sys.exit(f"{study}: error: {error}")
    if summarize is not None:
      print(summarize(results))

  def parse(argv):
    # An unknown or ill-typed --config.FIELD fails inside ml_collections with a bare exception
    # and a traceback; say which flag, and list the fields.
    try:
      return flags.FLAGS(argv)
    except (AttributeError, KeyError, TypeError, ValueError, flags.Error) as error:
      fields = ""
      try:
        fields = ", ".join(sorted(config_flag.value.keys()))
      except Exception:  # pylint: disable=broad-except  (the config itself may be the problem)
        pass
      message = str(error).strip("'\"")
      sys.exit(f"{study}: error: bad flag ({message})." + (f" Valid --config fields: {fields}." if fields else ""))

  app.run(main, flags_parser=parse)


def config_path(study: str, name: str) -> str:
  """The path of a study's config file, relative to the working directory when inside it."""
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), study,
                      "configs", f"{name}.py")
  relative = os.path.relpath(path)
  return relative if not relative.startswith("..") else path
