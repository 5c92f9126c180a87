"""The audit's figures: ROC curves on log-log axes, and the canary lower bound against the claim.

  roc_curves.png          each attack's ROC curve per setting (Carlini et al. 2022's log-log view)
  epsilon_lower_bound.png the canary audit's lower bound (y) against the accountant's epsilon (x)
"""

from __future__ import annotations

import math
import os

import numpy as np

from dpjax import auditing
from experiments.common import outputs

ATTACK_NAMES = {"loss": "loss threshold", "lira_online": "LiRA online",
                "lira_offline": "LiRA offline"}


def roc_figure(panels: dict[str, list[tuple[str, np.ndarray, np.ndarray]]], floor: float):
  """Log-log ROC curves, TPR against FPR: one panel per title, one (label, fpr, tpr) curve each.

  Rates of 0 are raised to `floor` (below the smallest nonzero rate) so log axes can show them.
  The dashed diagonal is the random guess; dotted verticals mark the low FPRs of the table.
  """
  plt = outputs.pyplot()
  columns = min(3, len(panels))
  num_rows = math.ceil(len(panels) / columns)
  figure, axes = plt.subplots(num_rows, columns, squeeze=False, layout="constrained",
                              figsize=(5.2 * columns, 4.8 * num_rows))
  for axis, (title, curves) in zip(axes.flat, panels.items()):
    axis.plot([floor, 1], [floor, 1], color="gray", linestyle="--", linewidth=1,
              label="random guess")
    for fpr in auditing.LOW_FPRS:
      axis.axvline(fpr, color="lightgray", linestyle=":", linewidth=1, zorder=0)
    for label, fpr, tpr in curves:
      axis.plot(np.maximum(fpr, floor), np.maximum(tpr, floor), linewidth=1.5, label=label)
    axis.set(xscale="log", yscale="log", xlim=(floor, 1), ylim=(floor, 1), title=title,
             xlabel="false positive rate", ylabel="true positive rate")
    axis.legend(fontsize=7, loc="lower right", framealpha=0.9)
  for axis in axes.flat[len(panels):]:
    axis.remove()
  figure.suptitle("Membership inference ROC (pooled leave-one-model-out)")
  return figure


def epsilon_figure(labels: list[str], accountant_epsilon: np.ndarray, lower_bound: np.ndarray,
                   planted_bug: np.ndarray, confidence: float):
  """The canary audit's empirical lower bound (y) against the accountant's epsilon (x), with y = x.

  Points above the line refute the accountant's claim; an infinite bound is drawn on the top edge.
  """
  plt = outputs.pyplot()
  x = np.asarray(accountant_epsilon, np.float64)
  bound = np.asarray(lower_bound, np.float64)
  planted_bug = np.asarray(planted_bug, bool)
  finite = np.isfinite(bound)
  top = 1.15 * max(x.max(), bound[finite].max(initial=0.0), 1.0)
  y = np.where(finite, bound, top)
  figure, axis = plt.subplots(figsize=(5.4, 5.4))
  axis.plot([0, top], [0, top], color="gray", linestyle="--", linewidth=1,
            label="y = x (accountant's epsilon)")
  axis.fill_between([0, top], [0, top], top, color="tab:red", alpha=0.07,
                    label="lower bound exceeds the claim")
  for mask, style in ((~planted_bug, dict(marker="o", color="tab:blue", label="correct DP-SGD")),
                      (planted_bug, dict(marker="X", color="tab:red", label="planted bug"))):
    if mask.any():
      axis.scatter(x[mask], y[mask], s=60, zorder=3, clip_on=False, **style)
  for label, xi, yi, value in zip(labels, x, y, bound):
    axis.annotate(f"{label}: {value:.3g}", (xi, yi), textcoords="offset points", fontsize=8,
                  xytext=(6, 6) if math.isfinite(value) else (8, -12))  # inf: below the top edge
  axis.set(xlim=(0, top), ylim=(0, top), aspect="equal", xlabel="accountant epsilon (claimed)",
           ylabel=f"empirical epsilon lower bound ({confidence:.0%} confidence)",
           title="Canary audit: lower bound vs accountant")
  axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
  return figure


def _attack_label(name: str, metrics: dict) -> str:
  return (f"{ATTACK_NAMES.get(name, name)}: AUC {metrics['auc']:.3f}, TPR "
          f"{metrics['tpr_at_fpr_0.001']:.1%} @0.1%, {metrics['tpr_at_fpr_0.01']:.1%} @1%")


def _setting_title(row: dict) -> str:
  epsilon = row["membership_inference"]["accountant_epsilon"]
  if row["bug"] not in (None, "none"):
    return f"{row['setting']} (planted bug, claims eps {epsilon:.3g})"
  return f"{row['setting']} (accountant eps {epsilon:.3g})"


def write_plots(rows: list[dict], roc_curves: dict[str, dict], workdir: str,
                confidence: float) -> list[str]:
  """Draws roc_curves.png and (when a canary audit ran) epsilon_lower_bound.png into `workdir`;
  returns their file names, relative to `workdir`."""
  panels = {_setting_title(row): [(_attack_label(name, row["membership_inference"][name]),
                                   *roc_curves[row["setting"]][name])
                                  for name in roc_curves[row["setting"]]] for row in rows}
  num_scores = max(row["membership_inference"]["loss"]["num_members"]
                   + row["membership_inference"]["loss"]["num_nonmembers"] for row in rows)
  # Below the smallest nonzero rate, 1 / (num_scores / 2), and below the table's lowest FPR.
  floor = min(1.0 / num_scores, 0.5 * min(auditing.LOW_FPRS))
  written = [save(roc_figure(panels, floor), workdir, "roc_curves.png")]
  audited = [row for row in rows if "canary" in row]
  if audited:
    figure = epsilon_figure([row["setting"] for row in audited],
                            np.array([row["canary"]["accountant_epsilon"] for row in audited]),
                            np.array([row["canary"]["epsilon_lower_bound"] for row in audited]),
                            np.array([row["bug"] != "none" for row in audited]), confidence)
    written.append(save(figure, workdir, "epsilon_lower_bound.png"))
  return written


def save(figure, workdir: str, file_name: str) -> str:
  """Saves `figure` as `workdir/file_name` (PNG, atomically); returns `file_name`."""
  outputs.save_figure(figure, os.path.join(workdir, file_name), dpi=100)
  return file_name
