"""Differentially private training of the SPRINT_gan AC-GAN (`experiments.gan.models`).

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
    noise, never the data: post-processing, free. So are the generator's parameters at every
    step, hence the generated partners of later steps and every synthetic data set sampled
    from any intermediate generator: the epsilon of the whole run covers all of them at once.
The alternative of privatising only the real half and adding the generated half's gradient
unclipped is private for the same reason, but with the study's tiny clip norm (1e-4) the
unclipped generated half would swamp the real half; clipping pairs keeps them on one scale.

The loop is `dpjax.engine.train`; the GAN plugs in as its step (the engine's `make_step` hook):
the per-example loss is the pair loss, the parameters are {"discriminator", "generator"}, and the
generator's update rides in the same step after the discriminator's. The engine therefore owns
what the guarantee rests on: batch selection and the noise key come from `randomness` (the OS
CSPRNG unless the caller opts into a secret seed), the ledger, the checkpoint (under
`<workdir>/private/`, with the secret key), and the split of metrics into public ones and the
private training statistics (the real-pair loss, clipped fraction, realised batch sizes). The
keys of a step (generated partners, dropout, the discriminator's noise, the generator's samples)
all derive from the engine's secret per-step key; `seed` only initialises the networks.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax import accounting
from dpjax import clipping
from dpjax import engine
from dpjax import randomness as randomness_lib
from dpjax import sampling
from dpjax import train
from experiments.gan import models

DISCRIMINATOR, GENERATOR = "discriminator", "generator"
PROGRESS_FILE = "progress.jsonl"  # the public record `dpjax.engine` appends in its workdir


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


# ----- the per-example (pair) loss and the discriminator's gradient ---------------------------

def pair_loss(d_params, pair: dict, discriminator: models.Discriminator) -> jax.Array:
  """Discriminator loss of one (real, generated) pair: real/fake and arm heads on both.

  `pair` holds "real" (F, V), "real_arm" (), "fake" (F, V), "fake_arm" () and, for dropout,
  "dropout_key" (a raw key); without that entry the discriminator runs deterministically.
  """
  keys = (None, None)
  if "dropout_key" in pair:
    keys = tuple(jax.random.split(pair["dropout_key"]))
  real = models.discriminator_loss_per_example(d_params, pair["real"], pair["real_arm"], 1.0,
                                               discriminator, keys[0])
  fake = models.discriminator_loss_per_example(d_params, pair["fake"], pair["fake_arm"], 0.0,
                                               discriminator, keys[1])
  return real + fake


# Cached so that every run with the same discriminator hands the engine the same function, and
# the compiled step (cached on it) is reused.
@functools.lru_cache(maxsize=16)
def pair_loss_fn(discriminator: models.Discriminator) -> Callable:
  """`loss_fn(d_params, pair)`: the per-example function of the private step."""
  return functools.partial(pair_loss, discriminator=discriminator)


def make_pairs(g_params, real_x, real_arm, key, generator: models.Generator, arm_probs: float,
               dropout: bool) -> dict:
  """One generated partner (and a dropout key) for each slot of the padded real batch."""
  fake_key, dropout_key = jax.random.split(key)
  fake, fake_arm = models.sample(jax.lax.stop_gradient(g_params), fake_key, real_x.shape[0],
                                 arm_probs, generator)
  pairs = {"real": real_x, "real_arm": real_arm, "fake": fake, "fake_arm": fake_arm}
  if dropout:
    pairs["dropout_key"] = jax.random.split(dropout_key, real_x.shape[0])
  return pairs


def discriminator_gradient(loss_fn, d_params, pairs: dict, mask, key,
                           dp: train.DPConfig | None, expected_batch_size: float):
  """(gradient, private metrics): privatised by `train.dp_gradient` when `dp`, else plain.

  Both are divided by the expected batch size, so with noise 0 and an infinite clip norm they
  agree; the non-private one skips per-example gradients (it needs none).
  """
  if dp is not None:
    grad, m = train.dp_gradient(loss_fn, d_params, pairs, mask, key, dp)
    return grad, train.private_metrics(m)

  def summed_loss(params):
    losses = jax.vmap(loss_fn, in_axes=(None, 0))(params, pairs)
    return jnp.sum(jnp.where(mask, losses, 0.0)) / expected_batch_size, losses

  (_, losses), grad = jax.value_and_grad(summed_loss, has_aux=True)(d_params)
  n = jnp.maximum(jnp.sum(mask), 1)
  return grad, {"loss": jnp.sum(jnp.where(mask, losses, 0.0)) / n,
                "batch_size": jnp.sum(mask).astype(jnp.float32)}


# ----- the step the engine runs -----------------------------------------------------------------

def per_network(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
  """`optimizer` run on each network of {"discriminator": ..., "generator": ...} separately.

  The step updates the discriminator first and the generator against the updated one, so it
  calls `update` with one network at a time; `init` gives the engine both optimiser states.
  """
  def init(params):
    return {name: optimizer.init(p) for name, p in params.items()}

  def update(grads, state, params=None):
    results = {name: optimizer.update(g, state[name], None if params is None else params[name])
               for name, g in grads.items()}
    return ({name: r[0] for name, r in results.items()},
            {name: r[1] for name, r in results.items()})

  return optax.GradientTransformation(init, update)


@functools.lru_cache(maxsize=16)
def optimizer_for(config: GanTrainConfig) -> optax.GradientTransformation:
  """The two networks' Adam, one object per config (the compiled step is cached on it)."""
  return per_network(config.optimizer())


def _apply(optimizer, name: str, params: dict, opt_state: dict, grad) -> tuple[dict, dict]:
  """(params, opt_state) with network `name` updated by `grad`, the other one unchanged."""
  updates, new_state = optimizer.update({name: grad}, {name: opt_state[name]},
                                        {name: params[name]})
  return ({**params, name: optax.apply_updates(params[name], updates[name])},
          {**opt_state, name: new_state[name]})


# Cached so that runs with the same networks and settings (a resume, a repeat) compile once.
@functools.lru_cache(maxsize=16)
def make_gan_step(generator: models.Generator, discriminator: models.Discriminator,
                  config: GanTrainConfig, expected_batch_size: float, loss_fn: Callable,
                  optimizer: optax.GradientTransformation, dp: train.DPConfig | None,
                  generator_step: bool = True, jit: bool = True):
  """`step(state, batch, mask) -> (state, private metrics)` on a `train.TrainState` whose
  params and opt_state are {"discriminator": ..., "generator": ...} and whose batch is
  {"x": (B, F, V), "arm": (B,)}: a private discriminator step, then (unless
  `generator_step=False`, for benchmarks) a generator step against the updated discriminator,
  in one `jax.jit`.
  """
  generator_batch = max(1, round(config.generator_batch_factor * expected_batch_size))

  def step(state: train.TrainState, batch, mask):
    # The one secret key of this step, split: nothing here derives from a public seed.
    pair_key, noise_key, g_key = jax.random.split(train.step_key(state), 3)
    params, opt_state = state.params, state.opt_state
    pairs = make_pairs(params[GENERATOR], batch["x"], batch["arm"], pair_key, generator,
                       config.arm_probs, config.dropout)
    grad, metrics = discriminator_gradient(loss_fn, params[DISCRIMINATOR], pairs, mask,
                                           noise_key, dp, expected_batch_size)
    params, opt_state = _apply(optimizer, DISCRIMINATOR, params, opt_state, grad)
    if generator_step:
      g_loss, g_grad = jax.value_and_grad(models.generator_loss)(
          params[GENERATOR], params[DISCRIMINATOR], g_key, generator_batch, generator,
          discriminator, config.arm_probs)
      params, opt_state = _apply(optimizer, GENERATOR, params, opt_state, g_grad)
      metrics = {**metrics, "g_loss": g_loss}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return jax.jit(step, donate_argnames="state") if jit else step


def step_factory(generator: models.Generator, discriminator: models.Discriminator,
                 config: GanTrainConfig, expected_batch_size: float):
  """The engine's `make_step(loss_fn, optimizer, dp, mesh)` for the GAN: `loss_fn` is the pair
  loss and `optimizer` the per-network one that `train_gan` gave the engine."""
  def make_step(loss_fn, optimizer, dp, mesh):
    if mesh is not None:
      raise ValueError("data_parallel is not supported by the GAN step; train it on one device "
                       "(LoopConfig.data_parallel=False).")
    return make_gan_step(generator, discriminator, config, expected_batch_size, loss_fn,
                         optimizer, dp)
  return make_step


def compiled_step(generator: models.Generator, discriminator: models.Discriminator,
                  config: GanTrainConfig, expected_batch_size: float):
  """The compiled step `train_gan` runs for these settings (the same cached object)."""
  return make_gan_step(generator, discriminator, config, expected_batch_size,
                       pair_loss_fn(discriminator), optimizer_for(config),
                       config.dp_config(expected_batch_size))


class _CountingSteps:
  """A `make_step` hook that also keeps the number of the last step run, which `on_eval` needs
  (the engine hands its eval_fn only the parameters). Read from the state once, since a
  resumed run starts at its checkpoint's step; then counted on the host, without a sync."""

  def __init__(self, make_step):
    self._make_step, self._step_fn, self.done = make_step, None, None

  def __call__(self, loss_fn, optimizer, dp, mesh):
    self._step_fn = self._make_step(loss_fn, optimizer, dp, mesh)
    return self._run

  def _run(self, state, batch, mask):
    if self.done is None:
      self.done = int(state.step)
    state, metrics = self._step_fn(state, batch, mask)
    self.done += 1
    return state, metrics


# ----- initialisation, sampling, accounting -----------------------------------------------------

def init_params(seed: int, generator: models.Generator,
                discriminator: models.Discriminator) -> dict:
  """{"discriminator", "generator"} initial parameters: a public function of `seed`."""
  g_params, d_params = models.init_params(jax.random.PRNGKey(seed), generator, discriminator)
  return {DISCRIMINATOR: d_params, GENERATOR: g_params}


def make_sampler(num_train: int, config: GanTrainConfig) -> sampling.BatchSampler:
  """Poisson batches of real participants; which ones is secret (the engine picks the source)."""
  return sampling.BatchSampler(num_train, config.batch_size, "poisson",
                               multiple_of=config.microbatch_size or 1)


def privacy_phase(num_train: int, config: GanTrainConfig) -> accounting.PrivacyPhase:
  """The phase of one discriminator step (noise 0 for a non-private run)."""
  return make_sampler(num_train, config).privacy_phase(
      config.noise_multiplier if config.private else 0.0)


def num_steps(num_train: int, batch_size: int, epochs: float) -> int:
  """Discriminator steps of `epochs` passes: `sampling.steps_for_epochs`, the one rule."""
  return sampling.steps_for_epochs(epochs, num_train, batch_size)


def calibrate_noise(target_epsilon: float, delta: float, num_train: int, batch_size: int,
                    epochs: float, accountant: str = "rdp") -> float:
  """The noise multiplier that spends `target_epsilon` over `epochs` epochs of D steps."""
  sampler = sampling.BatchSampler(num_train, batch_size, "poisson")
  phase = sampler.privacy_phase(1.0).with_steps(sampler.steps_for_epochs(epochs))
  return accounting.calibrate_noise_multiplier(target_epsilon, delta, phase, accountant)


# ----- training -----------------------------------------------------------------------------

@dataclasses.dataclass
class GanResult:
  run: engine.TrainResult
  history: list[dict]  # public: step, epsilon, throughput, on_eval's results (resumes included)
  num_steps: int
  steps_per_epoch: float  # N / B, the expected steps of one pass (epoch labels)

  @property
  def ledger(self) -> accounting.PrivacyLedger:
    return self.run.ledger

  @property
  def g_params(self):
    return self.run.state.params[GENERATOR]

  @property
  def d_params(self):
    return self.run.state.params[DISCRIMINATOR]

  @property
  def private_history(self) -> list[dict]:
    """This process's training-batch statistics (real-pair loss, ...): private diagnostics."""
    return self.run.private_history


def read_public_history(workdir: str) -> list[dict]:
  """The engine's public progress records of every process that trained in `workdir`.

  A resumed run repeats the steps after its checkpoint: the last record of a step wins.
  """
  by_step = {}
  with open(os.path.join(workdir, PROGRESS_FILE)) as f:
    for line in f:
      if line.strip():
        entry = json.loads(line)
        by_step[entry["step"]] = entry
  return [by_step[s] for s in sorted(by_step)]


def train_gan(train_x: np.ndarray, train_arm: np.ndarray, *, generator: models.Generator,
              discriminator: models.Discriminator, config: GanTrainConfig, epochs: float,
              seed: int, delta: float, accountant: str = "rdp",
              randomness: randomness_lib.PrivateRandomness = randomness_lib.SECURE,
              stream: str = "gan", workdir: str | None = None,
              eval_every_epochs: float | None = None,
              on_eval: Callable[[int, dict], dict] | None = None,
              checkpoint_every_epochs: float = 1, run_config: dict | None = None) -> GanResult:
  """Trains the GAN for `sampling.steps_for_epochs(epochs, N, batch_size)` steps on the engine.

  `seed` initialises the networks (public); batches and every training key come from
  `randomness` under the name `stream` (give each GAN of a study its own). With `workdir`, the
  engine resumes from and checkpoints to `<workdir>/private/` and appends public progress to
  `<workdir>/progress.jsonl`. `on_eval(step, params)` runs every `eval_every_epochs` epochs and
  at the last step; it must evaluate on held-out data only (what it returns is released).
  """
  train_x = np.asarray(train_x, np.float32)
  train_arm = np.asarray(train_arm, np.int32)
  expected_shape = (generator.features, generator.visits)
  if train_x.ndim != 3 or train_x.shape[1:] != expected_shape:
    raise ValueError(f"train_x has shape {train_x.shape}; the generator makes (N, "
                     f"{expected_shape[0]}, {expected_shape[1]}) grids: pass a Generator with "
                     "features= and visits= of the data.")
  num_train = train_x.shape[0]
  sampler = make_sampler(num_train, config)
  cadence = lambda epochs_: max(1, round(epochs_ * sampler.steps_per_epoch))
  loop = engine.LoopConfig(
      num_steps=sampler.steps_for_epochs(epochs), delta=delta, accountant=accountant,
      workdir=workdir, checkpoint_every=cadence(checkpoint_every_epochs),
      eval_every=cadence(eval_every_epochs) if eval_every_epochs else 0,
      log_every=sampler.steps_per_epoch)
  steps_per_epoch = num_train / sampler.expected_batch_size
  steps = _CountingSteps(step_factory(generator, discriminator, config,
                                      sampler.expected_batch_size))

  def eval_fn(params):
    step = steps.done
    epoch = step / steps_per_epoch
    return {"epoch": int(epoch) if epoch.is_integer() else round(epoch, 3),
            **on_eval(step, params)}

  run = engine.train(
      pair_loss_fn(discriminator), init_params(seed, generator, discriminator),
      optimizer_for(config), {"x": train_x, "arm": train_arm}, sampler=sampler,
      dp=config.dp_config(sampler.expected_batch_size), loop=loop, randomness=randomness,
      stream=stream, eval_fn=eval_fn if on_eval is not None else None, run_config=run_config,
      make_step=steps)
  history = read_public_history(workdir) if workdir else run.history
  return GanResult(run=run, history=history, num_steps=loop.num_steps,
                   steps_per_epoch=steps_per_epoch)


# ----- throughput -----------------------------------------------------------------------------

def discriminator_throughput(generator: models.Generator, discriminator: models.Discriminator,
                             config: GanTrainConfig, batch_sizes, num_examples: int = 512,
                             seed: int = 0, repeats: int = 3) -> list[dict]:
  """Examples/s of the private discriminator step (pairs, clipping, noise, Adam) per batch size.

  Batch size 1 is the study's approach (one jitted step per participant). Each batch size runs
  `num_examples` random (not real) examples (at least one step) after a compile-and-warm-up
  step; the best of `repeats` timings is kept, batch sizes interleaved per repeat so a shared
  machine's load hits all alike.
  """
  rng = np.random.default_rng(seed)
  grid = (generator.features, generator.visits)
  optimizer = optimizer_for(config)
  steps, data, states = {}, {}, {}
  for b in batch_sizes:
    cfg = dataclasses.replace(config, batch_size=b)
    steps[b] = make_gan_step(generator, discriminator, cfg, float(b), pair_loss_fn(discriminator),
                             optimizer, cfg.dp_config(float(b)), generator_step=False)
    data[b] = ({"x": jnp.asarray(rng.uniform(size=(b,) + grid), jnp.float32),
                "arm": jnp.asarray(rng.integers(0, 2, b), jnp.int32)}, jnp.ones(b, bool))
    states[b] = train.init_state(init_params(seed, generator, discriminator), optimizer,
                                 randomness_lib.SECURE.key("benchmark", b))
  for b in batch_sizes:  # compile
    states[b], m = steps[b](states[b], *data[b])
    jax.block_until_ready(m)
  best = {b: math.inf for b in batch_sizes}
  for _ in range(repeats):
    for b in batch_sizes:
      count = max(1, num_examples // b)
      start = time.perf_counter()
      for _ in range(count):
        states[b], m = steps[b](states[b], *data[b])
      jax.block_until_ready((states[b].params, m))
      best[b] = min(best[b], (time.perf_counter() - start) / (count * b))
  return [{"batch_size": b, "examples_per_sec": 1.0 / best[b],
           "speedup_vs_batch_1": (best[batch_sizes[0]] / best[b]) if batch_sizes[0] == 1 else None}
          for b in batch_sizes]
