"""Privacy per person (user-level DP): the unit protected is a person with all their records.

Medical data holds several records per person (X-rays of one patient, visits of one trial
participant). Record-level DP-SGD bounds what a release reveals about one record; a person with
m records is then protected only by group privacy (epsilon up to m times larger, and worse for
the delta). Here the unit is the person:

  * `PersonSampler` draws persons, not records: Poisson sampling over the N persons with rate
    q = B/N (B the expected persons per step), padded to a fixed number of persons P (the
    record-level rule over N persons); each drawn person contributes at most `k` records, taken
    uniformly at random without replacement (from the secret randomness) when they have more.
    A batch is `indices` (P, k) into the record arrays, `mask` (P,) over persons and
    `record_mask` (P, k) over each person's record slots.
  * `person_loss` turns a per-example loss into a per-person loss: the mean of the loss over
    the person's real records. Its gradient is the MEAN of the person's per-example gradients,
    and the ordinary clipping (`dpjax.clipping`) then clips that mean to C once per person, so
    the clipped sum moves by at most C when a person (all of their records) is added or
    removed: the Gaussian mechanism's sensitivity is C per person, and the accounting is the
    record-level one with N persons and B expected persons (`PrivacyPhase(unit="person")`).

Why the mean and not the sum: both have sensitivity C after clipping. The mean of a person's
gradients has the scale of one example's gradient whatever their number of records (1..k), so
the clip norm tuned for record-level training stays a sensible scale, and a person with k
records is not clipped k times harder than a person with one (with the sum, persons with many
records would be clipped more and their per-record weight would drop, so the clip norm would
have to grow with k). The cost is that each person, not each record, weighs equally.

Person ids: `dpjax.data.images` reads them from the Kaggle chest X-ray (Kermany) file names
(`load_chest_xray(..., person_ids=True)`) or from an npz's `train_ids` array. Merging two real persons under one
id is safe (the pair is protected as one unit); splitting one person over two ids is not, so
names that do not state a person are refused rather than guessed.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dpjax import accounting
from dpjax import clipping
from dpjax import sampling

PyTree = Any
RECORDS, RECORD_MASK = "records", "record_mask"


# ------------------------------------------------------------------------------- sampling


@dataclasses.dataclass(frozen=True, eq=False)
class PersonSampler:
  """Poisson sampling over persons at a fixed padded shape (persons x k records, masked).

  The interface of `sampling.BatchSampler` (the engine runs it unchanged) with
  `dataset_size` = number of persons and `batch_size` = expected persons per step; the data the
  engine gathers from has `num_records` rows, `record_ids[i]` the person of row i.
  `secret_seed` as in `BatchSampler`: None draws persons and records from the OS CSPRNG.
  """
  record_ids: np.ndarray
  batch_size: int  # expected persons per step
  records_per_person: int  # k: at most this many records of a person per step
  secret_seed: int | None = None
  multiple_of: int = 1
  overflow_probability: float = sampling.OVERFLOW_PROBABILITY
  sampling: str = "poisson"

  def __post_init__(self):
    ids = np.asarray(self.record_ids)
    if ids.ndim != 1 or ids.size == 0:
      raise ValueError(f"person ids must be a non-empty 1-D array (one per record), got shape "
                       f"{ids.shape}.")
    if self.records_per_person < 1:
      raise ValueError(f"records_per_person={self.records_per_person} must be >= 1 "
                       "(--config.records_per_person).")
    if self.sampling not in ("poisson", "full"):
      raise ValueError(f"per-person sampling={self.sampling!r}: only 'poisson' (or 'full') "
                       "is analysed per person.")
    order = np.argsort(ids, kind="stable")
    _, starts, counts = np.unique(ids[order], return_index=True, return_counts=True)
    object.__setattr__(self, "_order", order)
    object.__setattr__(self, "_starts", starts)
    object.__setattr__(self, "_counts", counts)
    self._persons()  # validates batch_size against the number of persons

  def _persons(self) -> sampling.BatchSampler:
    return sampling.BatchSampler(self.dataset_size, self.batch_size, self.sampling,
                                 secret_seed=self.secret_seed, multiple_of=self.multiple_of,
                                 overflow_probability=self.overflow_probability)

  @property
  def dataset_size(self) -> int:
    """The number of persons: the N of the accounting."""
    return int(self._counts.size)

  @property
  def num_records(self) -> int:
    return int(self._order.size)

  @property
  def records_of_person(self) -> np.ndarray:
    """How many records each person has (in sorted-id order)."""
    return self._counts

  @property
  def expected_batch_size(self) -> float:
    return self._persons().expected_batch_size

  @property
  def padded_size(self) -> int:
    return self._persons().padded_size

  @property
  def secure(self) -> bool:
    return self.secret_seed is None

  @property
  def steps_per_epoch(self) -> int:
    return self._persons().steps_per_epoch

  def steps_for_epochs(self, epochs: float) -> int:
    """Steps of `epochs` expected passes over the persons."""
    return self._persons().steps_for_epochs(epochs)

  def privacy_phase(self, noise_multiplier: float, mechanism: str = "gaussian"
                    ) -> accounting.PrivacyPhase:
    return dataclasses.replace(self._persons().privacy_phase(noise_multiplier, mechanism),
                               unit="person")

  def _chosen_records(self, person: int, step: int, rng: np.random.Generator | None) -> np.ndarray:
    """At most k of the person's records, uniformly without replacement (secret randomness)."""
    start, count = self._starts[person], self._counts[person]
    records = self._order[start:start + count]
    k = self.records_per_person
    if count <= k:
      return records
    if rng is None:  # OS CSPRNG: a uniform permutation by sorting 64-bit random words
      keys = np.frombuffer(os.urandom(8 * int(count)), dtype=np.uint64)
    else:
      keys = rng.integers(0, 2 ** 63, size=count)
    return np.sort(records[np.argsort(keys, kind="stable")[:k]])

  def batch(self, step: int) -> sampling.Batch:
    persons = self._persons().batch(step)
    rng = None if self.secure else np.random.default_rng([self.secret_seed, step, 1])
    k = self.records_per_person
    indices = np.zeros((persons.mask.size, k), np.int32)
    record_mask = np.zeros((persons.mask.size, k), bool)
    for row in range(persons.size):  # the sampler puts the real persons first
      chosen = self._chosen_records(int(persons.indices[row]), step, rng)
      indices[row, :chosen.size] = chosen
      record_mask[row, :chosen.size] = True
    return sampling.Batch(indices=indices, mask=persons.mask, size=persons.size,
                          record_mask=record_mask)


# ------------------------------------------------------------------------------- the loss


def person_inputs(records: PyTree, record_mask) -> dict:
  """The batch a per-person loss reads: the (P, k, ...) records and their (P, k) mask."""
  return {RECORDS: records, RECORD_MASK: record_mask}


def person_loss(loss_fn: Callable) -> Callable:
  """`loss(params, person)`: the mean of `loss_fn(params, record)` over the person's real records.

  Its gradient is the mean of the person's per-example gradients; clipping it (any
  `clipping.clipped_grad_sum` with method "vmap") clips one term per person.
  """
  def loss(params, person, *args):
    losses = jax.vmap(lambda record: loss_fn(params, record, *args))(person[RECORDS])
    mask = person[RECORD_MASK]
    total = jnp.sum(jnp.where(mask, losses, 0.0))
    return total / jnp.maximum(jnp.sum(mask), 1).astype(total.dtype)
  loss.person_level = True
  return loss


def clipping_config(config: clipping.ClippingConfig) -> clipping.ClippingConfig:
  """`config` for a per-person loss: per-example gradients by vmap.

  Ghost clipping reads one example's activations per layer; inside a per-person loss a layer
  sees k records, and its ghost norm would not be the norm of the person's mean gradient.
  """
  if config.method == "ghost":
    raise ValueError("per-person clipping needs per_example='vmap' (or 'auto'): ghost norms "
                     "are per record, not per person.")
  return dataclasses.replace(config, method="vmap")
