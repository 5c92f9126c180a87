"""The private training engine: the one host loop that every study runs on.

It owns the whole privacy boundary of a run:
  * secret randomness (`dpjax.randomness`): batch selection and the noise key come from the OS
    CSPRNG unless the caller passes a `PrivateRandomness` with a secret seed;
  * sampling at a fixed padded shape, the float32 clip-and-noise step (`dpjax.train`), with data
    parallelism as a parameter;
  * the privacy ledger, saved with every checkpoint so a resume counts every step;
  * what may be released: `TrainResult.history` holds only public quantities (step, epsilon,
    throughput from the expected batch size, the caller's evaluation on held-out data), while
    training-batch statistics (loss, gradient norms, clipped fraction, realised batch sizes) go
    to `TrainResult.private_history` and `<workdir>/private/metrics.jsonl`, beside the
    checkpoint (which holds the secret noise key).

`make_private` is the one-call entry: a per-example loss, parameters, an optax optimizer and
arrays in; a calibrated private trainer out.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from dpjax import accounting
from dpjax import augment
from dpjax import checkpoint
from dpjax import clipping
from dpjax import ema as ema_lib
from dpjax import parallel
from dpjax import randomness as randomness_lib
from dpjax import report
from dpjax import sampling
from dpjax import train as step_lib
from dpjax import user_level
from dpjax.data import sources

PyTree = Any


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """Host-side settings of `train`."""
  num_steps: int
  delta: float = 1e-5
  accountant: str = "rdp"
  max_epsilon: float | None = None
  workdir: str | None = None
  checkpoint_every: int = 100
  eval_every: int = 0  # 0: only at the end
  log_every: int = 50
  allow_privacy_change: bool = False
  data_on_device: bool | None = None  # None: when the data fits in 2 GB
  # Shard each batch over all devices (of every process); on CPU see `dpjax.devices`. Always on
  # in a multi-process run (`jax.distributed.initialize`). Batches are padded (masked) up to a
  # multiple of the device count.
  data_parallel: bool = False


@dataclasses.dataclass
class TrainResult:
  state: step_lib.TrainState
  ledger: accounting.PrivacyLedger
  history: list[dict]  # public: step, epsilon, throughput, evaluation on held-out data
  private_history: list[dict] = dataclasses.field(default_factory=list)  # training-batch statistics
  stopped_by_budget: bool = False
  randomness: randomness_lib.PrivateRandomness = randomness_lib.SECURE
  clip_norm: float | None = None

  def epsilon(self, delta: float, accountant: str = "rdp") -> float:
    return self.ledger.epsilon(delta, accountant)

  @property
  def released_params(self) -> PyTree:
    """What to evaluate and release: the EMA of the iterates when the optimizer keeps one
    (`dpjax.ema.with_ema`, post-processing), else the last iterate `state.params`."""
    return ema_lib.released_params(self.state.params, self.state.opt_state)

  def release(self, name: str, files: list[str], delta: float, accountant: str = "rdp") -> dict:
    """The privacy-report entry of an output released from this run."""
    return report.release_from_ledger(name, files, self.ledger, delta, accountant,
                                      clip_norm=self.clip_norm)


def _gatherer(data, on_device: bool):
  if sources.is_source(data):  # on disk: only the selected rows are read
    return data.gather
  if on_device:
    device_data = jax.device_put(data)
    take = jax.jit(lambda d, idx: jax.tree.map(lambda a: jnp.take(a, idx, axis=0), d))
    return lambda idx: take(device_data, idx)
  return lambda idx: jax.tree.map(lambda a: a[idx], data)


def _step_inputs(gather, batch: sampling.Batch, rows: slice):
  """The step's batch for `rows` of the padded batch: the gathered examples, or for a
  per-person batch (`dpjax.user_level`) each person's records with their record mask."""
  inputs = gather(batch.indices[rows])
  if batch.record_mask is None:
    return inputs
  return user_level.person_inputs(inputs, np.asarray(batch.record_mask[rows]))


def _check_same_checkpoint(restored) -> None:
  """Every process must resume from the same step: the workdir has to be on storage that all
  hosts share (process 0 writes it, every process reads it)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top  (multi-host only)
  step = -1 if restored is None else int(restored[0].step)
  steps = np.asarray(multihost_utils.process_allgather(np.asarray([step], np.int64))).reshape(-1)
  if len(set(steps.tolist())) > 1:
    raise ValueError(f"processes found different checkpoints (steps {steps.tolist()}; -1: none): "
                     "the workdir must be on a filesystem shared by every host (process 0 "
                     "writes the checkpoint, all processes restore it).")


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def _nbytes(tree) -> int:
  return sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree))


def check_finite_data(data) -> None:
  for path, leaf in jax.tree_util.tree_flatten_with_path(data)[0]:
    arr = np.asarray(leaf)
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
      bad = int(np.sum(~np.isfinite(arr)))
      raise ValueError(f"training data {jax.tree_util.keystr(path)} has {bad} NaN/Inf values; "
                       "clean or impute them before training.")


def _check_inputs(data, sampler: sampling.BatchSampler, dp, loop: LoopConfig) -> None:
  if sources.is_source(data):
    sizes = {data.num_records}  # its batches are checked for NaN/Inf as they are read
  else:
    check_finite_data(data)
    sizes = {np.shape(x)[0] for x in jax.tree.leaves(data)}
  if sizes != {sampler.num_records}:
    raise ValueError(f"data leaves have leading sizes {sorted(sizes)}; the sampler expects "
                     f"{sampler.num_records} examples.")
  if dp is not None and abs(dp.expected_batch_size - sampler.expected_batch_size) > 1e-9:
    raise ValueError("DPConfig.expected_batch_size must equal the sampler's expected batch size "
                     f"({dp.expected_batch_size} != {sampler.expected_batch_size}).")
  if sampler.secret_seed is not None:
    raise ValueError("the engine sets the sampler's secret seed from `randomness`: build the "
                     "sampler without one and pass randomness=PrivateRandomness(secret_seed=...).")
  accounting.check_delta(loop.delta)
  if loop.delta >= 1.0 / sampler.dataset_size:
    logging.warning("delta=%g >= 1/N=%g: such a delta allows releasing some examples outright; "
                    "use delta well below 1/N.", loop.delta, 1.0 / sampler.dataset_size)


def data_parallel_mesh(sampler: sampling.BatchSampler | None = None):
  """The mesh over every device of every process, or None (with a log line) when there is one.

  Multi-host: each process then feeds its share of the global padded batch (`_place`).
  """
  del sampler  # the engine pads each batch to a multiple of the devices (`step_batch_size`)
  devices = jax.devices()
  if len(devices) == 1:
    logging.info("data_parallel: only one device; training on it (on CPU, split the host with "
                 "cpu_devices, see dpjax.devices).")
    return None
  return parallel.data_mesh(devices)


def step_batch_size(sampler: sampling.BatchSampler, mesh) -> int:
  """The padded batch the step sees: the sampler's, rounded up to a multiple of the devices."""
  devices = 1 if mesh is None else mesh.devices.size
  return -(-sampler.padded_size // devices) * devices


def is_writer() -> bool:
  """Whether this process writes the run's files: process 0 of a multi-host run (one ledger,
  one checkpoint, one log), the only process otherwise."""
  return jax.process_index() == 0


_STEP_CACHE: dict = {}


def compiled_step(loss_fn, optimizer: optax.GradientTransformation, dp: step_lib.DPConfig | None,
                  mesh=None, augmult: augment.Multiplicity | None = None):
  """The jitted step, shared by every `train` call with the same loss, optimizer, DP config,
  mesh and augmentation multiplicity: many models of one study (shadow models of an audit, arms
  of a sweep) compile once."""
  make = lambda: (step_lib.make_nonprivate_step(loss_fn, optimizer, mesh, augmult=augmult)
                  if dp is None else
                  step_lib.make_dp_step(loss_fn, optimizer, dp, mesh, augmult=augmult))
  try:
    key = (loss_fn, optimizer, dp, mesh, augmult)
    hash(key)
  except TypeError:  # e.g. per-layer clip norms held in a dict
    return make()
  if key not in _STEP_CACHE:
    if len(_STEP_CACHE) > 64:
      _STEP_CACHE.clear()
    _STEP_CACHE[key] = make()
  return _STEP_CACHE[key]


class _Records:
  """Public and private metric histories, each also appended to its own JSON-lines file."""

  def __init__(self, workdir: str | None):
    self.public, self.private = [], []
    self._files = {}
    if workdir:
      private = report.private_dir(workdir)
      self._files = {"public": open(os.path.join(workdir, "progress.jsonl"), "a"),
                     "private": open(os.path.join(private, "metrics.jsonl"), "a")}

  def add(self, public: dict, private: dict) -> None:
    self.public.append(public)
    self.private.append(private)
    for kind, entry in (("public", public), ("private", private)):
      if kind in self._files:
        self._files[kind].write(json.dumps(entry) + "\n")
        self._files[kind].flush()

  def close(self) -> None:
    for f in self._files.values():
      f.close()


def train(loss_fn, params: PyTree, optimizer: optax.GradientTransformation, data, *,
          sampler: sampling.BatchSampler, dp: step_lib.DPConfig | None, loop: LoopConfig,
          randomness: randomness_lib.PrivateRandomness = randomness_lib.SECURE,
          stream: str = "model", eval_fn: Callable[[PyTree], dict] | None = None,
          run_config: dict | None = None, make_step: Callable | None = None,
          augmult: augment.Multiplicity | None = None) -> TrainResult:
  """Trains `params` on `data`: a pytree of host arrays with a leading example axis, or a
  source read a batch at a time from disk (`dpjax.data.sources`, for data larger than memory).

  `randomness` is the source of the batch selection and the noise (OS CSPRNG by default);
  `stream` names this model's randomness so that several models of one run (arms of a sweep)
  never share it. `eval_fn(params)` must evaluate on held-out data only: what it returns is
  released. With `loop.workdir`, resumes from `<workdir>/private/checkpoint.msgpack`
  (parameters, optimizer state, secret noise key, step, privacy ledger) and checkpoints
  atomically every `loop.checkpoint_every` steps and at the end. `dp=None` trains without
  privacy (epsilon inf).

  `make_step(loss_fn, optimizer, dp, mesh) -> step` replaces the step (default `compiled_step`:
  DP-SGD, or non-private when `dp` is None) for training that is not one loss of one parameter
  tree, e.g. the GAN study (the per-example loss is a (real, generated) pair and
  the generator's update is post-processing). Its `step(state, batch, mask) -> (state, private
  metrics with a "loss")` must read the batch only through ONE
  `train.dp_gradient(loss_fn, ..., key, dp)` per step, with a key split from
  `train.step_key(state)` (the ledger counts one sampled event of `dp` per step), and advance
  `state.step` by one.

  `augmult` (`dpjax.augment.Multiplicity`): each example's gradient is the mean over K augmented
  copies before clipping (same sensitivity). An optimizer that keeps an EMA of the parameters
  (`dpjax.ema.with_ema`) has `eval_fn` called on the EMA (`TrainResult.released_params`).
  """
  _check_inputs(data, sampler, dp, loop)
  randomness = randomness_lib.shared_across_processes(randomness)
  sampler = dataclasses.replace(sampler, secret_seed=randomness.sampling_seed(stream))
  multi_process = jax.process_count() > 1
  mesh = data_parallel_mesh() if loop.data_parallel or multi_process else None
  if make_step is not None and augmult is not None:
    raise ValueError("augmult applies to the engine's own step: a custom make_step must apply "
                     "augmentation multiplicity itself (dpjax.train.make_dp_step(augmult=...)).")
  step_fn = (make_step(loss_fn, optimizer, dp, mesh) if make_step
             else compiled_step(loss_fn, optimizer, dp, mesh, augmult))
  phase = (sampler.privacy_phase(0.0) if dp is None
           else sampler.privacy_phase(dp.noise_multiplier, dp.mechanism))

  # The step donates its state: copy, so that the caller's `params` stay usable.
  state = step_lib.init_state(jax.tree.map(jnp.copy, params), optimizer,
                              randomness.key(stream, "noise"))
  ledger = accounting.PrivacyLedger()
  private = report.private_dir(loop.workdir) if loop.workdir else None
  if private:
    restored = checkpoint.restore(private, state)
    if multi_process:
      _check_same_checkpoint(restored)
    if restored is not None:
      state, meta = restored
      ledger = accounting.PrivacyLedger.from_dict(meta["ledger"])
      if meta.get("secure_randomness", True) != randomness.secure:
        raise ValueError("the checkpoint was written with a different source of private "
                         "randomness (reproducible_private_randomness differs); resume with "
                         "the original setting or start a new workdir.")
      logging.info("resumed from %s at step %d (%d steps in the ledger)",
                   checkpoint.path(private), int(state.step), ledger.steps)
  ledger.begin(phase, allow_change=loop.allow_privacy_change)

  on_device = loop.data_on_device
  if sources.is_source(data):
    on_device = False
  elif on_device is None:
    on_device = _nbytes(data) < 2 * 1024 ** 3
  if mesh is None:
    gather = _gatherer(data, on_device)
    place = lambda batch: (_step_inputs(gather, batch, slice(None)), jnp.asarray(batch.mask))
  else:
    state = parallel.replicate(state, mesh)
    gather = _gatherer(data, on_device=False)
    padded = step_batch_size(sampler, mesh)
    share = parallel.process_share(padded)

    def place(batch):  # this process gathers and feeds only its own share of the batch
      batch = sampling.pad_batch(batch, padded)
      return parallel.shard_batch(_step_inputs(gather, batch, share), batch.mask[share], mesh,
                                  global_batch_size=padded)

  budget_steps = None
  if loop.max_epsilon is not None and dp is not None:
    budget_steps = steps_within_budget(ledger, loop.max_epsilon, loop.delta, loop.accountant,
                                       loop.num_steps)
  records = _Records(loop.workdir if is_writer() else None)

  def save():
    if private and is_writer():
      checkpoint.save(private, state, {"ledger": ledger.to_dict(), "config": run_config or {},
                                       "secure_randomness": randomness.secure})

  def epsilon_now():
    return ledger.epsilon(loop.delta, loop.accountant) if dp is not None else math.inf

  stopped_by_budget = False
  start_step = int(state.step)
  window_start, window_steps = time.perf_counter(), 0
  # From disk, the next batch is selected, read and decoded on a host thread while the step
  # runs; a batch prepared for a step that never runs (budget, error) is dropped unseen.
  prefetch = concurrent.futures.ThreadPoolExecutor(1) if sources.is_source(data) else None
  prepare = lambda t: place(sampler.batch(t))
  pending = prefetch.submit(prepare, start_step) if prefetch else None
  try:
    for t in range(start_step, loop.num_steps):
      if budget_steps is not None and t - start_step >= budget_steps:
        stopped_by_budget = True
        # Steps are numbered from 1 in the logs: t steps are done, step t + 1 is refused.
        logging.warning("stopping before step %d: it would take epsilon past max_epsilon=%g "
                        "(spent %.4f at delta=%g).", t + 1, loop.max_epsilon, epsilon_now(),
                        loop.delta)
        break
      if prefetch:
        inputs = pending.result()
        if t + 1 < loop.num_steps:
          pending = prefetch.submit(prepare, t + 1)
      else:
        inputs = prepare(t)
      state, metrics = step_fn(state, *inputs)
      ledger.record(1)
      window_steps += 1
      done = t + 1
      is_last = done == loop.num_steps
      is_eval = eval_fn is not None and (is_last or (loop.eval_every and done % loop.eval_every == 0))
      if is_last or is_eval or (loop.log_every and done % loop.log_every == 0):
        metrics = {k: float(v) for k, v in metrics.items()}
        # Decided on the released (DP) parameters, not on the batch loss: whether and when a run
        # stops is visible (a selection ranks a stopped trial as failed), so it may depend only
        # on DP outputs.
        if not _all_finite(state.params):
          raise FloatingPointError(f"step {done}: the parameters are not finite; stopping instead "
                                   "of training on (lower the learning rate).")
        elapsed = time.perf_counter() - window_start
        # Throughput from the expected batch size: the realised sizes are private.
        public = {"step": done, "epsilon": epsilon_now(),
                  "examples_per_sec": window_steps * sampler.expected_batch_size / max(elapsed, 1e-9)}
        if is_eval:
          public.update(eval_fn(ema_lib.released_params(state.params, state.opt_state)))
        records.add(public, {"step": done, **metrics})
        logging.info("step %d/%d %s", done, loop.num_steps,
                     " ".join(f"{k}={v:.4g}" for k, v in public.items() if k != "step"))
        # Logs get pasted into issues and papers: the batch loss only at --v=1.
        logging.vlog(1, "step %d private diagnostics: %s", done, metrics)
        window_start, window_steps = time.perf_counter(), 0  # evaluation time is not training time
      if private and (done % loop.checkpoint_every == 0):
        save()
  finally:
    records.close()
    if prefetch:
      prefetch.shutdown(wait=True, cancel_futures=True)
  save()
  return TrainResult(state=state, ledger=ledger, history=records.public,
                     private_history=records.private, stopped_by_budget=stopped_by_budget,
                     randomness=randomness,
                     clip_norm=None if dp is None else dp.clipping.sensitivity)


def steps_within_budget(ledger: accounting.PrivacyLedger, max_epsilon: float, delta: float,
                        accountant: str, limit: int) -> int:
  """How many more steps of the current phase keep epsilon <= max_epsilon (at most `limit`)."""
  if ledger.epsilon(delta, accountant, extra_steps=limit) <= max_epsilon:
    return limit
  lo, hi = 0, limit  # eps(lo) <= max < eps(hi)
  if ledger.steps and ledger.epsilon(delta, accountant) > max_epsilon:
    return 0
  while hi - lo > 1:
    mid = (lo + hi) // 2
    if ledger.epsilon(delta, accountant, extra_steps=mid) <= max_epsilon:
      lo = mid
    else:
      hi = mid
  return lo


@dataclasses.dataclass(frozen=True)
class PrivateTrainer:
  """A calibrated private training run, ready to `train()`: what `make_private` returns."""
  loss_fn: Callable
  params: PyTree
  optimizer: optax.GradientTransformation
  data: PyTree
  sampler: sampling.BatchSampler
  dp: step_lib.DPConfig
  loop: LoopConfig
  randomness: randomness_lib.PrivateRandomness

  @property
  def noise_multiplier(self) -> float:
    return self.dp.noise_multiplier

  @property
  def num_steps(self) -> int:
    return self.loop.num_steps

  @property
  def epsilon(self) -> float:
    """The epsilon the full run will have spent (at `loop.delta`)."""
    phase = self.sampler.privacy_phase(self.dp.noise_multiplier, self.dp.mechanism)
    return accounting.compute_epsilon([phase.with_steps(self.loop.num_steps)], self.loop.delta,
                                      self.loop.accountant)

  def train(self, eval_fn: Callable[[PyTree], dict] | None = None) -> TrainResult:
    """Runs the training; with a workdir also writes `privacy_report.{json,md}` there."""
    result = train(self.loss_fn, self.params, self.optimizer, self.data, sampler=self.sampler,
                   dp=self.dp, loop=self.loop, randomness=self.randomness, eval_fn=eval_fn)
    if self.loop.workdir:
      release = result.release("trained parameters (returned to the caller)", [],
                               self.loop.delta, self.loop.accountant)
      report.write_privacy_report(self.loop.workdir, [release], self.randomness)
    return result


def make_private(loss_fn, params: PyTree, optimizer: optax.GradientTransformation, data: PyTree, *,
                 clip_norm: float, batch_size: int, delta: float,
                 noise_multiplier: float | None = None, target_epsilon: float | None = None,
                 epochs: float | None = None, steps: int | None = None,
                 accountant: str = "rdp", sampling_method: str = "poisson", norm: str = "l2",
                 per_example: str = "auto", microbatch_size: int | None = None,
                 compute_dtype: str | None = None, data_parallel: bool = False,
                 randomness: randomness_lib.PrivateRandomness = randomness_lib.SECURE,
                 workdir: str | None = None, max_epsilon: float | None = None,
                 **loop_options) -> PrivateTrainer:
  """A private trainer for `loss_fn(params, example) -> scalar` over `data`, in one call.

  Give exactly one of `noise_multiplier` and `target_epsilon` (then the noise is calibrated for
  the run's length at `delta`), and one of `epochs` and `steps`. `batch_size` is the expected
  batch size (Poisson sampling with rate batch_size / N); the noisy gradient is divided by it.
  Speed-only options (`per_example`, `microbatch_size`, `compute_dtype`, `data_parallel`) never
  change the guarantee.

    trainer = dpjax.make_private(loss_fn, params, optax.adam(1e-3), (x, y), clip_norm=1.0,
                                 target_epsilon=3.0, delta=1e-5, batch_size=256, epochs=10)
    result = trainer.train()
  """
  if (noise_multiplier is None) == (target_epsilon is None):
    raise ValueError("give exactly one of noise_multiplier and target_epsilon.")
  if (epochs is None) == (steps is None):
    raise ValueError("give exactly one of epochs and steps.")
  dataset_size = {np.shape(x)[0] for x in jax.tree.leaves(data)}
  if len(dataset_size) != 1:
    raise ValueError(f"data leaves have different leading sizes {sorted(dataset_size)}.")
  dataset_size = dataset_size.pop()
  multiple_of = jax.device_count() if data_parallel else 1
  sampler = sampling.BatchSampler(dataset_size, batch_size, sampling_method, multiple_of=multiple_of)
  num_steps = sampler.steps_for_epochs(epochs) if steps is None else int(steps)
  if num_steps < 1:
    raise ValueError(f"steps={steps} must be >= 1.")
  mechanism = "gaussian" if norm == "l2" else "laplace"
  if noise_multiplier is None:
    phase = sampler.privacy_phase(1.0, mechanism).with_steps(num_steps)
    noise_multiplier = accounting.calibrate_noise_multiplier(target_epsilon, delta, phase, accountant)
  clip = clipping.ClippingConfig(clip_norm=clip_norm, norm=norm, method=per_example,
                                 microbatch_size=microbatch_size, compute_dtype=compute_dtype)
  dp = step_lib.DPConfig(clip, noise_multiplier, sampler.expected_batch_size)
  loop = LoopConfig(num_steps=num_steps, delta=delta, accountant=accountant, workdir=workdir,
                    data_parallel=data_parallel, max_epsilon=max_epsilon, **loop_options)
  return PrivateTrainer(loss_fn=loss_fn, params=params, optimizer=optimizer, data=data,
                        sampler=sampler, dp=dp, loop=loop, randomness=randomness)
