"""Batch selection on the host, padded to one fixed shape so the jitted step compiles once.

Every batch is a vector of `padded_size` indices with a boolean mask; padded slots point at
index 0 and are masked out. A batch's randomness depends only on (seed, step), so a resumed run
draws exactly the batches the uninterrupted run would have drawn.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from dpjax import accounting


class BatchOverflowError(RuntimeError):
  """A Poisson batch came out larger than the padded shape; nothing was dropped."""


def padded_batch_size(dataset_size: int, expected_batch_size: int, sampling: str = "poisson",
                      num_std: float = 6.0, multiple_of: int = 1) -> int:
  """The fixed batch shape: expected + `num_std` standard deviations for Poisson, rounded up.

  Overflow beyond 6 standard deviations has probability below 1e-9 per step.
  """
  if sampling == "poisson":
    q = expected_batch_size / dataset_size
    std = math.sqrt(dataset_size * q * (1 - q))
    size = min(dataset_size, math.ceil(expected_batch_size + num_std * std))
  elif sampling == "fixed":
    size = expected_batch_size
  elif sampling == "full":
    size = dataset_size
  else:
    raise ValueError(f"sampling={sampling!r}: expected one of {accounting.SAMPLINGS}.")
  return -(-size // multiple_of) * multiple_of


@dataclasses.dataclass(frozen=True)
class Batch:
  indices: np.ndarray  # (padded_size,) int32
  mask: np.ndarray  # (padded_size,) bool
  size: int  # number of real examples


@dataclasses.dataclass(frozen=True)
class BatchSampler:
  """Draws the batch of a given step. Stateless: the step number is the sampler's whole state."""
  dataset_size: int
  batch_size: int  # expected size for Poisson, exact for fixed, ignored for full
  sampling: str = "poisson"
  seed: int = 0
  multiple_of: int = 1
  num_std: float = 6.0  # Poisson padding: expected size + num_std standard deviations

  def __post_init__(self):
    if self.dataset_size < 1:
      raise ValueError("the dataset is empty: no example to sample from.")
    if self.sampling not in accounting.SAMPLINGS:
      raise ValueError(f"sampling={self.sampling!r}: expected one of {accounting.SAMPLINGS}.")
    if self.sampling != "full" and not 1 <= self.batch_size <= self.dataset_size:
      raise ValueError(f"batch_size={self.batch_size} must be between 1 and the dataset size "
                       f"{self.dataset_size}; use a smaller --batch_size or more data.")

  @property
  def expected_batch_size(self) -> float:
    return float(self.dataset_size if self.sampling == "full" else self.batch_size)

  @property
  def padded_size(self) -> int:
    return padded_batch_size(self.dataset_size, self.batch_size, self.sampling,
                             num_std=self.num_std, multiple_of=self.multiple_of)

  @property
  def steps_per_epoch(self) -> int:
    return max(1, round(self.dataset_size / self.expected_batch_size))

  def privacy_phase(self, noise_multiplier: float, mechanism: str = "gaussian") -> accounting.PrivacyPhase:
    return accounting.PrivacyPhase(
        noise_multiplier=noise_multiplier, dataset_size=self.dataset_size,
        batch_size=self.dataset_size if self.sampling == "full" else self.batch_size,
        sampling=self.sampling, mechanism=mechanism)

  def batch(self, step: int) -> Batch:
    rng = np.random.default_rng([self.seed, step])
    n = self.dataset_size
    if self.sampling == "poisson":
      chosen = np.flatnonzero(rng.random(n) < self.batch_size / n)
    elif self.sampling == "fixed":
      chosen = np.sort(rng.choice(n, size=self.batch_size, replace=False))
    else:
      chosen = np.arange(n)
    padded = self.padded_size
    if chosen.size > padded:
      raise BatchOverflowError(
          f"step {step}: Poisson batch of {chosen.size} examples exceeds the padded size {padded} "
          f"(expected {self.batch_size}); nothing was dropped. Raise the padding (num_std) or "
          "the batch size and resume from the last checkpoint.")
    indices = np.zeros(padded, np.int32)
    indices[:chosen.size] = chosen
    mask = np.zeros(padded, bool)
    mask[:chosen.size] = True
    return Batch(indices=indices, mask=mask, size=int(chosen.size))
