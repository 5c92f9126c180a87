"""The benchmark tool on the linear workload: two timed steps per variant."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import benchmark


def test_run_benchmark_linear_all_variants():
  result = benchmark.run_benchmark(dict(workload="linear", batch_size=8, steps=2, warmup=1))
  assert result["num_params"] == benchmark.LINEAR_FEATURES + 1 == 2000
  assert set(result["jax"]) == {"nonprivate", "dp_vmap", "dp_ghost"}
  for name, r in result["jax"].items():
    assert r["steps_timed"] == 2, name
    assert 0 < r["min_ms"] <= r["median_ms"]
    np.testing.assert_allclose(r["examples_per_sec"], 8 / (r["median_ms"] / 1e3), rtol=1e-6)
    assert r["compile_s"] > 0 and r["xla_temp_bytes"] >= 0
  for name, ratio in result["dp_over_nonprivate"].items():
    np.testing.assert_allclose(
        ratio, result["jax"][name]["median_ms"] / result["jax"]["nonprivate"]["median_ms"])
  assert result["peak_memory"]["bytes"] > 10 * 2**20  # at least the Python process itself
  assert result["environment"]["backend"] == jax.default_backend()
  json.dumps(result)  # --json must be able to print it
  assert "jax dp_ghost" in benchmark.format_table(result)


def test_workload_loss_is_the_stated_one():
  _, params, loss_fn, batch, _ = benchmark.make_workload("linear", 4, seed=1)
  kernel = params["params"]["head"]["kernel"][:, 0]
  bias = params["params"]["head"]["bias"][0]
  expected = (np.asarray(batch["x"][2]) @ np.asarray(kernel) + bias - batch["y"][2]) ** 2
  np.testing.assert_allclose(loss_fn(params, {"x": batch["x"][2], "y": batch["y"][2]}), expected,
                             rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("field,value", [("workload", "mlp"), ("mode", "fast"), ("steps", 0)])
def test_bad_settings_are_named(field, value):
  with pytest.raises(ValueError, match=field):
    benchmark.BenchmarkConfig(**{field: value})


def test_cli_rejects_bad_flag_with_its_name():
  out = subprocess.run([sys.executable, "-m", "experiments.benchmark", "--workload=linear",
                        "--batch_size=0"], capture_output=True, text=True, check=False)
  assert out.returncode != 0 and "batch_size" in out.stderr
