"""Batch selection on the host, padded to one fixed shape so the jitted step compiles once.

Every batch is a vector of `padded_size` indices with a boolean mask; padded slots point at
index 0 and are masked out.

Which examples a step draws is secret: subsampling amplifies privacy only while nobody knows the
batches. By default each batch is drawn from the operating system's CSPRNG at the moment it is
needed (a resumed run simply draws fresh batches, which is equally private). With a
`secret_seed` (the opt-in to reproducible private randomness, `dpjax.randomness`) step t's batch
is a function of (secret_seed, t), so a resumed run draws the batches the uninterrupted run
would have drawn, and the seed must stay secret.
"""

from __future__ import annotations

import dataclasses
import math
import os
import secrets

import numpy as np
from scipy import stats

from dpjax import accounting


class BatchOverflowError(RuntimeError):
  """A Poisson batch came out larger than the padded shape; nothing was dropped."""


OVERFLOW_PROBABILITY = 1e-9


def padded_batch_size(dataset_size: int, expected_batch_size: int, sampling: str = "poisson",
                      overflow_probability: float = OVERFLOW_PROBABILITY, multiple_of: int = 1) -> int:
  """The fixed batch shape, rounded up to a multiple of `multiple_of`.

  Poisson: the smallest m with P(Binomial(N, B/N) > m) <= `overflow_probability`, from the exact
  binomial tail (a normal approximation "expected + 6 sd" overflows 1e-5 per step at B = 1).
  """
  if sampling == "poisson":
    if not 0 < overflow_probability < 1:
      raise ValueError(f"overflow_probability={overflow_probability} must be in (0, 1).")
    q = expected_batch_size / dataset_size
    size = dataset_size if q >= 1 else int(stats.binom.isf(overflow_probability, dataset_size, q))
    size = min(dataset_size, max(size, 1))
  elif sampling == "fixed":
    size = expected_batch_size
  elif sampling == "full":
    size = dataset_size
  else:
    raise ValueError(f"sampling={sampling!r}: expected one of {accounting.SAMPLINGS}.")
  return -(-size // multiple_of) * multiple_of


def steps_for_epochs(epochs: float, dataset_size: int, expected_batch_size: float) -> int:
  """The number of steps of `epochs` passes: ceil(epochs * N / B), the one rule of every entry point.

  A pass is N/B steps in expectation (each step sees B examples on average); rounding up makes the
  run at least the requested number of passes.
  """
  if not epochs > 0:
    raise ValueError(f"epochs={epochs} must be > 0.")
  if not expected_batch_size > 0:
    raise ValueError(f"expected batch size {expected_batch_size} must be > 0.")
  return max(1, math.ceil(epochs * dataset_size / expected_batch_size - 1e-9))


def _os_poisson_mask(n: int, batch_size: int) -> np.ndarray:
  """Each of n examples independently with probability batch_size / n, from the OS CSPRNG.

  A uniform 64-bit word u selects its example when u < floor(B * 2^64 / N): the probability is
  B/N rounded down by less than 2^-64, so the accounted q is never exceeded.
  """
  if batch_size >= n:
    return np.ones(n, bool)
  threshold = np.uint64((batch_size << 64) // n)
  words = np.frombuffer(os.urandom(8 * n), dtype=np.uint64)
  return words < threshold


@dataclasses.dataclass(frozen=True)
class Batch:
  indices: np.ndarray  # (padded_size,) int32; (padded_size, k) record indices per person
  mask: np.ndarray  # (padded_size,) bool
  size: int  # number of real examples (persons for a per-person batch)
  # Per-person batches (`dpjax.user_level`): which of each person's k record slots are real.
  record_mask: np.ndarray | None = None


def pad_batch(batch: Batch, size: int) -> Batch:
  """`batch` with masked slots appended up to `size` rows (e.g. a multiple of the devices)."""
  extra = size - batch.mask.shape[0]
  if extra < 0:
    raise ValueError(f"cannot pad a batch of {batch.mask.shape[0]} rows down to {size}.")
  if extra == 0:
    return batch
  pad = lambda a: np.concatenate([a, np.zeros((extra,) + a.shape[1:], a.dtype)])
  return dataclasses.replace(
      batch, indices=pad(batch.indices), mask=pad(batch.mask),
      record_mask=None if batch.record_mask is None else pad(batch.record_mask))


@dataclasses.dataclass(frozen=True)
class BatchSampler:
  """Draws the batch of a given step.

  `secret_seed=None` (default): every batch comes fresh from the OS CSPRNG. An int: the batch of
  step t is a function of (secret_seed, t); that seed is private randomness (never release it).
  """
  dataset_size: int
  batch_size: int  # expected size for Poisson, exact for fixed, ignored for full
  sampling: str = "poisson"
  secret_seed: int | None = None
  multiple_of: int = 1
  overflow_probability: float = OVERFLOW_PROBABILITY  # Poisson padding: P(batch > padded) per step

  def __post_init__(self):
    if self.dataset_size < 1:
      raise ValueError("the dataset is empty: no example to sample from.")
    if self.sampling not in accounting.SAMPLINGS:
      raise ValueError(f"sampling={self.sampling!r}: expected one of {accounting.SAMPLINGS}.")
    if self.sampling != "full" and not 1 <= self.batch_size <= self.dataset_size:
      raise ValueError(f"batch_size={self.batch_size} must be between 1 and the dataset size "
                       f"{self.dataset_size}; use a smaller batch_size or more data.")

  @property
  def expected_batch_size(self) -> float:
    return float(self.dataset_size if self.sampling == "full" else self.batch_size)

  @property
  def padded_size(self) -> int:
    return padded_batch_size(self.dataset_size, self.batch_size, self.sampling,
                             overflow_probability=self.overflow_probability,
                             multiple_of=self.multiple_of)

  @property
  def secure(self) -> bool:
    return self.secret_seed is None

  @property
  def num_records(self) -> int:
    """Rows of the data it indexes (the per-person sampler indexes more rows than units)."""
    return self.dataset_size

  @property
  def steps_per_epoch(self) -> int:
    """Steps in one expected pass, rounded (for evaluation cadence; run lengths use steps_for_epochs)."""
    return max(1, round(self.dataset_size / self.expected_batch_size))

  def steps_for_epochs(self, epochs: float) -> int:
    return steps_for_epochs(epochs, self.dataset_size, self.expected_batch_size)

  def privacy_phase(self, noise_multiplier: float, mechanism: str = "gaussian") -> accounting.PrivacyPhase:
    return accounting.PrivacyPhase(
        noise_multiplier=noise_multiplier, dataset_size=self.dataset_size,
        batch_size=self.dataset_size if self.sampling == "full" else self.batch_size,
        sampling=self.sampling, mechanism=mechanism)

  def batch(self, step: int) -> Batch:
    n = self.dataset_size
    if self.sampling == "full":
      chosen = np.arange(n)
    elif self.secure:
      if self.sampling == "poisson":
        chosen = np.flatnonzero(_os_poisson_mask(n, self.batch_size))
      else:
        chosen = np.sort(np.asarray(secrets.SystemRandom().sample(range(n), self.batch_size)))
    else:
      rng = np.random.default_rng([self.secret_seed, step])
      if self.sampling == "poisson":
        chosen = np.flatnonzero(rng.random(n) < self.batch_size / n)
      else:
        chosen = np.sort(rng.choice(n, size=self.batch_size, replace=False))
    padded = self.padded_size
    if chosen.size > padded:
      raise BatchOverflowError(
          f"step {step}: Poisson batch of {chosen.size} examples exceeds the padded size {padded} "
          f"(expected {self.batch_size}); nothing was dropped. Lower overflow_probability "
          "(the padding) and resume from the last checkpoint.")
    indices = np.zeros(padded, np.int32)
    indices[:chosen.size] = chosen
    mask = np.zeros(padded, bool)
    mask[:chosen.size] = True
    return Batch(indices=indices, mask=mask, size=int(chosen.size))
