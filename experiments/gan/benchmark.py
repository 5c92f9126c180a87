"""Throughput of the private discriminator step (`--config.mode=benchmark`, configs/benchmark.py).

Examples/s of one jitted private discriminator step (generated partners, per-pair clipped
gradients, noise, Adam) at each of `config.benchmark_batch_sizes`, on random grids of SPRINT's
shape (3 features x 12 visits): no participant is read, so nothing here is private.
"""

from __future__ import annotations

import math
import os

from absl import logging

from experiments.common import outputs
from experiments.gan import models
from experiments.gan import settings
from experiments.gan import training


def run_benchmark(config: settings.Config, workdir: str) -> dict:
  """Times the step at each batch size; writes `<prefix>benchmark.json`; returns its content."""
  generator = models.Generator(coarse_channels=config.generator_coarse_channels,
                               conv_channels=config.generator_conv_channels)
  discriminator = models.Discriminator(dense_width=config.discriminator_width)
  train_config = training.GanTrainConfig(clip_norm=config.clip_norm,
                                         microbatch_size=config.microbatch_size)
  rows = training.discriminator_throughput(generator, discriminator, train_config,
                                           list(config.benchmark_batch_sizes),
                                           num_examples=config.benchmark_examples,
                                           seed=config.seed)
  result = {"generator_conv_channels": config.generator_conv_channels,
            "discriminator_width": config.discriminator_width,
            "microbatch_size": config.microbatch_size,
            "examples_per_timing": config.benchmark_examples, "rows": rows}
  outputs.write_json(os.path.join(workdir, f"{config.prefix}benchmark.json"), result)
  for row in rows:
    logging.info("batch %d: %.1f examples/s (x%.2f vs batch 1)", row["batch_size"],
                 row["examples_per_sec"], row["speedup_vs_batch_1"] or math.nan)
  return {"benchmark": result}
