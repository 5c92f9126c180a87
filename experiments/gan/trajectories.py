"""Median trajectories of real and synthetic participants, and the study's Figure 2 A-D."""

from __future__ import annotations

import os

import numpy as np

from dpjax.data import trials
from experiments.common import outputs

PANEL_TITLES = {
    "final": "A. Final epoch",
    "best_lr": "B. Best logistic-regression epoch (on validation)",
    "best_rf": "C. Best random-forest epoch (on validation)",
    "top_k": "D. Top epochs of each classifier (pooled)",
}
ARM_NAMES = {"0": "control / standard arm", "1": "active / intensive arm"}
REAL_CURVE_LABEL = "real (held-out test participants)"
# The GAN variants of results["variants"], in plotting order, with their line styles.
VARIANT_STYLES = {"merf": "C2-D", "private": "C0-s", "nonprivate": "C1-^"}


def trajectory(x: np.ndarray, arm: np.ndarray, data: trials.TrialData) -> dict:
  """Median first-feature trajectory (original units) per arm: {"0": [...], "1": [...]}."""
  log1p = data.transforms[0] == "log1p"
  return {str(a): trials.median_trajectory(x[arm == a], 0, data.scale, log1p).tolist()
          for a in (0, 1) if np.any(arm == a)}


def _epoch_label(epoch: float) -> str:
  return str(int(epoch)) if float(epoch).is_integer() else f"{epoch:g}"


def plot_trajectories(results: dict, data: trials.TrialData, workdir: str,
                      prefix: str) -> list[str]:
  """Figure 2 A-D: per panel one PNG with a subplot per arm, real vs each variant."""
  plt = outputs.pyplot()
  visits = list(data.visit_names)
  unit = data.feature_names[0]
  written = []
  for letter, panel in zip("ABCD", PANEL_TITLES):
    if not any(panel in v["trajectories"] for v in results["variants"].values()):
      continue  # B-D choose GAN epochs: nothing to draw without a GAN
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, arm in zip(axes, ("0", "1")):
      if arm in results["real_trajectories"]:
        ax.plot(visits, results["real_trajectories"][arm], "k-o", label=REAL_CURVE_LABEL)
      for variant, style in VARIANT_STYLES.items():
        if variant not in results["variants"]:
          continue
        v = results["variants"][variant]
        if arm not in v["trajectories"].get(panel, {}):
          continue  # DP-MERF has no epochs: final panel only
        label = v.get("label", variant) + (f" (eps={v['epsilon']:.2f})" if v["private"]
                                           else " (eps=inf)")
        epochs = [e for e in v["panel_epochs"][panel] if e != ""]
        if epochs:
          label += (f", epoch{'s' if len(epochs) > 1 else ''} "
                    f"{','.join(_epoch_label(e) for e in epochs)}")
        ax.plot(visits, v["trajectories"][panel][arm], style, label=label)
      ax.set_title(ARM_NAMES[arm])
      ax.set_xlabel("visit")
      ax.tick_params(axis="x", labelrotation=45)
    axes[0].set_ylabel(f"median {unit}")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{PANEL_TITLES[panel]} ({data.feature_names[0]}, {results['dataset']})")
    fig.tight_layout()
    written.append(outputs.save_figure(
        fig, os.path.join(workdir, f"{prefix}figure2{letter}_{panel}.png"), dpi=100))
  return written
