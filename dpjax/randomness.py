"""Where the randomness that a privacy guarantee relies on comes from.

DP-SGD's guarantee assumes that nobody can know which examples a step sampled, nor the noise it
added. A seed written next to the results breaks both: anyone holding it regenerates the noise and
subtracts it, or re-draws the batches and removes the subsampling amplification. So by default
every private draw comes from the operating system's CSPRNG (`os.urandom`) and is never written to
a released file; `seed` flags control only public choices (initialisation, data splits,
simulation).

`PrivateRandomness(secret_seed=...)` is the explicit opt-in to reproducible private randomness
(to debug, or to rerun a published run bit for bit). The seed is then itself a secret: the
engine keeps it under the run's `private/` folder and the privacy report says that the guarantee
holds only while it stays secret.

Each stream (noise of the model, batch selection, the noise of one arm of a sweep, local-DP noise
of a dataset) is named, so that no two mechanisms ever share randomness: with the OS source each
draw is fresh anyway; with a secret seed the stream name is hashed into the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets

import jax
import numpy as np


def _os_words(count: int) -> np.ndarray:
  return np.frombuffer(os.urandom(4 * count), dtype=np.uint32).copy()


def _stream_words(secret_seed: int, stream: tuple, count: int) -> np.ndarray:
  """`count` uint32 words derived from (secret seed, stream name) by SHA-256."""
  text = repr((int(secret_seed),) + tuple(str(s) for s in stream)).encode()
  digest = hashlib.sha256(text).digest()
  while len(digest) < 4 * count:
    digest += hashlib.sha256(digest).digest()
  return np.frombuffer(digest[: 4 * count], dtype=np.uint32).copy()


@dataclasses.dataclass(frozen=True)
class PrivateRandomness:
  """The source of the secret randomness of a run.

  Attributes:
    secret_seed: None (default): the OS CSPRNG, fresh for every draw; nothing to keep secret and
      nothing that a released file could reveal. An int: reproducible private randomness, derived
      from this seed; the guarantee then holds only while the seed stays secret.
  """
  secret_seed: int | None = None
  # True for a seed drawn from the OS CSPRNG and held only in memory (shared by the processes of
  # a multi-host run, see `shared_across_processes`): as secret as fresh OS draws.
  ephemeral: bool = False

  @property
  def secure(self) -> bool:
    """True when the private randomness comes from the OS CSPRNG (nothing to keep secret)."""
    return self.secret_seed is None or self.ephemeral

  @property
  def _fresh(self) -> bool:
    return self.secret_seed is None

  def key(self, *stream) -> jax.Array:
    """A raw uint32[2] JAX PRNG key for the named stream (e.g. `key("noise", "arm eps=1")`)."""
    words = _os_words(2) if self._fresh else _stream_words(self.secret_seed, stream, 2)
    return jax.numpy.asarray(words, dtype=jax.numpy.uint32)

  def sampling_seed(self, *stream) -> int | None:
    """The batch-selection seed of the named stream: None (OS CSPRNG at every step) or an int."""
    if self._fresh:
      return None
    return int.from_bytes(_stream_words(self.secret_seed, ("sampling",) + stream, 4).tobytes(), "little")

  def numpy_rng(self, *stream) -> np.random.Generator:
    """A NumPy generator for host-side private draws, seeded with 128 OS bits or the stream."""
    if self._fresh:
      return np.random.default_rng(secrets.randbits(128))
    return np.random.default_rng(_stream_words(self.secret_seed, ("numpy",) + stream, 4))

  def describe(self) -> dict:
    """What a privacy report states about the randomness (never the seed itself)."""
    if self.secure:
      return {"secure_randomness": True,
              "source": "operating-system CSPRNG (os.urandom); nothing to keep secret"}
    return {"secure_randomness": False,
            "source": "reproducible private randomness from a secret seed (opt-in)",
            "condition": "the guarantee holds only while the secret seed stays secret; it is "
                         "kept under the run's private/ folder and never in a released file. "
                         "A small or guessable seed (0, 1, 42, a date) is no secret: anyone can "
                         "try seeds until the noise cancels"}


SECURE = PrivateRandomness()


def shared_across_processes(randomness: PrivateRandomness) -> PrivateRandomness:
  """The same private randomness on every process of a multi-host run.

  Every process must draw the same batches and the same noise key; fresh OS draws would differ
  per process. Process 0 draws 128 bits from the OS CSPRNG and sends them to the others in
  memory; they are never written (a resumed run draws new ones, which is equally private).
  """
  if not randomness.secure or randomness.ephemeral or jax.process_count() == 1:
    return randomness
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top  (multi-host only)
  words = multihost_utils.broadcast_one_to_all(_os_words(4))
  seed = int.from_bytes(np.asarray(words, np.uint32).tobytes(), "little")
  return PrivateRandomness(secret_seed=seed, ephemeral=True)


def from_flag(reproducible: bool, seed: int) -> PrivateRandomness:
  """The randomness chosen by `--reproducible_private_randomness` (off by default).

  Off: the OS CSPRNG, and `seed` steers only public choices. On: the private randomness is
  derived from `seed`, which thereby becomes a secret (the studies then keep it out of
  `config.json` and every other released file).
  """
  return PrivateRandomness(secret_seed=int(seed)) if reproducible else SECURE


def redact(config: dict, randomness: PrivateRandomness, secret_keys=("seed",)) -> dict:
  """`config` fit for a released file: without the seed when it keys private randomness."""
  if randomness.secure:
    return dict(config)
  return {k: ("<secret: see private/>" if k in secret_keys else v) for k, v in config.items()}
