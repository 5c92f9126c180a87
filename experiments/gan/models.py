"""The SPRINT_gan AC-GAN (Beaulieu-Jones et al. 2019) in Flax linen, and its losses.

Layout follows greenelab/SPRINT_gan `dp_gan.py` (Keras, channels-first) translated to
channels-last: a participant is a (features, visits) grid, e.g. SBP, DBP and drug classes at 12
visits. The generator turns latent noise times a learned arm embedding into a grid; the
discriminator has two heads, real/fake and arm (auxiliary classifier GAN, Odena et al. 2017).

Neither network uses BatchNorm: DP-SGD clips each example's gradient, which needs the loss of one
example to depend on that example alone. Both networks accept a batch of one, so the DP step can
`vmap` a single-example loss.

Losses are pure functions of parameters; the modules default to the study's sizes and are passed
explicitly for other grids (e.g. `Generator(features=6, visits=4)` for pbcseq).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


class Generator(nn.Module):
  """(latent noise, arm) -> (batch, features, visits) in [0, 1].

  As in the study: z * embedding(arm) -> Dense 256 -> Dense to a coarse grid of 32 channels at
  (features, ceil(visits / 3)) -> nearest upsampling by (2, 6) -> 5x5 conv -> stride-2 4x4 conv
  to one channel at (features, visits). The study's last layer was linear; a sigmoid keeps
  outputs in the [0, 1] range of the scaled data.
  """
  latent_dim: int = 100
  features: int = 3
  visits: int = 12
  coarse_channels: int = 32
  conv_channels: int = 256

  @nn.compact
  def __call__(self, latent: jax.Array, arm: jax.Array) -> jax.Array:
    arm_embedding = nn.Embed(2, self.latent_dim,
                             embedding_init=nn.initializers.glorot_normal(), name="arm_embedding")
    # The Hadamard product lets the arm rescale every latent direction, the study's conditioning.
    h = latent * arm_embedding(jnp.asarray(arm, jnp.int32))
    h = nn.relu(nn.Dense(256)(h))
    coarse_visits = math.ceil(self.visits / 3)
    h = nn.relu(nn.Dense(self.coarse_channels * self.features * coarse_visits)(h))
    h = h.reshape(latent.shape[0], self.features, coarse_visits, self.coarse_channels)
    h = jnp.repeat(jnp.repeat(h, 2, axis=1), 6, axis=2)  # (B, 2F, 6 * coarse_visits, C)
    h = nn.relu(nn.Conv(self.conv_channels, (5, 5), padding="SAME",
                        kernel_init=nn.initializers.glorot_normal())(h))
    h = nn.Conv(1, (4, 4), strides=(2, 2), padding="SAME",
                kernel_init=nn.initializers.glorot_normal())(h)
    # The stride-2 conv gives 3 * ceil(visits / 3) visits; extra trailing ones are cropped.
    return nn.sigmoid(h[:, :, :self.visits, 0])


class Discriminator(nn.Module):
  """(batch, features, visits) -> (real/fake logit, arm logit), each (batch,).

  As in the study: conv 32 (3x3, stride 2) -> conv 64 (3x3) with LeakyReLU(0.3) and dropout 0.3
  -> Dense 1024 -> Dense 1024 -> two heads. The study's 2-way softmax arm head is a single
  logit here (the same model, one fewer redundant parameter row).
  """
  dense_width: int = 1024
  dropout_rate: float = 0.3

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    h = x[..., None]  # One channel over the (features, visits) grid.
    drop = lambda y: nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    h = drop(nn.leaky_relu(nn.Conv(32, (3, 3), strides=(2, 2), padding="SAME")(h), 0.3))
    h = drop(nn.leaky_relu(nn.Conv(64, (3, 3), padding="SAME")(h), 0.3))
    h = h.reshape(h.shape[0], -1)
    h = drop(nn.relu(nn.Dense(self.dense_width)(h)))
    h = nn.relu(nn.Dense(self.dense_width)(h))
    real_logit = nn.Dense(1, name="real_fake_head")(h)[:, 0]
    arm_logit = nn.Dense(1, name="arm_head")(h)[:, 0]
    return real_logit, arm_logit


class MlpDiscriminator(nn.Module):
  """(batch, features, visits) -> (real/fake logit, arm logit): a small MLP on the flat grid.

  For DP at small data: the DP noise added to the clipped gradient sum has norm about
  noise_multiplier * clip_norm * sqrt(parameters), the signal at most clip_norm * batch, so the
  study's conv discriminator (~55k parameters even at width 64) drowns its gradient at batch
  32. A 36 -> width -> width MLP (~2.5k parameters at width 32) keeps the noise near the signal.
  """
  dense_width: int = 32
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    h = x.reshape(x.shape[0], -1)
    drop = lambda y: nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    h = drop(nn.leaky_relu(nn.Dense(self.dense_width)(h), 0.2))
    h = nn.leaky_relu(nn.Dense(self.dense_width)(h), 0.2)
    real_logit = nn.Dense(1, name="real_fake_head")(h)[:, 0]
    arm_logit = nn.Dense(1, name="arm_head")(h)[:, 0]
    return real_logit, arm_logit


@functools.partial(jax.jit, static_argnames=("generator", "discriminator"))
def init_params(key: jax.Array, generator: Generator = Generator(),
                discriminator: Discriminator = Discriminator()):
  """(generator params, discriminator params) for single-example dummy inputs.

  Jitted because eager initialisation compiles each small op on its own, several times slower.
  """
  generator_key, discriminator_key = jax.random.split(key)
  latent = jnp.zeros((1, generator.latent_dim))
  arm = jnp.zeros((1,), jnp.int32)
  g_params = generator.init(generator_key, latent, arm)["params"]
  grid = jnp.zeros((1, generator.features, generator.visits))
  d_params = discriminator.init(discriminator_key, grid)["params"]
  return g_params, d_params


def sample_latent(key: jax.Array, n: int, latent_dim: int = 100) -> jax.Array:
  """Latent noise ~ Uniform(-1, 1), the study's choice."""
  return jax.random.uniform(key, (n, latent_dim), minval=-1.0, maxval=1.0)


def sample_arms(key: jax.Array, n: int, arm_probs=0.5) -> jax.Array:
  """int32 (n,) arms; `arm_probs` is P(arm = 1), or the pair (P(arm = 0), P(arm = 1))."""
  probs = jnp.atleast_1d(jnp.asarray(arm_probs, jnp.float32))
  if probs.shape == (1,):
    probs = jnp.concatenate([1.0 - probs, probs])
  if probs.shape != (2,):
    raise ValueError(f"arm_probs must be P(arm=1) or a pair (p0, p1), got shape {probs.shape}.")
  return jax.random.categorical(key, jnp.log(probs), shape=(n,)).astype(jnp.int32)


def generate(g_params, latent: jax.Array, arm: jax.Array,
             generator: Generator = Generator()) -> jax.Array:
  """(n, features, visits) synthetic participants for given latent noise and arms."""
  return generator.apply({"params": g_params}, latent, arm)


def sample(g_params, key: jax.Array, n: int, arm_probs=0.5,
           generator: Generator = Generator()) -> tuple[jax.Array, jax.Array]:
  """n synthetic participants and their arms; the same key gives the same sample."""
  latent_key, arm_key = jax.random.split(key)
  arm = sample_arms(arm_key, n, arm_probs)
  latent = sample_latent(latent_key, n, generator.latent_dim)
  return generate(g_params, latent, arm, generator), arm


def discriminator_logits(d_params, x: jax.Array, discriminator: Discriminator = Discriminator(),
                         dropout_key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(real/fake logits, arm logits) for a batch (B, F, V); dropout on iff `dropout_key` given."""
  train = dropout_key is not None
  rngs = {"dropout": dropout_key} if train else {}
  return discriminator.apply({"params": d_params}, x, train=train, rngs=rngs)


def discriminator_loss_per_example(d_params, x: jax.Array, arm: jax.Array, is_real: jax.Array,
                                   discriminator: Discriminator = Discriminator(),
                                   dropout_key: jax.Array | None = None) -> jax.Array:
  """Sigmoid cross-entropy on real/fake plus on the arm, one value per example.

  `x` is one example (F, V), giving a scalar (the form the DP step vmaps), or a batch
  (B, F, V) with `arm`, `is_real` of shape (B,), giving (B,). The arm term is kept for real and
  generated examples alike, as in the study (the generated arm is the one it was asked for).
  """
  single = x.ndim == 2
  batch = lambda v: jnp.reshape(jnp.asarray(v, jnp.float32), (-1,))
  x = x[None] if single else x
  real_logit, arm_logit = discriminator_logits(d_params, x, discriminator, dropout_key)
  loss = (optax.sigmoid_binary_cross_entropy(real_logit, batch(is_real))
          + optax.sigmoid_binary_cross_entropy(arm_logit, batch(arm)))
  return loss[0] if single else loss


def generator_loss(g_params, d_params, key: jax.Array, batch_size: int,
                   generator: Generator = Generator(),
                   discriminator: Discriminator = Discriminator(), arm_probs=0.5) -> jax.Array:
  """Mean non-saturating AC-GAN generator loss over `batch_size` fresh samples.

  The generator wants its samples called real and classified as the arm it was asked for. The
  discriminator runs without dropout and its parameters are only read (no gradient reaches
  them), so this step sees real data only through the private discriminator: under DP it is
  post-processing.
  """
  fake, arm = sample(g_params, key, batch_size, arm_probs, generator)
  real_logit, arm_logit = discriminator_logits(jax.lax.stop_gradient(d_params), fake,
                                               discriminator)
  return jnp.mean(optax.sigmoid_binary_cross_entropy(real_logit, jnp.ones_like(real_logit))
                  + optax.sigmoid_binary_cross_entropy(arm_logit, arm.astype(jnp.float32)))


def count_params(params) -> int:
  """Number of scalars in a parameter tree."""
  return sum(p.size for p in jax.tree_util.tree_leaves(params))
