"""How many XLA devices the host CPU is split into.

XLA's CPU backend runs one program on one device and, for the small convolutions of DP image
models, keeps only ~1.2-1.5 of 2 cores busy. Splitting the CPU into one device per core and
sharding the batch over them (`dpjax.parallel`, `LoopConfig.data_parallel`) kept both busy and
cut the CIFAR CNN's DP step from 67 to 38 ms on a 2-core machine (experiments/benchmark/README.md).

The split must be chosen before JAX initialises its backends, i.e. before the first computation
or `jax.devices()` call; entry points call `use_cpu_devices` first thing in `main`.
"""

from __future__ import annotations

import os

import jax
from absl import flags
from absl import logging


def _backends_initialized() -> bool:
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  except ImportError:  # pragma: no cover - layout of a future jax
    return False
  check = getattr(xla_bridge, "backends_are_initialized", None)
  if check is not None:
    return bool(check())
  return bool(getattr(xla_bridge, "_backends", {}))


def resolve_count(count: int | str) -> int:
  """`count` as an int; "auto" is one device per available core, 0 leaves JAX's default."""
  if count == "auto":
    try:
      return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
      return os.cpu_count() or 1
  try:
    value = int(count)
  except (TypeError, ValueError):
    raise ValueError(f"--cpu_devices={count!r}: expected a whole number >= 0 or 'auto'.") from None
  if value < 0:
    raise ValueError(f"--cpu_devices={value}: expected a whole number >= 0 or 'auto'.")
  return value


def use_cpu_devices(count: int | str) -> int:
  """Splits the host CPU into `count` XLA devices; returns the number of CPU devices.

  0 keeps JAX's default (one CPU device, or what `XLA_FLAGS` says). Raises if JAX's backend
  already started with a different count, since the setting would then be silently ignored.
  """
  count = resolve_count(count)
  if count == 0:
    return len(jax.devices("cpu"))
  if _backends_initialized():
    current = len(jax.devices("cpu"))
    if current != count:
      raise RuntimeError(f"--cpu_devices={count}: JAX already started with {current} CPU "
                         "device(s); set it before any JAX computation (first thing in main), "
                         "or use XLA_FLAGS=--xla_force_host_platform_device_count="
                         f"{count}.")
    return current
  jax.config.update("jax_num_cpu_devices", count)
  logging.info("host CPU split into %d XLA devices", count)
  return len(jax.devices("cpu"))


def define_flags() -> None:
  """`--cpu_devices` and `--data_parallel`, shared by the training entry points."""
  flags.DEFINE_string("cpu_devices", "0", "Split the host CPU into this many XLA devices "
                      "('auto': one per core; 0: JAX's default). With --data_parallel the batch "
                      "is sharded over them: 1.75x faster DP steps of a small CNN on 2 cores.")
  flags.DEFINE_bool("data_parallel", None, "Shard each batch over all local devices (GPUs, TPU "
                    "cores, or the CPU devices of --cpu_devices).")
