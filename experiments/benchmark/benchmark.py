r"""Step-time benchmark of dpjax's DP-SGD step against its own non-private step (and Opacus).

  python -m experiments.benchmark --config=experiments/benchmark/configs/cnn.py --workdir=runs/bench_cnn
  python -m experiments.benchmark --config=experiments/benchmark/configs/linear.py:ghost,jax \
      --workdir=runs/bench_linear --config.batch_size=512

For each variant (non-private; DP with per-example clipping by vmap, ghost norms, or auto) the
jitted step is compiled once (compile time and XLA's memory estimate recorded), run `warmup`
times, then `rounds` x `steps` times with `block_until_ready`; rounds of the variants are
interleaved so that the ratios are taken under the same load. Reported: median and minimum ms
per step, examples/s, cores used (process CPU time / wall time), peak memory (the device's
memory statistics where the backend has them, else the process's peak RSS), DP/non-DP ratios
and the CPU pressure (/proc/pressure/cpu) before and after: other processes on the machine
distort timings, so compare ratios within one run.

`compare="opacus"` runs the same model, batch, clip norm and noise in PyTorch/Opacus
(`experiments.benchmark.opacus_compare`; needs `pip install torch==2.13.0 opacus`, the
`compare` extra). `compare="jax_privacy"` adds jax_privacy 2.0.0's DP-SGD step
(`experiments.benchmark.jax_privacy_compare`, `pip install jax-privacy==2.0.0`) as one more JAX
variant, interleaved with dpjax's; `compare="all"` runs both peers. Whole tables, one process
per row: `experiments.benchmark.suite` (`--suite=table`, `--suite=gpu`). `cpu_devices` splits the host CPU into XLA devices (`dpjax.devices`): it must
be applied before JAX initialises, which `train_and_evaluate` does first thing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import sys
import time
from typing import Any, Callable, Mapping

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ml_collections import config_dict

from dpjax import clipping
from dpjax import devices
from dpjax import parallel
from dpjax import randomness
from dpjax import train
from dpjax.models import registry
from experiments.benchmark import jax_privacy_compare
from experiments.benchmark import opacus_compare
from experiments.common import configs
from experiments.common import outputs

WORKLOADS = ("linear", "cnn", "resnet18", "vgg16")
MODES = ("nonprivate", "dp", "all")
# Peers: Opacus (PyTorch, timed after the JAX variants) and jax_privacy (a JAX variant,
# interleaved with dpjax's); "all" runs both.
COMPARE = (None, "opacus", "jax_privacy", "all")
PER_EXAMPLE = ("vmap", "ghost", "auto")


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
  """One benchmark run; a config file's fields (configs/*.py), checked on creation."""
  workload: str = "cnn"
  batch_size: int = 64
  mode: str = "all"  # all: the non-private step and the DP step with both vmap and ghost
  per_example: str = "auto"  # with mode=dp
  steps: int = 20
  warmup: int = 2
  rounds: int = 1
  clip_norm: float = 1.0
  noise_multiplier: float = 1.1
  learning_rate: float = 0.1
  compute_dtype: str | None = None
  microbatch_size: int | None = None
  compare: str | None = None  # "opacus", "jax_privacy" or "all" (both)
  opacus_modes: tuple[str, ...] = ("hooks", "ew", "ghost")
  data_parallel: bool = False  # shard the batch over all local devices (dpjax.parallel)
  # Split the host CPU into this many XLA devices before JAX starts ("auto": one per core;
  # "0": JAX's default); with data_parallel the batch is sharded over them.
  cpu_devices: str = "0"
  json: bool = False  # print the results as JSON instead of a table
  seed: int = 0

  def __post_init__(self):
    checks = [("workload", self.workload, WORKLOADS), ("mode", self.mode, MODES),
              ("per_example", self.per_example, PER_EXAMPLE),
              ("compare", self.compare, COMPARE)]
    for name, value, valid in checks:
      if value not in valid:
        raise ValueError(f"--config.{name}={value!r}: expected one of {valid}.")
    for name in ("batch_size", "steps", "rounds"):
      if getattr(self, name) < 1:
        raise ValueError(f"--config.{name}={getattr(self, name)} must be >= 1.")
    if self.warmup < 0:
      raise ValueError(f"--config.warmup={self.warmup} must be >= 0.")
    if self.microbatch_size is not None and self.microbatch_size < 1:
      raise ValueError(f"--config.microbatch_size={self.microbatch_size} must be >= 1 (or "
                       "unset: no microbatching).")
    try:
      devices.resolve_count(self.cpu_devices)
    except ValueError:
      raise ValueError(f"--config.cpu_devices={self.cpu_devices!r}: expected a whole number "
                       ">= 0 or 'auto'.") from None


def default_config() -> config_dict.ConfigDict:
  """Every field of `BenchmarkConfig` at its default: what the config files start from.

  A field whose default is None is a typed placeholder, so that `--config.<field>=<value>`
  can still set it from the command line.
  """
  config = configs.config_dict_of(BenchmarkConfig)
  return config


# The tokens of a config file's argument, e.g. `cnn.py:ghost,jax` (comma-separated).
ARG_TOKENS = {
    "all": dict(mode="all"),  # non-private, DP vmap and DP ghost
    "nonprivate": dict(mode="nonprivate"),
    "vmap": dict(mode="dp", per_example="vmap"),
    "ghost": dict(mode="dp", per_example="ghost"),
    "auto": dict(mode="dp", per_example="auto"),
    "jax": dict(compare=None),  # without the PyTorch/Opacus comparison
    "opacus": dict(compare="opacus"),
    "jax_privacy": dict(compare="jax_privacy"),
    "peers": dict(compare="all"),  # Opacus and jax_privacy
    "one_device": dict(cpu_devices="0", data_parallel=False),
    "json": dict(json=True),
    "quick": dict(steps=2, warmup=1, rounds=1),  # a smoke run: the same code, few steps
}


def apply_arg(config: config_dict.ConfigDict, arg: str | None) -> config_dict.ConfigDict:
  """`config` changed by the tokens of a config file's argument (see `ARG_TOKENS`)."""
  for token in filter(None, (arg or "").split(",")):
    if token not in ARG_TOKENS:
      raise ValueError(f"config argument {token!r} is unknown; use comma-separated tokens "
                       f"from {sorted(ARG_TOKENS)}.")
    config.update(ARG_TOKENS[token])
  return config


def make_config(config: Mapping[str, Any] | Any) -> BenchmarkConfig:
  """The checked `BenchmarkConfig` of a ConfigDict (or a plain mapping of its fields)."""
  if isinstance(config, BenchmarkConfig):
    return config
  return configs.settings_from(BenchmarkConfig, config, opacus_modes=tuple, cpu_devices=str)


# --- workloads -------------------------------------------------------------------------------

LINEAR_FEATURES = 1999  # + 1 bias = 2000 parameters


def input_shape(workload: str) -> tuple[int, ...]:
  return (LINEAR_FEATURES,) if workload == "linear" else (32, 32, 3)


def make_workload(workload: str, batch_size: int, seed: int):
  """(model, params, per-example loss_fn, batch, mask) of a workload on random data."""
  num_outputs = 1 if workload == "linear" else 10
  model = registry.build_model(workload, num_outputs)
  key_x, key_y, key_init = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(key_x, (batch_size,) + input_shape(workload), jnp.float32)
  params = model.init(key_init, x[:1])
  if workload == "linear":
    y = jax.random.normal(key_y, (batch_size,), jnp.float32)
    def loss_fn(p, example):
      return jnp.square(model.apply(p, example["x"][None])[0, 0] - example["y"])
  else:
    y = jax.random.randint(key_y, (batch_size,), 0, num_outputs)
    def loss_fn(p, example):
      logits = model.apply(p, example["x"][None])[0]
      return optax.softmax_cross_entropy_with_integer_labels(logits, example["y"])
  return model, params, loss_fn, {"x": x, "y": y}, jnp.ones((batch_size,), bool)


# --- measurement ---------------------------------------------------------------------------

def cpu_pressure() -> str | None:
  try:
    with open("/proc/pressure/cpu") as f:
      return f.readline().strip()
  except OSError:
    return None


def peak_memory_bytes() -> dict:
  """Device peak where the backend reports it, else this process's peak RSS (since start)."""
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return {"kind": "device_peak_bytes_in_use", "bytes": int(stats["peak_bytes_in_use"])}
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return {"kind": "process_peak_rss", "bytes": int(rss * (1 if sys.platform == "darwin" else 1024))}


@dataclasses.dataclass
class _Variant:
  name: str
  step: Callable
  init: Callable | None = None  # params -> the step's state; None: dpjax's TrainState
  state: Any = None
  compiled: Any = None
  wall: list = dataclasses.field(default_factory=list)
  cpu: list = dataclasses.field(default_factory=list)
  info: dict = dataclasses.field(default_factory=dict)


def _variants(config: BenchmarkConfig, loss_fn, mesh) -> tuple[list[_Variant], Any]:
  optimizer = optax.sgd(config.learning_rate)
  make_dp = lambda *a: train.make_dp_step(*a, mesh=mesh)
  make_nonprivate = lambda *a: train.make_nonprivate_step(*a, mesh=mesh)
  out = []
  if config.mode in ("nonprivate", "all"):
    cast_loss = clipping.in_compute_dtype(loss_fn, config.compute_dtype)
    out.append(_Variant("nonprivate", make_nonprivate(cast_loss, optimizer)))
  methods = ("vmap", "ghost") if config.mode == "all" else (config.per_example,)
  if config.mode in ("dp", "all"):
    for method in methods:
      clip = clipping.ClippingConfig(clip_norm=config.clip_norm, method=method,
                                     compute_dtype=config.compute_dtype,
                                     microbatch_size=config.microbatch_size)
      dp = train.DPConfig(clip, config.noise_multiplier, float(config.batch_size))
      out.append(_Variant(f"dp_{method}", make_dp(loss_fn, optimizer, dp)))
  if config.mode in ("dp", "all") and config.compare in ("jax_privacy", "all"):
    try:
      jax_privacy_compare.check_installed()
    except ImportError as error:
      logging.warning("%s: the jax_privacy variant is skipped", error)
    else:
      init, step = jax_privacy_compare.make_step(
          loss_fn, optimizer, clip_norm=config.clip_norm,
          noise_multiplier=config.noise_multiplier, expected_batch_size=float(config.batch_size),
          noise_key=randomness.SECURE.key("benchmark", "jax_privacy"),
          compute_dtype=config.compute_dtype, microbatch_size=config.microbatch_size, mesh=mesh)
      out.append(_Variant("jax_privacy", step, init=init))
  return out, optimizer


def _run_steps(variant: _Variant, batch, mask, count: int, record: bool):
  for _ in range(count):
    wall, cpu = time.perf_counter(), time.process_time()
    variant.state, metrics = variant.compiled(variant.state, batch, mask)
    jax.block_until_ready((variant.state, metrics))
    if record:
      variant.wall.append(time.perf_counter() - wall)
      variant.cpu.append(time.process_time() - cpu)
  return metrics


def run_benchmark(config: BenchmarkConfig | dict) -> dict:
  """Runs the benchmark and returns its results (what `json=True` prints).

  JAX must already have the devices it should use (`train_and_evaluate` applies
  `cpu_devices` first).
  """
  config = make_config(config)
  _, params, loss_fn, batch, mask = make_workload(config.workload, config.batch_size, config.seed)
  mesh = parallel.data_mesh(jax.local_devices()) if config.data_parallel else None
  if mesh is not None:
    batch, mask = parallel.shard_batch(batch, mask, mesh)
  variants, optimizer = _variants(config, loss_fn, mesh)
  result = {
      "config": dataclasses.asdict(config),
      "environment": {
          "backend": jax.default_backend(), "devices": jax.device_count(),
          "cpu_count": os.cpu_count(), "jax": jax.__version__, "python": platform.python_version(),
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
      },
      "num_params": int(sum(np.size(x) for x in jax.tree.leaves(params))),
      "cpu_pressure_before": cpu_pressure(),
  }
  for variant in variants:
    # Timing only, nothing released: the noise key is still drawn like a real run's.
    fresh = jax.tree.map(jnp.copy, params)
    if variant.init is None:
      state = train.init_state(fresh, optimizer, randomness.SECURE.key("benchmark", variant.name))
    else:
      state = variant.init(fresh)
    if mesh is not None:
      state = parallel.replicate(state, mesh)
    start = time.perf_counter()
    variant.compiled = variant.step.lower(state, batch, mask).compile()
    variant.info["compile_s"] = time.perf_counter() - start
    memory = variant.compiled.memory_analysis()
    if memory is not None:
      variant.info["xla_temp_bytes"] = int(memory.temp_size_in_bytes)
      variant.info["xla_argument_bytes"] = int(memory.argument_size_in_bytes)
    variant.state = state
    metrics = _run_steps(variant, batch, mask, config.warmup, record=False)
    variant.info["peak_memory_after"] = peak_memory_bytes()
    if config.warmup:
      loss = float(metrics["loss"])
      if not np.isfinite(loss):
        raise FloatingPointError(f"{variant.name}: loss {loss} after warm-up")
  for _ in range(config.rounds):  # interleaved: every variant sees the same load
    for variant in variants:
      _run_steps(variant, batch, mask, config.steps, record=True)
  results = {}
  for variant in variants:
    wall, cpu = np.asarray(variant.wall), np.asarray(variant.cpu)
    median = float(np.median(wall))
    results[variant.name] = {
        "median_ms": 1e3 * median, "min_ms": 1e3 * float(np.min(wall)),
        "examples_per_sec": config.batch_size / median,
        "cores_used": float(np.sum(cpu) / np.sum(wall)),
        "steps_timed": int(wall.size), **variant.info,
    }
  result["jax"] = results
  result["peak_memory"] = peak_memory_bytes()
  if "nonprivate" in results:
    base = results["nonprivate"]["median_ms"]
    result["dp_over_nonprivate"] = {name: r["median_ms"] / base for name, r in results.items()
                                    if name != "nonprivate"}
  dpjax_dp = [name for name in results if name.startswith("dp_")]
  if "jax_privacy" in results:
    peer = results["jax_privacy"]["median_ms"]
    result["dpjax_over_jax_privacy"] = {name: results[name]["median_ms"] / peer
                                        for name in dpjax_dp}
  elif config.compare in ("jax_privacy", "all") and config.mode != "nonprivate":
    result["jax_privacy_error"] = (f"jax_privacy is not installed: `pip install "
                                   f"jax-privacy=={jax_privacy_compare.VERSION}`")
  if config.compare in ("opacus", "all"):
    result["opacus"] = _compare_opacus(config, batch)
    best = {name: r["median_ms"] for name, r in result["opacus"].get("results", {}).items()
            if name != "nonprivate"}
    if best:
      best_name = min(best, key=best.get)
      result["dpjax_over_best_opacus"] = {
          name: r["median_ms"] / best[best_name] for name, r in results.items() if name != "nonprivate"}
      result["best_opacus_mode"] = best_name
  result["cpu_pressure_after"] = cpu_pressure()
  return result


def _compare_opacus(config: BenchmarkConfig, batch) -> dict:
  try:
    opacus_compare.check_installed()
  except ImportError as error:
    return {"error": f"{error}. Install the comparison with `pip install torch==2.13.0 opacus` "
                     "(or `pip install -e .[compare]`)."}
  return opacus_compare.run(
      config.workload, np.asarray(batch["x"]), np.asarray(batch["y"]), steps=config.steps,
      warmup=config.warmup, rounds=config.rounds, clip_norm=config.clip_norm,
      noise_multiplier=config.noise_multiplier, learning_rate=config.learning_rate,
      modes=config.opacus_modes, seed=config.seed)


def format_table(result: dict) -> str:
  lines = [f"workload={result['config']['workload']} batch={result['config']['batch_size']} "
           f"params={result['num_params']} backend={result['environment']['backend']}",
           f"cpu pressure before: {result['cpu_pressure_before']}",
           "| variant | median ms | min ms | examples/s | cores | compile s | / non-DP |",
           "|---|---|---|---|---|---|---|"]
  ratios = result.get("dp_over_nonprivate", {})
  for name, r in result["jax"].items():
    ratio = ratios.get(name)
    lines.append(f"| jax {name} | {r['median_ms']:.2f} | {r['min_ms']:.2f} | "
                 f"{r['examples_per_sec']:.0f} | {r['cores_used']:.2f} | {r['compile_s']:.1f} | "
                 f"{'' if ratio is None else f'{ratio:.2f}'} |")
  opacus = result.get("opacus", {})
  for name, r in opacus.get("results", {}).items():
    lines.append(f"| torch {name} | {r['median_ms']:.2f} | {r['min_ms']:.2f} | "
                 f"{r['examples_per_sec']:.0f} | {r['cores_used']:.2f} | | |")
  if "error" in opacus:
    lines.append(f"opacus: {opacus['error']}")
  if "dpjax_over_jax_privacy" in result:
    lines.append("dpjax DP / jax_privacy: " + ", ".join(
        f"{k}={v:.2f}" for k, v in result["dpjax_over_jax_privacy"].items()))
  if "jax_privacy_error" in result:
    lines.append(f"jax_privacy: {result['jax_privacy_error']}")
  if "dpjax_over_best_opacus" in result:
    lines.append(f"dpjax DP / best Opacus ({result['best_opacus_mode']}): " + ", ".join(
        f"{k}={v:.2f}" for k, v in result["dpjax_over_best_opacus"].items()))
  lines.append(f"peak memory ({result['peak_memory']['kind']}): "
               f"{result['peak_memory']['bytes'] / 2**20:.0f} MiB")
  lines.append(f"cpu pressure after: {result['cpu_pressure_after']}")
  return "\n".join(lines)


def train_and_evaluate(config, workdir: str) -> dict:
  """Applies `cpu_devices`, runs the benchmark, writes results.json and results.md; returns it.

  The device split must come before any JAX computation: this is the first thing done.
  """
  config = make_config(config)
  devices.use_cpu_devices(config.cpu_devices)
  result = run_benchmark(config)
  result["outputs"] = {"results_json": os.path.join(workdir, "results.json"),
                       "results_md": os.path.join(workdir, "results.md")}
  outputs.write_json(result["outputs"]["results_json"], result)
  outputs.atomic_write_text(result["outputs"]["results_md"], format_table(result) + "\n")
  logging.info("wrote %s", ", ".join(result["outputs"].values()))
  return result


def summarize(result: dict) -> str:
  """What `main` prints: the table, or the whole result as JSON with `json=True`."""
  if result["config"]["json"]:
    return json.dumps(outputs.json_safe(result), indent=2)
  return format_table(result)
