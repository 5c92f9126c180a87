"""Mean +- sd over seeds of transfer-study workdirs (public rows only).

  python -m experiments.classify.transfer_table runs/transfer/pneu_scatter_eps8_s0 ...

Groups rows by (dataset, model, arm, selection) and prints one markdown line per group: test
accuracy, balanced accuracy, ROC AUC, sensitivity, specificity (in %, mean +- sample sd), the
majority rate, epsilon (max over seeds) and how many seeds collapsed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import numpy as np

from experiments.common import outputs

METRICS = ("accuracy", "balanced_accuracy", "roc_auc", "sensitivity", "specificity")


def _group_key(row: dict) -> tuple:
  selection = row.get("selection") or {}
  how = ("non-private, best of grid on exact val" if row["arm"] == "non_private" else
         "fixed recipe" if selection.get("mean_trials", 1) == 1 else
         f"tuned (E[K]={selection['mean_trials']:g})")
  return row["dataset"], row["model"], row["arm"], how


def _cell(values: Sequence[float]) -> str:
  values = 100 * np.asarray(values, np.float64)
  sd = values.std(ddof=1) if len(values) > 1 else 0.0
  return f"{values.mean():.1f} +- {sd:.1f}"


def table(workdirs: Sequence[str]) -> str:
  groups: dict[tuple, list[dict]] = {}
  for workdir in workdirs:
    for row in outputs.read_json(os.path.join(workdir, "results.json"))["rows"]:
      groups.setdefault(_group_key(row), []).append(row)
  lines = []
  for (dataset, model, arm, how), rows in groups.items():
    epsilons = [float(r["epsilon"]) for r in rows]
    lines.append({
        "dataset": dataset, "model": model, "arm": arm, "selection": how, "seeds": len(rows),
        **{m: _cell([r[f"test_{m}"] for r in rows]) for m in METRICS},
        "majority %": f"{100 * rows[0]['test_majority_rate']:.1f}",
        "epsilon (max)": f"{max(epsilons):.3g}",
        "collapsed": sum(bool(r.get("collapse")) for r in rows)})
  return outputs.markdown_table(lines)


if __name__ == "__main__":
  print(table([path for path in sys.argv[1:] if os.path.exists(os.path.join(path, "results.json"))]))
