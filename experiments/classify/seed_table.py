r"""Mean and spread over seeds of `classify` sweeps: one table from several workdirs.

  python -m experiments.classify --config=experiments/classify/configs/medical_cnn.py \
      --workdir=runs/med_s0 --config.seed=0
  python -m experiments.classify --config=experiments/classify/configs/medical_cnn.py \
      --workdir=runs/med_s1 --config.seed=1
  python -m experiments.classify.seed_table --workdirs=runs/med_s0,runs/med_s1 \
      --output=runs/med_seeds.md

Each workdir's `results.json` lists its runs; runs with the same name are the same setting at
different seeds. Per run: test accuracy as mean +- sample standard deviation, the per-seed
values, and the largest epsilon spent across seeds (each seed calibrates its own noise, so
epsilons differ slightly). Training accuracy is a private diagnostic (each run's `private/`
folder), not in `results.json`, so not in this table.

Each seed's runs trained on the same data: the epsilon of a line holds for one seed's model;
publishing the models (or outcomes) of all seeds together composes their costs.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
from absl import app
from absl import flags

from experiments.common import outputs


def load_runs(workdirs: list[str]) -> dict[str, list[dict]]:
  """Run name -> its rows, one per workdir that has it (in the order given)."""
  runs: dict[str, list[dict]] = {}
  for workdir in workdirs:
    path = os.path.join(workdir, "results.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} not found: run experiments.classify with "
                              f"--workdir={workdir} first (or drop it from --workdirs).")
    for row in outputs.read_json(path)["runs"]:
      runs.setdefault(row["run"], []).append(row)
  return runs


def _mean_sd(values: list[float]) -> str:
  if len(values) == 1:
    return f"{100 * values[0]:.2f}"
  return f"{100 * np.mean(values):.2f} +- {100 * np.std(values, ddof=1):.2f}"


def _epsilon(rows: list[dict]) -> str:
  values = [float(r["epsilon"]) for r in rows]
  return "inf" if any(math.isinf(v) for v in values) else f"{max(values):.3f}"


def seed_table(workdirs: list[str]) -> str:
  """A markdown table: one line per run name, accuracies over the workdirs' seeds."""
  lines = []
  for name, rows in load_runs(workdirs).items():
    test = [r["test_accuracy"] for r in rows]
    lines.append({"run": name, "seeds": len(rows), "test accuracy % (mean +- sd)": _mean_sd(test),
                  "per seed": ", ".join(f"{100 * v:.1f}" for v in test),
                  "epsilon (max, one seed)": _epsilon(rows)})
  return (outputs.markdown_table(lines) + "\nEach seed trained on the same data: the epsilon "
          "holds for one seed's model; the seeds' models together compose their costs. Training "
          "accuracy is private (runs' private/ folders).\n")


FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_list("workdirs", [], "classify workdirs, one per seed.")
  flags.DEFINE_string("output", None, "Also write the table to this file.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.workdirs:
    raise app.UsageError("--workdirs is required (comma-separated classify workdirs).")
  try:
    table = seed_table(FLAGS.workdirs)
  except (FileNotFoundError, KeyError, ValueError) as error:
    sys.exit(f"seed_table: error: {error}")
  if FLAGS.output:
    outputs.atomic_write_text(FLAGS.output, table)
  print(table)


if __name__ == "__main__":
  define_flags()
  app.run(main)
