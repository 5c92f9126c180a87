r"""Whole benchmark tables in one command: every row in its own process, one combined table.

  python -m experiments.benchmark.suite --suite=table --workdir=runs/bench_table     # the CPU table
  python -m experiments.benchmark.suite --suite=gpu --workdir=runs/bench_gpu         # one GPU
  python -m experiments.benchmark.suite --suite=gpu:quick --workdir=runs/bench_gpu_quick  # smoke

Each row is `python -m experiments.benchmark --config=<row's config file> --workdir=<workdir>/<row>
--config.<field>=<value> ...` in a fresh process (the CPU device split happens before JAX starts,
and an out-of-memory row cannot take the others down). The rows' `results.json` are gathered into
`<workdir>/table.md` and `<workdir>/table.json`: per row the median ms per step of JAX non-DP,
dpjax DP vmap and ghost, jax_privacy, PyTorch non-DP and Opacus's best mode, the ratios, the
compile times and the CPU pressure before the row.

Suites:
  table  the five CPU rows of the README's table (configs/*.py as they are: 20 or 10 steps x 2
         interleaved rounds, Opacus and jax_privacy). About 25 minutes on 2 idle cores.
  gpu    on one GPU, realistic batches (linear 4096; CNN 1024; ResNet-18 256 and 1024 in
         microbatches of 256; VGG-16 256), bf16 compute (clipping, sums and noise stay float32),
         every variant and both peers, 10 steps x 2 rounds. A row is not started once
         `budget_s` (420 s) has passed, so the suite ends within 8 minutes; a row that was not
         run is listed as skipped, never dropped.
  :quick tiny batches, one step: the same code path, for a CPU smoke run of a suite.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

from experiments.common import outputs

CONFIGS = "experiments/benchmark/configs"


@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  config: str  # a config file with its argument, e.g. "resnet18.py:one_device"
  fields: tuple[tuple[str, str], ...] = ()  # --config.<field>=<value> overrides

  def command(self, workdir: str) -> list[str]:
    return ([sys.executable, "-m", "experiments.benchmark", f"--config={CONFIGS}/{self.config}",
             f"--workdir={os.path.join(workdir, self.name)}", "--config.compare=all"]
            + [f"--config.{k}={v}" for k, v in self.fields])


def _gpu_row(name, config, batch, *extra):
  fields = (("batch_size", str(batch)), ("compute_dtype", "bfloat16"), ("steps", "10"),
            ("rounds", "2"), ("warmup", "2")) + tuple(extra)
  return Row(name, config, fields)


SUITES = {
    "table": (Row("linear", "linear.py"), Row("cnn", "cnn.py"), Row("cnn256", "cnn256.py"),
              Row("resnet18", "resnet18.py"), Row("vgg16", "vgg16.py")),
    "gpu": (_gpu_row("linear_4096", "linear.py", 4096),
            _gpu_row("cnn_1024", "cnn.py:one_device", 1024),
            _gpu_row("resnet18_256", "resnet18.py:one_device", 256),
            _gpu_row("vgg16_256", "vgg16.py:one_device", 256),
            _gpu_row("resnet18_1024", "resnet18.py:one_device", 1024,
                     ("microbatch_size", "256"))),
}
BUDGET_S = {"table": None, "gpu": 420.0}
QUICK_BATCH = {"linear": 8, "cnn": 4, "resnet18": 2, "vgg16": 2}


def quick(row: Row) -> Row:
  """The row at a tiny batch, one step: the same code path in seconds (plus compiles)."""
  workload = row.config.split(".py")[0]
  fields = dict(row.fields)
  fields.update(batch_size=str(QUICK_BATCH[workload]), steps="1", rounds="1", warmup="1")
  fields.pop("microbatch_size", None)
  if "microbatch_size" in dict(row.fields):
    fields["microbatch_size"] = "1"  # still microbatched: two chunks
  return dataclasses.replace(row, fields=tuple(fields.items()))


def rows_of(suite: str) -> tuple[tuple[Row, ...], float | None]:
  """The rows of `suite` ("gpu", "table", with ":quick" for the smoke version) and its budget."""
  name, _, arg = suite.partition(":")
  if name not in SUITES or arg not in ("", "quick"):
    raise ValueError(f"--suite={suite!r}: expected one of {sorted(SUITES)}, optionally with "
                     "':quick' (e.g. --suite=gpu:quick).")
  rows = SUITES[name]
  if arg:  # a smoke run proves every row's code path: no time budget
    return tuple(map(quick, rows)), None
  return rows, BUDGET_S[name]


def summarize_row(result: dict) -> dict:
  """The table's numbers from one row's results.json."""
  jax_results = result.get("jax", {})
  median = lambda name: jax_results.get(name, {}).get("median_ms")
  opacus = result.get("opacus", {}).get("results", {})
  best_mode = result.get("best_opacus_mode")
  out = {
      "jax_nonprivate": median("nonprivate"), "dp_vmap": median("dp_vmap"),
      "dp_ghost": median("dp_ghost"), "jax_privacy": median("jax_privacy"),
      "torch_nonprivate": opacus.get("nonprivate", {}).get("median_ms"),
      "opacus_best": opacus.get(best_mode, {}).get("median_ms") if best_mode else None,
      "opacus_best_mode": best_mode,
      "compile_s": {name: r.get("compile_s") for name, r in jax_results.items()},
      "cpu_pressure_before": result.get("cpu_pressure_before"),
      "backend": result.get("environment", {}).get("backend"),
  }
  dp = min((v for v in (out["dp_vmap"], out["dp_ghost"]) if v is not None), default=None)
  ratio = lambda a, b: None if a is None or not b else a / b
  out.update(dpjax_best=dp, dp_over_nonprivate=ratio(dp, out["jax_nonprivate"]),
             over_jax_privacy=ratio(dp, out["jax_privacy"]),
             over_opacus=ratio(dp, out["opacus_best"]),
             jax_over_torch_nonprivate=ratio(out["jax_nonprivate"], out["torch_nonprivate"]))
  return out


def format_table(rows: dict) -> str:
  fmt = lambda v, spec=".2f": "" if v is None else format(v, spec)
  lines = ["| row | JAX non-DP | dpjax vmap | dpjax ghost | jax_privacy | PyTorch non-DP | "
           "Opacus best | dpjax / Opacus | dpjax / jax_privacy | dpjax DP / non-DP | "
           "compile s (non-DP / vmap / ghost / jax_privacy) | pressure before |",
           "|---" * 12 + "|"]
  for name, r in rows.items():
    if "error" in r or "skipped" in r:
      lines.append(f"| {name} | {r.get('error') or r.get('skipped')} |" + " |" * 10)
      continue
    compile_s = " / ".join(fmt(r["compile_s"].get(k), ".0f")
                           for k in ("nonprivate", "dp_vmap", "dp_ghost", "jax_privacy"))
    mode = f" ({r['opacus_best_mode']})" if r["opacus_best_mode"] else ""
    pressure = (r["cpu_pressure_before"] or "").split(" avg60")[0].replace("some ", "")
    lines.append(
        f"| {name} | {fmt(r['jax_nonprivate'])} | {fmt(r['dp_vmap'])} | {fmt(r['dp_ghost'])} | "
        f"{fmt(r['jax_privacy'])} | {fmt(r['torch_nonprivate'])} | {fmt(r['opacus_best'])}{mode} | "
        f"{fmt(r['over_opacus'])} | {fmt(r['over_jax_privacy'])} | "
        f"{fmt(r['dp_over_nonprivate'])} | {compile_s} | {pressure} |")
  lines.append("")
  lines.append("Median ms per step; dpjax = the faster of its vmap and ghost steps.")
  return "\n".join(lines)


def run_suite(suite: str, workdir: str, extra_fields: dict | None = None) -> dict:
  """Runs every row of `suite` in its own process; writes and returns the combined table."""
  rows, budget = rows_of(suite)
  start = time.perf_counter()
  table: dict = {}
  for row in rows:
    if extra_fields:
      row = dataclasses.replace(row, fields=row.fields + tuple(extra_fields.items()))
    elapsed = time.perf_counter() - start
    if budget is not None and elapsed > budget:
      table[row.name] = {"skipped": f"not started: {elapsed:.0f} s > budget {budget:.0f} s"}
      continue
    command = row.command(workdir)
    print(" ".join(command), flush=True)
    row_start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    results_path = os.path.join(workdir, row.name, "results.json")
    if done.returncode or not os.path.exists(results_path):
      tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
      table[row.name] = {"error": f"exit {done.returncode}: {tail[0][:200]}"}
    else:
      with open(results_path) as f:
        table[row.name] = summarize_row(json.load(f))
    table[row.name]["wall_s"] = time.perf_counter() - row_start
    print(f"  {row.name}: {table[row.name]['wall_s']:.0f} s", flush=True)
    _write(workdir, suite, table, start)  # after every row: a stopped run keeps its rows
  text, summary = _write(workdir, suite, table, start)
  print(text)
  return summary


def _write(workdir: str, suite: str, table: dict, start: float) -> tuple[str, dict]:
  summary = {"suite": suite, "total_s": time.perf_counter() - start, "rows": table}
  outputs.write_json(os.path.join(workdir, "table.json"), summary)
  text = format_table(table) + f"\n\nsuite {suite}: {summary['total_s']:.0f} s in all.\n"
  outputs.atomic_write_text(os.path.join(workdir, "table.md"), text)
  return text, summary


def define_flags():
  """The command-line flags, defined only when run as a program: the benchmark tools share
  names (--workload, --workdir) and tests import several of them into one process."""
  flags.DEFINE_string("suite", "table", "table, gpu, or either with ':quick' (a smoke run).")
  flags.DEFINE_string("workdir", None, "Where each row's results and the combined table go.")


def main(argv):
  del argv
  if not flags.FLAGS.workdir:
    raise app.UsageError("--workdir is required (e.g. --workdir=runs/bench_table).")
  run_suite(flags.FLAGS.suite, flags.FLAGS.workdir)


if __name__ == "__main__":
  define_flags()
  app.run(main)
