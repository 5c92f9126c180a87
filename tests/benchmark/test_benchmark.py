"""The benchmark tool on the linear workload: two timed steps per variant; its configs."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments.benchmark import benchmark
from experiments.benchmark.configs import cnn
from experiments.benchmark.configs import cnn256
from experiments.benchmark.configs import linear
from experiments.benchmark.configs import resnet18
from experiments.benchmark.configs import vgg16


@pytest.mark.slow
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
  json.dumps(result)  # json=True must be able to print it
  assert "jax dp_ghost" in benchmark.format_table(result)


def test_train_and_evaluate_writes_the_results(tmp_path):
  config = linear.get_config("ghost,jax,quick")
  config.batch_size = 8
  result = benchmark.train_and_evaluate(config, str(tmp_path))
  assert set(result["jax"]) == {"dp_ghost"} and "opacus" not in result
  written = json.loads((tmp_path / "results.json").read_text())
  assert written["config"]["per_example"] == "ghost" and written["config"]["batch_size"] == 8
  assert "jax dp_ghost" in (tmp_path / "results.md").read_text()
  assert "jax dp_ghost" in benchmark.summarize(result)
  result["config"]["json"] = True  # as --config.json=true gives
  assert json.loads(benchmark.summarize(result))["jax"]["dp_ghost"]["steps_timed"] == 2


def test_workload_loss_is_the_stated_one():
  _, params, loss_fn, batch, _ = benchmark.make_workload("linear", 4, seed=1)
  kernel = params["params"]["head"]["kernel"][:, 0]
  bias = params["params"]["head"]["bias"][0]
  expected = (np.asarray(batch["x"][2]) @ np.asarray(kernel) + bias - batch["y"][2]) ** 2
  np.testing.assert_allclose(loss_fn(params, {"x": batch["x"][2], "y": batch["y"][2]}), expected,
                             rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("field,value", [("workload", "mlp"), ("mode", "fast"), ("steps", 0),
                                         ("cpu_devices", "many"), ("microbatch_size", 0)])
def test_bad_settings_are_named(field, value):
  with pytest.raises(ValueError, match=f"--config.{field}="):
    benchmark.BenchmarkConfig(**{field: value})


def test_unknown_fields_are_refused_with_the_valid_ones():
  with pytest.raises(ValueError, match=r"unknown config field\(s\) \['output'\].*workload"):
    benchmark.make_config({"output": "x.json"})


def test_the_configs_are_the_rows_of_the_performance_table():
  rows = {m.__name__.rsplit(".", 1)[1]: benchmark.make_config(m.get_config())
          for m in (linear, cnn, cnn256, resnet18, vgg16)}
  assert {name: (c.workload, c.batch_size, c.steps) for name, c in rows.items()} == {
      "linear": ("linear", 256, 20), "cnn": ("cnn", 64, 20), "cnn256": ("cnn", 256, 10),
      "resnet18": ("resnet18", 32, 10), "vgg16": ("vgg16", 16, 10)}
  for name, c in rows.items():
    assert c.rounds == 2 and c.compare == "all" and c.mode == "all", name
    assert (c.cpu_devices, c.data_parallel) == (("0", False) if name == "linear" else ("2", True))


def test_config_argument_tokens():
  config = benchmark.make_config(cnn.get_config("ghost,jax,one_device,quick,json"))
  assert (config.mode, config.per_example, config.compare) == ("dp", "ghost", None)
  assert (config.cpu_devices, config.data_parallel, config.json) == ("0", False, True)
  assert (config.steps, config.rounds, config.batch_size) == (2, 1, 64)
  assert benchmark.make_config(cnn256.get_config("vmap")).per_example == "vmap"
  with pytest.raises(ValueError, match="'fast' is unknown"):
    cnn.get_config("fast")


@pytest.mark.slow
def test_cli_rejects_bad_field_with_its_name(tmp_path):
  out = subprocess.run([sys.executable, "-m", "experiments.benchmark",
                        "--config=experiments/benchmark/configs/linear.py:quick,jax",
                        f"--workdir={tmp_path}", "--config.batch_size=0"],
                       capture_output=True, text=True, check=False)
  assert out.returncode != 0 and "--config.batch_size=0" in out.stderr


def test_compare_takes_the_peers():
  for value in ("opacus", "jax_privacy", "all"):
    assert benchmark.BenchmarkConfig(compare=value).compare == value
  with pytest.raises(ValueError, match="--config.compare='tf'"):
    benchmark.BenchmarkConfig(compare="tf")
  assert benchmark.make_config(linear.get_config("peers")).compare == "all"


def test_jax_privacy_is_interleaved_with_dpjax(tmp_path):
  pytest.importorskip("jax_privacy")
  config = linear.get_config("all,jax_privacy,quick")
  config.batch_size = 8
  result = benchmark.train_and_evaluate(config, str(tmp_path))
  assert set(result["jax"]) == {"nonprivate", "dp_vmap", "dp_ghost", "jax_privacy"}
  assert set(result["dpjax_over_jax_privacy"]) == {"dp_vmap", "dp_ghost"}
  assert "dpjax DP / jax_privacy" in benchmark.format_table(result)
