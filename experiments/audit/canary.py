"""The Dirac-canary audit: one real training run, and an epsilon lower bound to check its claim.

`dirac_canary_audit` inserts m input-space "Dirac" canaries (a large input along a feature no real
example uses, with a random label), includes each with probability 1/2, trains with
`engine.train`, scores each canary by how far the final model moved in its direction, and turns
the guesses into an epsilon lower bound with the one-run test of Steinke, Nasr & Jagielski 2023
(`dpjax.auditing.one_run_audit`). A correct mechanism stays at or below the accountant's epsilon
with the stated confidence; a broken one (clipping or noise off) exceeds it.

Randomness. The batches and noise of the audited run come from `dpjax.randomness`: the operating
system's CSPRNG by default, or, with `reproducible_private_randomness`, derived from the seed
under the run's stream name. The design (canary labels and inclusion) is the auditor's
experiment, a function of the public `seed`. Remaining limits of the noise itself: the key is 64
bits expanded by threefry (not a vetted CSPRNG); Gaussian samples are float32 values from an
inverse-CDF transform, whose uneven low-order bits can leak the unnoised value (Mironov 2012);
no mainstream JAX library implements discrete or snapping mechanisms for DP-SGD.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import optax

from dpjax import accounting
from dpjax import auditing
from dpjax import clipping
from dpjax import engine
from dpjax import randomness as randomness_lib
from dpjax import sampling
from dpjax import train
from experiments.audit import digits

NO_CLIP_NORM = 1e6  # the planted bug "no_clip": clipping at a norm no gradient reaches
BUGS = ("none", "no_clip", "no_noise")


@dataclasses.dataclass(frozen=True)
class CanaryAuditConfig:
  """One audited training run: a softmax-linear model on real features plus Dirac canaries.

  `bug` deliberately breaks the mechanism while the ledger still reports the claimed epsilon:
  "none", "no_clip" (clip norm 1e6 with noise still calibrated to clip norm 1: the classic
  "clipping silently off") or "no_noise" (noise multiplier 0).

  `seed` is the auditor's design (canary labels and which canaries are included): public. The
  batches and noise come from the OS CSPRNG unless `reproducible_private_randomness`, which
  derives them from `seed` (then a secret of the training, though the auditor knows it).
  """
  num_canaries: int = 500
  canary_scale: float = 1e4  # the canary's input norm: its gradient always hits the clip
  noise_multiplier: float = 1.0
  clip_norm: float = 1.0
  batch_size: int = 256
  num_steps: int = 200
  learning_rate: float = 1.0
  delta: float = 1e-5
  sampling: str = "poisson"
  accountant: str = "rdp"
  confidence: float = 0.95
  bug: str = "none"
  seed: int = 0
  reproducible_private_randomness: bool = False

  def __post_init__(self):
    if self.bug not in BUGS:
      raise ValueError(f"bug={self.bug!r}: expected 'none', 'no_clip' or 'no_noise'.")
    if self.num_canaries < 2:
      raise ValueError(f"num_canaries={self.num_canaries} must be >= 2.")


def dirac_canary_audit(config: CanaryAuditConfig,
                       base_data: tuple[np.ndarray, np.ndarray] | None = None,
                       stream: str = "canary audit") -> dict:
  """Trains once with `engine.train` on real data plus a random half of m canaries; audits it.

  The run's batches and noise come from `randomness_lib.from_flag(
  config.reproducible_private_randomness, config.seed)` under `stream` (give each audited run of
  a study its own).

  Canary j is the input `canary_scale * e_(d + j)` (a feature no real example touches) with a
  random label c_j. Its only trace in the model is row d + j of the weights, so the score
  "how much did row d + j move towards c_j" (w[d+j, c_j] minus the row's mean) is the
  change of the model in the canary's direction, and only noise moves excluded canaries' rows.
  """
  x_real, y_real = digits.digits_features() if base_data is None else base_data
  num_classes = int(y_real.max()) + 1
  rng = np.random.default_rng(config.seed)
  m, d = config.num_canaries, x_real.shape[1]
  canary_labels = rng.integers(num_classes, size=m).astype(np.int32)
  included = rng.random(m) < 0.5

  x_canary = np.zeros((m, d + m), np.float32)
  x_canary[np.arange(m), d + np.arange(m)] = config.canary_scale
  x = np.concatenate([np.pad(x_real, ((0, 0), (0, m))), x_canary[included]])
  y = np.concatenate([y_real, canary_labels[included]])

  claimed_sigma = config.noise_multiplier
  clip_norm, sigma = config.clip_norm, claimed_sigma
  if config.bug == "no_clip":
    clip_norm, sigma = NO_CLIP_NORM, claimed_sigma * config.clip_norm / NO_CLIP_NORM  # same noise
  elif config.bug == "no_noise":
    sigma = 0.0
  sampler = sampling.BatchSampler(len(x), config.batch_size, config.sampling)
  dp = train.DPConfig(clipping.ClippingConfig(clip_norm), sigma, sampler.expected_batch_size)
  params = {"w": jnp.zeros((d + m, num_classes)), "b": jnp.zeros(num_classes)}
  loop = engine.LoopConfig(num_steps=config.num_steps, delta=config.delta,
                           accountant=config.accountant, log_every=0)
  source = randomness_lib.from_flag(config.reproducible_private_randomness, config.seed)
  result = engine.train(digits.softmax_linear_loss, params, optax.sgd(config.learning_rate),
                        (x, y), sampler=sampler, dp=dp, loop=loop, randomness=source,
                        stream=stream)

  rows = np.asarray(result.state.params["w"])[d:]
  scores = rows[np.arange(m), canary_labels] - rows.mean(1)
  # The claim the auditor checks: what the ledger would say for the intended mechanism.
  claimed = accounting.compute_epsilon(
      [sampler.privacy_phase(claimed_sigma).with_steps(result.ledger.steps)], config.delta,
      config.accountant)
  audit = auditing.one_run_audit(scores, included, config.delta, confidence=config.confidence)
  return {**audit, "accountant_epsilon": claimed, "bug": config.bug,
          "noise_multiplier": claimed_sigma, "num_steps": result.ledger.steps,
          "dataset_size": len(x), "canary_auc": auditing.roc_auc(scores, included),
          "exceeds_accountant": audit["epsilon_lower_bound"] > claimed}


