"""DP-MERF (Harder et al., AISTATS 2021): a private generator whose privacy is paid once.

The data are read exactly once, to compute a class-conditional mean embedding of the training
participants in a random feature space; that sum is privatised with the Gaussian mechanism and
released; a generator is then fit to the released (noisy) embedding alone, never touching the
data again (post-processing, free).

Features. A participant is its flattened (features x visits) vector `x`, already scaled by
PUBLIC constants (clinical bounds or the instrument's ceiling, `dpjax.data.trials`) and clipped
to [0, 1], so nothing here depends on the data but `x` itself. The feature map is

    phi(x) = [ sqrt((1 - a^2) / D) * cos(W x),  sqrt((1 - a^2) / D) * sin(W x),  a * x / sqrt(d) ]

with D random frequencies W ~ N(0, I / lengthscale^2) (random Fourier features of a Gaussian
kernel; W drawn from the PUBLIC seed: it is not a secret and depends on no data) and, with
weight a, the scaled vector itself (a linear kernel: it pins the means the Gaussian kernel of a
36-dimensional vector resolves weakly). Since cos^2 + sin^2 = 1 and every coordinate of x is in
[0, 1], ||phi(x)||^2 = (1 - a^2) + a^2 ||x||^2 / d <= 1.

Embedding. One participant with arm c contributes the vector

    v(x, c) = [ e_c (x) phi(x),  count_weight * e_c ]

(its feature vector in its arm's block, and count_weight in its arm's count slot), so
||v|| <= sqrt(1 + count_weight^2) =: the sensitivity, for ANY x in [0, 1]^d. The released
statistic is S = sum_i v(x_i, c_i) + N(0, (sigma * sensitivity)^2 I): under add/remove-one
adjacency (the unit of the privacy ledger: one participant) S changes by one v, of norm at most
the sensitivity, so this is the Gaussian mechanism with noise multiplier sigma, a single
`GaussianDpEvent(sigma)` (the ledger's phase with sampling "full" and one step). Under
replace-one adjacency the change is v - v', of norm at most max(2, sqrt(2) * sensitivity) (the
same arm: ||phi - phi'|| <= 2; different arms: orthogonal blocks), i.e. the same sigma buys
only the epsilon of noise multiplier sigma * sensitivity / max(2, sqrt(2) * sensitivity) (not
what the ledger reports, which is add/remove).

A small count_weight (default 0.3) lowers the sensitivity (sqrt(1.09) = 1.044 against sqrt(2))
at the price of noisier arm counts (standard deviation sigma * sensitivity / count_weight
participants, ~7.5 at epsilon 2): measured on the simulator, it lowers every fidelity error.

Generator. An MLP from (latent, arm) to [0, 1]^d (sigmoid), fit by Adam to minimise, per arm, the
squared distance between the released mean embedding (noisy sum over noisy count) and the mean
feature vector of generated participants of that arm, weighted by the released arm share.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax import accounting
from dpjax import randomness as randomness_lib

NUM_ARMS = 2
MECHANISM = "Gaussian mechanism on a class-conditional random-feature mean embedding (DP-MERF)"


@dataclasses.dataclass(frozen=True)
class MerfConfig:
  """DP-MERF's settings: the feature map, the mechanism and the generator fit.

  Attributes:
    num_frequencies: D, random frequencies of the Gaussian kernel (2D cos/sin features).
    lengthscale: the Gaussian kernel's length scale in the scaled [0, 1] units (a public
      constant, not a median heuristic on the data).
    linear_weight: a, the weight of the linear-kernel block (0: random features only).
    count_weight: the value a participant adds to its arm's count slot; the sensitivity is
      sqrt(1 + count_weight^2).
    noise_multiplier: sigma; the Gaussian noise's standard deviation is sigma * sensitivity.
      0 releases the exact embedding (epsilon = inf, the non-private reference).
    latent_dim, generator_width, generator_depth: the generator MLP.
    steps, generator_batch_size, learning_rate: the generator's fit (Adam); that many generated
      participants per arm per step.
  """
  num_frequencies: int = 500
  lengthscale: float = 0.5
  linear_weight: float = 0.5
  count_weight: float = 0.3
  noise_multiplier: float = 1.0
  latent_dim: int = 16
  generator_width: int = 128
  generator_depth: int = 2
  steps: int = 2000
  generator_batch_size: int = 256
  learning_rate: float = 1e-3

  def __post_init__(self):
    if self.num_frequencies < 1:
      raise ValueError(f"--config.merf_frequencies={self.num_frequencies} must be >= 1.")
    if not self.lengthscale > 0:
      raise ValueError(f"--config.merf_lengthscale={self.lengthscale} must be > 0.")
    if not 0 <= self.linear_weight < 1:
      raise ValueError(f"--config.merf_linear_weight={self.linear_weight} must be in [0, 1).")
    if not self.count_weight > 0:
      raise ValueError(f"--config.merf_count_weight={self.count_weight} must be > 0.")
    if self.noise_multiplier < 0 or math.isnan(self.noise_multiplier):
      raise ValueError(f"merf noise_multiplier={self.noise_multiplier} must be >= 0.")
    # Named as the study's --config fields where there is one.
    flags = {"generator_width": "--config.merf_generator_width", "steps": "--config.merf_steps",
             "generator_batch_size": "--config.merf_batch_size"}
    for field in ("latent_dim", "generator_width", "generator_depth", "steps",
                  "generator_batch_size"):
      if getattr(self, field) < 1:
        raise ValueError(f"{flags.get(field, 'merf ' + field)}={getattr(self, field)} must be "
                         ">= 1.")
    if not self.learning_rate > 0:
      raise ValueError(f"--config.merf_learning_rate={self.learning_rate} must be > 0.")

  @property
  def sensitivity(self) -> float:
    """The l2 bound on one participant's contribution v(x, c) (add/remove adjacency)."""
    return math.sqrt(1.0 + self.count_weight ** 2)


# ----- the feature map and the embedding (the only code that reads the data) ------------------

def frequencies(seed: int, dim: int, config: MerfConfig) -> np.ndarray:
  """W (D, d): public random frequencies from the public seed (they depend on no data)."""
  rng = np.random.default_rng([seed, 0x6D657266])  # "merf": its own public stream
  return (rng.standard_normal((config.num_frequencies, dim)) / config.lengthscale).astype(
      np.float32)


def feature_map(x_flat: jax.Array, omega: jax.Array, linear_weight: float) -> jax.Array:
  """phi(x) (n, 2D + d) in float32; ||phi(x)|| <= 1 for x in [0, 1]^d."""
  x_flat = jnp.asarray(x_flat, jnp.float32)
  num_frequencies, dim = omega.shape
  projection = x_flat @ omega.T
  rff_scale = jnp.sqrt((1.0 - linear_weight ** 2) / num_frequencies)
  return jnp.concatenate([rff_scale * jnp.cos(projection), rff_scale * jnp.sin(projection),
                          (linear_weight / math.sqrt(dim)) * x_flat], axis=-1)


@functools.partial(jax.jit, static_argnames=("config",))
def contributions(x_flat: jax.Array, arm: jax.Array, omega: jax.Array,
                  config: MerfConfig) -> jax.Array:
  """v(x_i, c_i) (n, NUM_ARMS * (2D + d) + NUM_ARMS): each participant's share of the sum."""
  phi = feature_map(x_flat, omega, config.linear_weight)
  one_hot = jax.nn.one_hot(arm, NUM_ARMS, dtype=jnp.float32)
  blocks = (one_hot[:, :, None] * phi[:, None, :]).reshape(len(phi), -1)
  return jnp.concatenate([blocks, config.count_weight * one_hot], axis=-1)


def check_bounded(x: np.ndarray) -> None:
  """The sensitivity needs every value in [0, 1] (the trial loaders' public scaling)."""
  x = np.asarray(x)
  if x.size and (np.nanmin(x) < 0 or np.nanmax(x) > 1 or np.isnan(x).any()):
    raise ValueError("DP-MERF needs participants scaled to [0, 1] by public bounds (the "
                     "dpjax.data.trials loaders do this); got values outside [0, 1] or NaN: "
                     "clip to the public bounds first.")


@dataclasses.dataclass(frozen=True)
class ReleasedEmbedding:
  """What DP-MERF releases: the noisy sum, and what is needed to read it (all public)."""
  noisy_sum: np.ndarray          # (NUM_ARMS * (2D + d) + NUM_ARMS,) float32
  omega: np.ndarray              # (D, d) public frequencies
  feature_shape: tuple[int, int]  # (features, visits) of a participant
  config: MerfConfig

  @property
  def feature_dim(self) -> int:
    return 2 * self.omega.shape[0] + self.omega.shape[1]

  def arm_counts(self) -> np.ndarray:
    """Noisy participant count per arm (at least 1: a negative count is noise)."""
    counts = self.noisy_sum[-NUM_ARMS:] / self.config.count_weight
    return np.maximum(counts, 1.0)

  def arm_shares(self) -> np.ndarray:
    counts = self.arm_counts()
    return counts / counts.sum()

  def mean_embeddings(self) -> np.ndarray:
    """(NUM_ARMS, 2D + d): each arm's noisy feature sum over its noisy count."""
    sums = self.noisy_sum[:-NUM_ARMS].reshape(NUM_ARMS, self.feature_dim)
    return (sums / self.arm_counts()[:, None]).astype(np.float32)


def release_embedding(x: np.ndarray, arm: np.ndarray, config: MerfConfig, seed: int,
                      randomness: randomness_lib.PrivateRandomness,
                      stream: str = "merf") -> ReleasedEmbedding:
  """The privatised embedding of (x (N, F, V) in [0, 1], arm (N,)): the one data access."""
  check_bounded(x)
  n = len(x)
  x_flat = np.asarray(x, np.float32).reshape(n, -1)
  omega = frequencies(seed, x_flat.shape[1], config)
  total = jnp.sum(contributions(x_flat, jnp.asarray(arm), jnp.asarray(omega), config), axis=0)
  # Float32 noise from the secret stream, whatever the compute dtype.
  noise = jax.random.normal(randomness.key("noise", stream), total.shape, jnp.float32)
  noisy = total + (config.noise_multiplier * config.sensitivity) * noise
  return ReleasedEmbedding(np.asarray(jax.device_get(noisy), np.float32), omega,
                           tuple(x.shape[1:]), config)


# ----- accounting ---------------------------------------------------------------------------------

def privacy_phase(num_train: int, noise_multiplier: float) -> accounting.PrivacyPhase:
  """One Gaussian release over the whole training set: GaussianDpEvent(sigma), add/remove."""
  return accounting.PrivacyPhase(noise_multiplier=noise_multiplier, dataset_size=num_train,
                                 batch_size=num_train, sampling="full", steps=1)


def ledger(num_train: int, noise_multiplier: float) -> accounting.PrivacyLedger:
  return accounting.PrivacyLedger([privacy_phase(num_train, noise_multiplier)])


def calibrate_noise(target_epsilon: float, delta: float, num_train: int,
                    accountant: str = "rdp") -> float:
  """The noise multiplier whose one release spends `target_epsilon` at `delta`."""
  if math.isinf(target_epsilon):
    return 0.0
  return accounting.calibrate_noise_multiplier(target_epsilon, delta,
                                               privacy_phase(num_train, 1.0), accountant)


# ----- the generator: fit to the released embedding only --------------------------------------

def init_generator(key: jax.Array, out_dim: int, config: MerfConfig) -> list[dict]:
  sizes = [config.latent_dim + NUM_ARMS] + [config.generator_width] * config.generator_depth + [
      out_dim]
  layers = []
  for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
    key, sub = jax.random.split(key)
    layers.append({"w": jax.random.normal(sub, (fan_in, fan_out)) * math.sqrt(2.0 / fan_in),
                   "b": jnp.zeros(fan_out)})
  return layers


@jax.jit
def generate(params: list[dict], latent: jax.Array, arm: jax.Array) -> jax.Array:
  """Flattened participants in (0, 1) for (latent (n, k), arm (n,))."""
  h = jnp.concatenate([latent, jax.nn.one_hot(arm, NUM_ARMS)], axis=-1)
  for layer in params[:-1]:
    h = jax.nn.relu(h @ layer["w"] + layer["b"])
  return jax.nn.sigmoid(h @ params[-1]["w"] + params[-1]["b"])


def embedding_loss(params, key, target_means, arm_shares, omega, config: MerfConfig):
  """Sum over arms of share * ||released mean embedding - generated mean embedding||^2."""
  loss = 0.0
  for c in range(NUM_ARMS):
    latent = jax.random.normal(jax.random.fold_in(key, c),
                               (config.generator_batch_size, config.latent_dim))
    fake = generate(params, latent, jnp.full(config.generator_batch_size, c))
    fake_mean = jnp.mean(feature_map(fake, omega, config.linear_weight), axis=0)
    loss = loss + arm_shares[c] * jnp.sum((target_means[c] - fake_mean) ** 2)
  return loss


@functools.partial(jax.jit, static_argnames=("config",))
def _fit_step(params, opt_state, key, targets, shares, omega, config: MerfConfig):
  """One Adam step of the generator on the embedding loss (compiled once per config)."""
  loss, grad = jax.value_and_grad(embedding_loss)(params, key, targets, shares, omega, config)
  updates, opt_state = optax.adam(config.learning_rate).update(grad, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


def fit_generator(released: ReleasedEmbedding, seed: int) -> tuple[list[dict], list[float]]:
  """(generator params, loss every 100 steps) from the released embedding alone.

  Reads nothing but `released` (public) and the public seed: post-processing of the release.
  """
  config = released.config
  omega = jnp.asarray(released.omega)
  targets = jnp.asarray(released.mean_embeddings())
  shares = jnp.asarray(released.arm_shares(), jnp.float32)
  key = jax.random.PRNGKey(seed)
  key, init_key = jax.random.split(key)
  params = init_generator(init_key, int(np.prod(released.feature_shape)), config)
  opt_state = optax.adam(config.learning_rate).init(params)
  losses = []
  for i in range(config.steps):
    params, opt_state, loss = _fit_step(params, opt_state, jax.random.fold_in(key, i), targets,
                                        shares, omega, config)
    if i % 100 == 0 or i == config.steps - 1:
      losses.append(float(loss))
  return params, losses


def sample(params: list[dict], released: ReleasedEmbedding, n: int,
           key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
  """n synthetic participants (n, F, V) with arms drawn at the released arm shares."""
  arm_key, latent_key = jax.random.split(key)
  arm = jax.random.bernoulli(arm_key, float(released.arm_shares()[1]), (n,)).astype(jnp.int32)
  latent = jax.random.normal(latent_key, (n, released.config.latent_dim))
  x = generate(params, latent, arm).reshape((n,) + tuple(released.feature_shape))
  return np.asarray(x, np.float32), np.asarray(arm, np.int32)
