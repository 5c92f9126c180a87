"""What a run releases, what covers it, and what stays private.

Every workdir separates released outputs (parameters, DP-computed quantities, synthetic data,
evaluation on held-out data, plots of those) from private diagnostics (training loss, gradient
norms, clipped fraction, realised batch sizes, training accuracy, seeds and keys, data-derived
statistics), which live under `<workdir>/private/` and never in `results.json` or a table.

`write_privacy_report` writes `privacy_report.json` and `privacy_report.md`: for each release its
epsilon, delta, accountant, mechanism, sampling, steps and phases, noise multiplier and clip norm;
the source of the secret randomness; the files covered; and a plain list of what the guarantee
does not cover. It is what a researcher attaches to a paper beside the numbers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Sequence

from dpjax import accounting
from dpjax import randomness as randomness_lib

PRIVATE_DIR = "private"
REPORT_JSON = "privacy_report.json"
REPORT_MD = "privacy_report.md"

ALWAYS_NOT_COVERED = (
    f"the files under {PRIVATE_DIR}/ (training statistics, checkpoints with the secret noise key, "
    "seeds): private diagnostics, never to be released",
)


ADJACENCY = {
    "example": "add or remove one example (replace-one for fixed-size sampling)",
    "person": "add or remove one person with all of their records (per-person privacy: each "
              "person contributes one clipped term per step, at most k records of theirs)",
}


def private_dir(workdir: str) -> str:
  """`<workdir>/private`, created: where private diagnostics and secrets go."""
  path = os.path.join(workdir, PRIVATE_DIR)
  os.makedirs(path, exist_ok=True)
  return path


def save_secret_seed(workdir: str, randomness: randomness_lib.PrivateRandomness) -> str | None:
  """Keeps an opted-in secret seed under `<workdir>/private/` (nothing to keep when secure)."""
  if randomness.secure:
    return None
  path = os.path.join(private_dir(workdir), "secret_seed.json")
  _atomic_write(path, json.dumps({
      "secret_seed": randomness.secret_seed,
      "warning": "keys every private draw of this run: anyone holding it can undo the noise"}) + "\n")
  return path


def _finite(x):
  return x if isinstance(x, (int, str)) or (isinstance(x, float) and math.isfinite(x)) else str(x)


def release_from_ledger(name: str, files: Sequence[str], ledger: accounting.PrivacyLedger,
                        delta: float, accountant: str = "rdp", *, clip_norm: float | None = None,
                        unit: str | None = None) -> dict:
  """The report entry of an output released from a DP-SGD (or Laplace) training run.

  `unit` defaults to the ledger's unit of privacy ("example", or "person" for per-person DP).
  """
  phases = [dataclasses.asdict(p) for p in ledger.phases]
  last = ledger.current
  if unit is None:
    unit = last.unit if last is not None else "example"
  if last is None or last.noise_multiplier == 0:
    epsilon = math.inf if ledger.steps else 0.0
  elif last.mechanism == "laplace" and all(p.mechanism == "laplace" for p in ledger.phases):
    epsilon = accounting.pure_epsilon(ledger.phases)
    if accountant == "pld":
      epsilon = min(epsilon, ledger.epsilon(delta, "pld"))
  else:
    epsilon = ledger.epsilon(delta, accountant)
  return {
      "name": name, "files": list(files), "unit": unit,
      "epsilon": _finite(epsilon), "delta": delta, "accountant": accountant,
      "mechanism": "none (non-private)" if last is None or last.noise_multiplier == 0
                   else f"DP-SGD, {last.mechanism} noise",
      "sampling": None if last is None else last.sampling,
      "steps": ledger.steps, "phases": phases,
      "noise_multiplier": None if last is None else last.noise_multiplier,
      "clip_norm": clip_norm,
      "_ledger": ledger.to_dict(),
  }


def release(name: str, files: Sequence[str], *, epsilon: float, delta: float, mechanism: str,
            unit: str = "example", **details) -> dict:
  """A report entry for a mechanism other than a training run (AdaSSP, local DP, a histogram)."""
  return {"name": name, "files": list(files), "unit": unit, "epsilon": _finite(epsilon),
          "delta": delta, "mechanism": mechanism, **details}


def _composed_epsilon(releases: Sequence[dict], delta: float, accountant: str) -> float | None:
  """Epsilon of releasing every private training-run output together (their ledgers composed)."""
  phases = []
  for r in releases:
    if "_ledger" not in r:
      return None
    ledger = accounting.PrivacyLedger.from_dict(r["_ledger"])
    if any(p.noise_multiplier == 0 and p.steps for p in ledger.phases):
      continue  # a non-private reference is listed on its own; it would make the total inf
    phases += ledger.phases
  try:
    return accounting.compute_epsilon(phases, delta, accountant)
  except ValueError:
    return None


def write_privacy_report(workdir: str, releases: Sequence[dict],
                         randomness: randomness_lib.PrivateRandomness,
                         not_covered: Sequence[str] = (), unit: str | None = None,
                         notes: Sequence[str] = ()) -> tuple[str, str]:
  """Writes `privacy_report.json` and `.md` into `workdir`; returns their paths.

  `unit` defaults to "person" when every release is per person (`dpjax.user_level`), else
  "example".
  """
  os.makedirs(workdir, exist_ok=True)
  releases = [dict(r) for r in releases]
  if unit is None:
    per_person = releases and all(r.get("unit") == "person" for r in releases)
    unit = "person" if per_person else "example"
  report = {
      "unit": unit,
      "adjacency": ADJACENCY.get(unit, f"add or remove one {unit}"),
      **randomness.describe(),
      "releases": [{k: v for k, v in r.items() if not k.startswith("_")} for r in releases],
      "not_covered": list(not_covered) + list(ALWAYS_NOT_COVERED),
      "notes": list(notes),
  }
  if len(releases) == 1:
    single = report["releases"][0]
    for key in ("epsilon", "delta", "accountant", "mechanism", "sampling", "steps", "phases",
                "noise_multiplier", "clip_norm", "files"):
      if key in single:
        report[key] = single[key]
  elif releases:
    delta = max(r["delta"] for r in releases if r.get("delta") is not None) if any(
        r.get("delta") is not None for r in releases) else None
    accountant = releases[0].get("accountant", "rdp")
    together = _composed_epsilon(releases, delta, accountant) if delta else None
    report["epsilon_all_releases_together"] = None if together is None else _finite(together)
    report["notes"].append(
        "each release's epsilon holds for that output alone; publishing several outputs "
        "trained on the same data composes their costs"
        + ("" if together is None else f" (all of them together: epsilon {together:.4g} at "
                                       f"delta {delta:g}, {accountant})"))
  json_path = os.path.join(workdir, REPORT_JSON)
  md_path = os.path.join(workdir, REPORT_MD)
  _atomic_write(json_path, json.dumps(report, indent=2, default=_finite) + "\n")
  _atomic_write(md_path, markdown(report))
  return json_path, md_path


def markdown(report: dict) -> str:
  unit_line = f"Unit of privacy: one {report['unit']}; adjacency: {report['adjacency']}."
  if report["unit"] == "person":
    unit_line = ("The guarantee is **per person**: epsilon bounds what the outputs reveal about "
                 "any one person, however many records they have. " + unit_line)
  lines = ["# Privacy report", "", unit_line, "",
           f"Secret randomness: {report['source']}."]
  if "condition" in report:
    lines.append(f"**Condition:** {report['condition']}.")
  lines += ["", "| release | epsilon | delta | mechanism | accountant | sampling | steps | "
                "noise multiplier | clip norm | files |", "|---|---|---|---|---|---|---|---|---|---|"]
  for r in report["releases"]:
    eps = r.get("epsilon")
    eps = f"{eps:.4g}" if isinstance(eps, float) else str(eps)
    lines.append("| " + " | ".join(str(x) for x in (
        r["name"], eps, r.get("delta"), r.get("mechanism"), r.get("accountant", ""),
        r.get("sampling", ""), r.get("steps", ""), r.get("noise_multiplier", ""),
        r.get("clip_norm", ""), ", ".join(r.get("files", [])))) + " |")
  lines += ["", "## Not covered by the guarantee", ""]
  lines += [f"- {item}" for item in report["not_covered"]]
  if report.get("notes"):
    lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
  return "\n".join(lines) + "\n"


def _atomic_write(path: str, text: str) -> None:
  tmp = f"{path}.tmp{os.getpid()}"  # processes of a multi-host run may write the same report
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)
