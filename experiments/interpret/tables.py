"""The study's markdown tables, from the numbers `experiment.train_and_evaluate` collects."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from experiments.common import outputs
from experiments.interpret import gradcam
from experiments.interpret import robustness as robustness_lib


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
  return outputs.markdown_table([dict(zip(header, row)) for row in rows], header)


def epsilon_table(rows: Mapping[str, dict]) -> str:
  """Metrics down, epsilons across (study Tables 1-2)."""
  labels = list(rows)
  keys = ["test_accuracy"] + [f"{m}_{s}" for m in gradcam.METHODS
                              for s in ("average_drop", "increase_in_confidence", "masked_score",
                                        "cross_image_similarity")]
  body = [[key] + [rows[label].get(key, math.nan) for label in labels] for key in keys]
  body.append(["noise_multiplier"] + [rows[label]["noise_multiplier"] for label in labels])
  return _table(["metric (%)"] + [f"eps={label}" for label in labels], body)


def clip_sweep_table(sweep: Mapping[str, dict]) -> str:
  return _table(
      ["clip norm S", "test accuracy %", "Grad-CAM masked score %", "Grad-CAM average drop %"],
      [[s, r["test_accuracy"], r["gradcam_masked_score"], r["gradcam_average_drop"]]
       for s, r in sweep.items()])


def global_vs_local_table(gaussian: Mapping[str, dict], local: Mapping[str, dict]) -> str:
  """DP-SGD (epsilon per image) beside local DP (epsilon per pixel and per image)."""
  side = [["global (DP-SGD Gaussian)", f"{e} per image", r["test_accuracy"],
           r["gradcam_average_drop"], r["gradcam_increase_in_confidence"],
           r["gradcam_masked_score"]] for e, r in gaussian.items()]
  side += [["local (Laplace pixels" + (", labels in clear)" if r["per_label_epsilon"] is None
                                      else f", labels RR eps {r['per_label_epsilon']:g})"),
            f"{e} per pixel ({r['per_image_epsilon']:g} per image)",
            r["test_accuracy"], r["gradcam_average_drop"], r["gradcam_increase_in_confidence"],
            r["gradcam_masked_score"]] for e, r in local.items()]
  return _table(["setting", "epsilon", "test accuracy %", "average drop %",
                 "increase in confidence %", "masked score %"], side)


def robustness_table(robust: Mapping[str, dict], attack_radius: float) -> str:
  rows = []
  for name, r in robust.items():
    for row_name, v in r["table"].items():
      method, attack = row_name.split("/")
      rows.append([name, method, attack, v["topk_intersection"], v["cosine"], v["cosine_min"]])
  return _table(["model", "attribution", "perturbation (l2 = %g)" % attack_radius,
                 "top-k intersection", "cosine", "min cosine"], rows)


def certified_table(robust: Mapping[str, dict], radii: Sequence[float], confidence: float,
                    fraction: float) -> str:
  rows = [[name, bound] + list(r["certified_fraction"][bound])
          for name, r in robust.items() for bound in robustness_lib.BOUNDS]
  return (_table(["model", "bound"] + [f"L={x:g}" for x in radii], rows) +
          f"\nrdp, gaussian: Clopper-Pearson at confidence {confidence:g}, Bonferroni over the "
          "2P per-pixel bounds (a lower and an upper bound per pixel: the top-k is chosen from "
          "the same counts); rdp_exact: Monte Carlo estimates taken as exact (no "
          "certificate).\n" +
          f"\nmedian certified radius at fraction {fraction:g}: " +
          ", ".join(f"{n} rdp {np.median(r['certified_radius_rdp']):.4f} / gaussian "
                    f"{np.median(r['certified_radius_gaussian']):.4f}"
                    for n, r in robust.items()) + "\n")


def cost_table(cost: Sequence[dict]) -> str:
  return _table(["T", "sampling s/image", "certify s/image", "certified radius (rdp)"],
                [[c["T"], c["sampling_seconds"], c["certify_seconds"], c["certified_radius"]]
                 for c in cost])
