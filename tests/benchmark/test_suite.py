"""The one-command benchmark tables: rows, their commands, the smoke versions, the summary."""

import importlib.util
import json
import sys

import pytest

from experiments.benchmark import benchmark
from experiments.benchmark import suite


def test_table_rows_are_the_config_files_with_both_peers():
  rows, budget = suite.rows_of("table")
  assert [r.config for r in rows] == ["linear.py", "cnn.py", "cnn256.py", "resnet18.py",
                                      "vgg16.py"]
  assert budget is None
  command = rows[0].command("runs/t")
  assert command[:3] == [sys.executable, "-m", "experiments.benchmark"]
  assert "--config.compare=all" in command and "--workdir=runs/t/linear" in command


def test_gpu_rows_are_realistic_bf16_on_one_device_within_the_budget():
  rows, budget = suite.rows_of("gpu")
  assert budget < 8 * 60
  batches = {r.name: int(dict(r.fields)["batch_size"]) for r in rows}
  assert batches == {"linear_4096": 4096, "cnn_1024": 1024, "resnet18_256": 256,
                     "vgg16_256": 256, "resnet18_1024": 1024}
  for row in rows:
    fields = dict(row.fields)
    assert fields["compute_dtype"] == "bfloat16", row.name
    assert row.config == "linear.py" or row.config.endswith(":one_device"), row.name


def test_quick_rows_are_tiny_and_keep_microbatching():
  rows, budget = suite.rows_of("gpu:quick")
  assert budget is None  # every row runs in a smoke run
  for row in rows:
    fields = dict(row.fields)
    assert int(fields["batch_size"]) <= 8 and fields["steps"] == "1", row.name
  assert dict(rows[-1].fields)["microbatch_size"] == "1"


@pytest.mark.parametrize("bad", ["tpu", "gpu:fast", "table:slow"])
def test_bad_suite_is_named(bad):
  with pytest.raises(ValueError, match="--suite="):
    suite.rows_of(bad)


def test_summary_ratios_from_a_results_json():
  result = {"jax": {"nonprivate": {"median_ms": 10.0, "compile_s": 1.0},
                    "dp_vmap": {"median_ms": 30.0, "compile_s": 2.0},
                    "dp_ghost": {"median_ms": 12.0, "compile_s": 2.0},
                    "jax_privacy": {"median_ms": 40.0, "compile_s": 2.0}},
            "opacus": {"results": {"nonprivate": {"median_ms": 8.0}, "ew": {"median_ms": 24.0}}},
            "best_opacus_mode": "ew", "cpu_pressure_before": "some avg10=1.00 avg60=2.00"}
  row = suite.summarize_row(result)
  assert row["dpjax_best"] == 12.0
  assert row["dp_over_nonprivate"] == pytest.approx(1.2)
  assert row["over_jax_privacy"] == pytest.approx(0.3)
  assert row["over_opacus"] == pytest.approx(0.5)
  assert row["jax_over_torch_nonprivate"] == pytest.approx(1.25)
  table = suite.format_table({"cnn": row, "vgg16_256": {"skipped": "not started"}})
  assert "| cnn | 10.00 | 30.00 | 12.00 | 40.00 | 8.00 | 24.00 (ew) | 0.50 | 0.30 | 1.20 |" in table
  assert "| vgg16_256 | not started |" in table
  json.dumps(row)


@pytest.mark.slow
def test_a_quick_suite_row_runs_end_to_end(tmp_path, monkeypatch):
  monkeypatch.setitem(suite.SUITES, "one", (suite.Row("linear", "linear.py",
                                                      (("compute_dtype", "bfloat16"),)),))
  monkeypatch.setitem(suite.BUDGET_S, "one", 600.0)
  summary = suite.run_suite("one:quick", str(tmp_path))
  row = summary["rows"]["linear"]
  assert "error" not in row, row
  assert row["dp_ghost"] > 0
  if importlib.util.find_spec("jax_privacy") is not None:  # the `compare` extra
    assert row["jax_privacy"] > 0
  assert (tmp_path / "table.md").exists() and (tmp_path / "linear" / "results.json").exists()
