"""The tiny preset: sklearn digits (no files needed) and the `:tiny` numbers of quick.py.

  python -m experiments.interpret --config=experiments/interpret/configs/tiny.py \
      --workdir=runs/interpret_tiny

A smoke run of every part of the study in a minute or two on a CPU; its numbers mean little.
"""

from __future__ import annotations

import ml_collections

from experiments.interpret.configs import quick


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = quick.get_config("tiny")
  config.dataset = "digits"
  return quick.shrink(config, arg)  # `:tiny` again changes nothing
