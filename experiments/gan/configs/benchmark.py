"""benchmark: examples/s of the private discriminator step against the batch size.

  python -m experiments.gan --config=experiments/gan/configs/benchmark.py --workdir=runs/gan_bench
  python -m experiments.gan --config=experiments/gan/configs/benchmark.py \
      --workdir=runs/gan_bench_mb8 --config.microbatch_size=8 \
      --config.benchmark_batch_sizes='(1, 8, 16, 32)'
  python -m experiments.gan --config=experiments/gan/configs/benchmark.py:paper \
      --workdir=runs/gan_bench_paper

Trains nothing and reads no participant: random grids of SPRINT's shape. The quick preset's
generator (conv width 64) with a discriminator of width 256 (~282k parameters), clip norm 1e-4,
batch sizes 1, 4, 8, 16, 32, best of 3 timings of 512 examples each; writes benchmark.json.
`:paper` is the study's widths (generator conv 256, discriminator 1024) at batches 1, 8, 32.
`:tiny` is tiny networks at batches 1 and 4, 16 examples per timing (seconds).
"""

from experiments.gan.configs import quick


def get_config(arg: str | None = None):
  config = quick.get_config()
  config.name = "benchmark"
  config.mode = "benchmark"
  config.discriminator_width = 256
  config.benchmark_batch_sizes = (1, 4, 8, 16, 32)
  if arg == "paper":
    config.name = "benchmark:paper"
    config.generator_conv_channels = 256
    config.discriminator_width = 1024
    config.benchmark_batch_sizes = (1, 8, 32)
  elif arg == "tiny":
    tiny = quick.get_config("tiny")
    config.name = "benchmark:tiny"
    config.generator_conv_channels = tiny.generator_conv_channels
    config.generator_coarse_channels = tiny.generator_coarse_channels
    config.discriminator_width = tiny.discriminator_width
    config.benchmark_batch_sizes = (1, 4)
    config.benchmark_examples = 16
  elif arg:
    raise ValueError(f"benchmark.py:{arg}: unknown argument; use benchmark.py, "
                     "benchmark.py:paper or benchmark.py:tiny.")
  return config
