"""Mean +- sd over seeds of transfer-study workdirs (public rows only).

  python -m experiments.classify.transfer_table runs/transfer/pneu_scatter_eps8_s0 ...

Groups rows by (dataset, model, arm, selection) and prints one markdown line per group: test
accuracy, balanced accuracy, ROC AUC, sensitivity, specificity (in %, mean +- sample sd), the
majority rate, epsilon (max over seeds) and how many seeds collapsed. Then the must-show check
per dataset and model: the DP arm's mean test accuracy against the non-private reference's
(within `MAX_GAP` points) and against the test majority rate (above by at least `MIN_MARGIN`
points, read here as a clear margin), over the seeds both arms have.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import numpy as np

from experiments.common import outputs

METRICS = ("accuracy", "balanced_accuracy", "roc_auc", "sensitivity", "specificity")
MAX_GAP = 5.0  # points of test accuracy the DP arm may lose to the non-private reference
MIN_MARGIN = 5.0  # points above the majority rate that count as a clear margin


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


def must_show(workdirs: Sequence[str]) -> str:
  """Per (dataset, model, DP arm and selection): DP vs non-private test accuracy and the margin
  over the majority rate, in points of mean accuracy, with per-seed values and a verdict."""
  by_key: dict[tuple, dict] = {}
  for workdir in workdirs:
    rows = outputs.read_json(os.path.join(workdir, "results.json"))["rows"]
    reference = [r for r in rows if r["arm"] == "non_private"]
    for row in rows:
      if row["arm"] == "non_private" or not reference:
        continue
      key = _group_key(row)
      entry = by_key.setdefault(key, {"dp": [], "ref": [], "majority": [], "epsilon": []})
      entry["dp"].append(100 * row["test_accuracy"])
      entry["ref"].append(100 * reference[0]["test_accuracy"])
      entry["majority"].append(100 * row["test_majority_rate"])
      entry["epsilon"].append(float(row["epsilon"]))
  lines = []
  for (dataset, model, arm, how), entry in by_key.items():
    dp, ref = np.mean(entry["dp"]), np.mean(entry["ref"])
    majority = np.mean(entry["majority"])
    gap, margin = ref - dp, dp - majority
    lines.append({
        "dataset": dataset, "model": model, "arm": f"{arm}, {how}", "seeds": len(entry["dp"]),
        "DP acc": _cell(np.asarray(entry["dp"]) / 100),
        "DP per seed": ", ".join(f"{v:.1f}" for v in entry["dp"]),
        "non-private acc": _cell(np.asarray(entry["ref"]) / 100),
        "gap": f"{gap:.1f}", "majority": f"{majority:.1f}", "margin": f"{margin:+.1f}",
        "epsilon (max)": f"{max(entry['epsilon']):.3g}",
        "met": ("yes" if gap <= MAX_GAP and margin >= MIN_MARGIN and len(entry["dp"]) >= 3
                else "no")})
  return outputs.markdown_table(lines)


if __name__ == "__main__":
  found = [path for path in sys.argv[1:] if os.path.exists(os.path.join(path, "results.json"))]
  print(table(found))
  print()
  print(must_show(found))
