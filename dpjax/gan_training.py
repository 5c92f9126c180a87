"""Differentially private training of the SPRINT_gan AC-GAN (`dpjax.models.gan`).

Only the discriminator reads real participants, so only its update is privatised. Each
discriminator step draws a Poisson batch of real participants and pairs every one of them with a
freshly generated participant; the gradient of each (real, generated) PAIR's loss is clipped to
`clip_norm`, the clipped pair gradients are summed, Gaussian noise of standard deviation
`noise_multiplier * clip_norm` is added once, and the sum is divided by the expected batch size
(`train.dp_gradient`). This is the study's mechanism (SPRINT_gan `dp_gan.py` clips the gradient
of one real and one generated record together at batch size 1) made per-example at any batch
size by `vmap`.

Why one Poisson-sampled Gaussian event per discriminator step is the whole privacy cost:
  * the generated partner of a pair is drawn from the generator's current parameters and fresh
    noise, independently of the real data of this step; conditional on the generated records,
    the pair's clipped gradient is a function of one real participant bounded in l2 norm by
    `clip_norm`. Adding or removing one participant adds or removes one such term (its pair
    goes with it), so the noisy sum is the sampled Gaussian mechanism with sensitivity
    `clip_norm`, exactly what `accounting.step_event` describes;
  * the generator step reads the discriminator's (already privatised) parameters and fresh
    noise, never the data: post-processing, free. So are the generator's parameters, hence
    the generated partners of later steps, and the synthetic data released at the end.
The alternative of privatising only the real half and adding the generated half's gradient
unclipped is private for the same reason, but with the study's tiny clip norm (1e-4) the
unclipped generated half would swamp the real half; clipping pairs keeps them on one scale.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from dpjax import accounting
from dpjax import checkpoint
from dpjax import clipping
from dpjax import sampling
from dpjax import train
from dpjax.models import gan


@flax.struct.dataclass
class GanState:
  step: jax.Array
  g_params: dict
  d_params: dict
  g_opt_state: optax.OptState
  d_opt_state: optax.OptState
  key: jax.Array  # base key (raw uint32); step t draws from fold_in(key, t)


@dataclasses.dataclass(frozen=True)
class GanTrainConfig:
  """The knobs of one GAN run; the defaults are the study's command line.

  Attributes:
    batch_size: expected number of real participants per discriminator step (Poisson).
    learning_rate: Adam learning rate of both networks (beta_1 = `adam_b1`, as in DCGAN).
    clip_norm: l2 bound on each (real, generated) pair's discriminator gradient.
    noise_multiplier: noise standard deviation over `clip_norm`.
    private: False trains without clipping or noise (epsilon = inf), for comparison.
    dropout: the discriminator's dropout (0.3) during training, one key per example.
    generator_batch_factor: the generator step uses this many times `batch_size` samples
      (the study: 2, "an identical number of images as the discriminator").
    arm_probs: P(arm = 1) of generated participants; 1/2, the trial's randomisation ratio
      (taking it from the training data would be an unaccounted release).
    microbatch_size: clip this many pairs at a time (bounds memory of per-pair gradients).
  """
  batch_size: int = 1
  learning_rate: float = 2e-5
  adam_b1: float = 0.5
  clip_norm: float = 1e-4
  noise_multiplier: float = 1.0
  private: bool = True
  dropout: bool = True
  generator_batch_factor: int = 2
  arm_probs: float = 0.5
  microbatch_size: int | None = None

  def __post_init__(self):
    if self.batch_size < 1:
      raise ValueError(f"batch_size={self.batch_size} must be >= 1.")
    if not self.learning_rate > 0:
      raise ValueError(f"learning_rate={self.learning_rate} must be > 0.")
    if self.private and not (self.clip_norm > 0 and math.isfinite(self.clip_norm)):
      raise ValueError(f"clip_norm={self.clip_norm}: a private run needs a finite clip norm > 0.")
    if self.private and self.noise_multiplier <= 0:
      raise ValueError("private=True needs noise_multiplier > 0 (noise 0 gives epsilon = inf; "
                       "use private=False for a non-private run).")

  def dp_config(self, expected_batch_size: float) -> train.DPConfig | None:
    if not self.private:
      return None
    return train.DPConfig(
        clipping.ClippingConfig(clip_norm=self.clip_norm, microbatch_size=self.microbatch_size),
        self.noise_multiplier, expected_batch_size)

  def optimizer(self) -> optax.GradientTransformation:
    return optax.adam(self.learning_rate, b1=self.adam_b1)


def pair_loss(d_params, pair: dict, discriminator: gan.Discriminator) -> jax.Array:
  """Discriminator loss of one (real, generated) pair: real/fake and arm heads on both.

  `pair` holds "real" (F, V), "real_arm" (), "fake" (F, V), "fake_arm" () and, for dropout,
  "dropout_key" (a raw key); without that entry the discriminator runs deterministically.
  """
  keys = (None, None)
  if "dropout_key" in pair:
    keys = tuple(jax.random.split(pair["dropout_key"]))
  real = gan.discriminator_loss_per_example(d_params, pair["real"], pair["real_arm"], 1.0,
                                            discriminator, keys[0])
  fake = gan.discriminator_loss_per_example(d_params, pair["fake"], pair["fake_arm"], 0.0,
                                            discriminator, keys[1])
  return real + fake


def make_pairs(g_params, real_x, real_arm, key, generator: gan.Generator, arm_probs: float,
               dropout: bool) -> dict:
  """One generated partner (and a dropout key) for each slot of the padded real batch."""
  fake_key, dropout_key = jax.random.split(key)
  fake, fake_arm = gan.sample(jax.lax.stop_gradient(g_params), fake_key, real_x.shape[0],
                              arm_probs, generator)
  pairs = {"real": real_x, "real_arm": real_arm, "fake": fake, "fake_arm": fake_arm}
  if dropout:
    pairs["dropout_key"] = jax.random.split(dropout_key, real_x.shape[0])
  return pairs


def discriminator_gradient(d_params, pairs: dict, mask, key, discriminator: gan.Discriminator,
                           dp: train.DPConfig | None, expected_batch_size: float):
  """(gradient, metrics): privatised through the core when `dp`, else the plain gradient.

  Both are divided by the expected batch size, so with noise 0 and an infinite clip norm they
  agree; the non-private one skips per-example gradients (it needs none).
  """
  loss_fn = lambda params, pair: pair_loss(params, pair, discriminator)
  if dp is not None:
    grad, m = train.dp_gradient(loss_fn, d_params, pairs, mask, key, dp)
    return grad, train.metrics_dict(m)

  def summed_loss(params):
    losses = jax.vmap(loss_fn, in_axes=(None, 0))(params, pairs)
    return jnp.sum(jnp.where(mask, losses, 0.0)) / expected_batch_size, losses

  (_, losses), grad = jax.value_and_grad(summed_loss, has_aux=True)(d_params)
  n = jnp.maximum(jnp.sum(mask), 1)
  return grad, {"loss": jnp.sum(jnp.where(mask, losses, 0.0)) / n,
                "batch_size": jnp.sum(mask).astype(jnp.float32)}


def make_discriminator_step(generator: gan.Generator, discriminator: gan.Discriminator,
                            config: GanTrainConfig, expected_batch_size: float, jit: bool = True):
  """`d_step(state, real_x, real_arm, mask) -> (state with new d_params, metrics)`."""
  dp = config.dp_config(expected_batch_size)
  optimizer = config.optimizer()

  def d_step(state: GanState, real_x, real_arm, mask):
    step_key = jax.random.fold_in(state.key, state.step)
    pair_key, noise_key = jax.random.split(jax.random.fold_in(step_key, 0))
    pairs = make_pairs(state.g_params, real_x, real_arm, pair_key, generator, config.arm_probs,
                       config.dropout)
    grad, metrics = discriminator_gradient(state.d_params, pairs, mask, noise_key, discriminator,
                                           dp, expected_batch_size)
    updates, d_opt_state = optimizer.update(grad, state.d_opt_state, state.d_params)
    state = state.replace(d_params=optax.apply_updates(state.d_params, updates),
                          d_opt_state=d_opt_state)
    return state, metrics

  return jax.jit(d_step, donate_argnames="state") if jit else d_step


# Cached so that runs with the same networks and settings (a resume, a repeat) compile once.
@functools.lru_cache(maxsize=16)
def make_train_step(generator: gan.Generator, discriminator: gan.Discriminator,
                    config: GanTrainConfig, expected_batch_size: float, jit: bool = True):
  """`step(state, real_x, real_arm, mask) -> (state, metrics)`: a discriminator step, then a
  generator step against the updated discriminator, in one `jax.jit` (one compile)."""
  d_step = make_discriminator_step(generator, discriminator, config, expected_batch_size, jit=False)
  optimizer = config.optimizer()
  generator_batch = max(1, round(config.generator_batch_factor * expected_batch_size))

  def step(state: GanState, real_x, real_arm, mask):
    state, metrics = d_step(state, real_x, real_arm, mask)
    g_key = jax.random.fold_in(jax.random.fold_in(state.key, state.step), 1)
    g_loss, g_grad = jax.value_and_grad(gan.generator_loss)(
        state.g_params, state.d_params, g_key, generator_batch, generator, discriminator,
        config.arm_probs)
    updates, g_opt_state = optimizer.update(g_grad, state.g_opt_state, state.g_params)
    state = state.replace(step=state.step + 1, g_params=optax.apply_updates(state.g_params, updates),
                          g_opt_state=g_opt_state)
    return state, {**metrics, "g_loss": g_loss}

  return jax.jit(step, donate_argnames="state") if jit else step

def init_state(seed: int, generator: gan.Generator, discriminator: gan.Discriminator,
               config: GanTrainConfig) -> GanState:
  """Initial networks and optimiser states; the same seed gives the same state."""
  init_key, train_key = jax.random.split(jax.random.PRNGKey(seed))
  g_params, d_params = gan.init_params(init_key, generator, discriminator)
  optimizer = config.optimizer()
  return GanState(step=jnp.zeros((), jnp.int32), g_params=g_params, d_params=d_params,
                  g_opt_state=optimizer.init(g_params), d_opt_state=optimizer.init(d_params),
                  key=train_key)


@dataclasses.dataclass
class GanResult:
  state: GanState
  ledger: accounting.PrivacyLedger
  history: list[dict]  # one entry per epoch (metrics, epsilon, and on_epoch's results)
  steps_per_epoch: int


def make_sampler(num_train: int, config: GanTrainConfig, seed: int) -> sampling.BatchSampler:
  return sampling.BatchSampler(num_train, config.batch_size, "poisson", seed=seed,
                               multiple_of=config.microbatch_size or 1)


def privacy_phase(num_train: int, config: GanTrainConfig, seed: int = 0) -> accounting.PrivacyPhase:
  """The phase of one discriminator step (noise 0 for a non-private run)."""
  sampler = make_sampler(num_train, config, seed)
  return sampler.privacy_phase(config.noise_multiplier if config.private else 0.0)


def calibrate_noise(target_epsilon: float, delta: float, num_train: int, batch_size: int,
                    epochs: int, accountant: str = "rdp") -> float:
  """The noise multiplier that spends `target_epsilon` over `epochs` epochs of D steps."""
  sampler = sampling.BatchSampler(num_train, batch_size, "poisson")
  phase = sampler.privacy_phase(1.0).with_steps(epochs * sampler.steps_per_epoch)
  return accounting.calibrate_noise_multiplier(target_epsilon, delta, phase, accountant)


def train_gan(train_x: np.ndarray, train_arm: np.ndarray, *, generator: gan.Generator,
              discriminator: gan.Discriminator, config: GanTrainConfig, epochs: int, seed: int,
              delta: float, accountant: str = "rdp", workdir: str | None = None,
              on_epoch: Callable[[int, GanState], dict] | None = None,
              checkpoint_every: int = 1, run_config: dict | None = None) -> GanResult:
  """Trains the GAN for `epochs` epochs of `round(N / batch_size)` steps each.

  With `workdir`, resumes from its checkpoint (networks, optimisers, step, privacy ledger and
  the epoch history) and checkpoints atomically every `checkpoint_every` epochs and at the end.
  `on_epoch(epoch, state)` (1-based epoch) may return results to merge into that epoch's entry.
  """
  train_x = np.asarray(train_x, np.float32)
  train_arm = np.asarray(train_arm, np.int32)
  train.check_finite_data(train_x)
  expected_shape = (generator.features, generator.visits)
  if train_x.ndim != 3 or train_x.shape[1:] != expected_shape:
    raise ValueError(f"train_x has shape {train_x.shape}; the generator makes (N, "
                     f"{expected_shape[0]}, {expected_shape[1]}) grids: pass a Generator with "
                     "features= and visits= of the data.")
  accounting.check_delta(delta)
  num_train = train_x.shape[0]
  sampler = make_sampler(num_train, config, seed)
  steps_per_epoch = sampler.steps_per_epoch
  phase = sampler.privacy_phase(config.noise_multiplier if config.private else 0.0)
  step_fn = make_train_step(generator, discriminator, config, sampler.expected_batch_size)

  state = init_state(seed, generator, discriminator, config)
  ledger, history, start_epoch = accounting.PrivacyLedger(), [], 0
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    restored = checkpoint.restore(workdir, state)
    if restored is not None:
      state, meta = restored
      ledger = accounting.PrivacyLedger.from_dict(meta["ledger"])
      history, start_epoch = meta["history"], meta["epoch"]
      logging.info("resumed from %s at epoch %d (step %d)", checkpoint.path(workdir),
                   start_epoch, int(state.step))
  ledger.begin(phase)

  def epsilon_now():
    return ledger.epsilon(delta, accountant) if config.private else math.inf

  for epoch in range(start_epoch, epochs):
    start, num_examples, step_metrics = time.perf_counter(), 0, []
    for t in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch):
      batch = sampler.batch(t)
      state, metrics = step_fn(state, train_x[batch.indices], train_arm[batch.indices],
                               batch.mask)
      ledger.record(1)
      num_examples += batch.size
      step_metrics.append(metrics)
    step_metrics = jax.device_get(step_metrics)
    seconds = time.perf_counter() - start
    entry = {"epoch": epoch + 1, "step": int(state.step),
             **{k: float(np.mean([m[k] for m in step_metrics])) for k in step_metrics[0]},
             "epsilon": epsilon_now(), "delta": delta, "examples_per_sec": num_examples / seconds,
             "seconds": seconds}
    if not (math.isfinite(entry["loss"]) and math.isfinite(entry["g_loss"])):
      raise FloatingPointError(f"epoch {epoch + 1}: discriminator loss {entry['loss']}, generator "
                               f"loss {entry['g_loss']}; stopping (lower --lr).")
    if on_epoch is not None:
      entry.update(on_epoch(epoch + 1, state) or {})
    history.append(entry)
    logging.info("epoch %d/%d %s", epoch + 1, epochs,
                 " ".join(f"{k}={v:.4g}" for k, v in entry.items()
                          if k not in ("epoch",) and isinstance(v, (int, float))))
    if workdir and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == epochs):
      checkpoint.save(workdir, state, {"ledger": ledger.to_dict(), "history": history,
                                       "epoch": epoch + 1, "config": run_config or {}})
  return GanResult(state=state, ledger=ledger, history=history, steps_per_epoch=steps_per_epoch)


def discriminator_throughput(generator: gan.Generator, discriminator: gan.Discriminator,
                             config: GanTrainConfig, batch_sizes, num_examples: int = 512,
                             seed: int = 0, repeats: int = 3) -> list[dict]:
  """Examples/s of the private discriminator step (pairs, clipping, noise, Adam) per batch size.

  Batch size 1 is the study's approach (one jitted step per participant). Each batch size runs
  `num_examples` real examples (at least one step) after a compile-and-warm-up step; the best
  of `repeats` timings is kept, batch sizes interleaved per repeat so a shared machine's load
  hits all alike.
  """
  rng = np.random.default_rng(seed)
  grid = (generator.features, generator.visits)
  steps, data = {}, {}
  for b in batch_sizes:
    cfg = dataclasses.replace(config, batch_size=b)
    steps[b] = make_discriminator_step(generator, discriminator, cfg, float(b))
    data[b] = (jnp.asarray(rng.uniform(size=(b,) + grid), jnp.float32),
               jnp.asarray(rng.integers(0, 2, b), jnp.int32), jnp.ones(b, bool))
  states = {b: init_state(seed, generator, discriminator, config) for b in batch_sizes}
  for b in batch_sizes:  # compile
    states[b], m = steps[b](states[b], *data[b])
    jax.block_until_ready(m)
  best = {b: math.inf for b in batch_sizes}
  for _ in range(repeats):
    for b in batch_sizes:
      num_steps = max(1, num_examples // b)
      start = time.perf_counter()
      for _ in range(num_steps):
        states[b], m = steps[b](states[b], *data[b])
      jax.block_until_ready((states[b].d_params, m))
      best[b] = min(best[b], (time.perf_counter() - start) / (num_steps * b))
  return [{"batch_size": b, "examples_per_sec": 1.0 / best[b],
           "speedup_vs_batch_1": (best[batch_sizes[0]] / best[b]) if batch_sizes[0] == 1 else None}
          for b in batch_sizes]
