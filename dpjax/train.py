"""The DP-SGD step and the training loop.

`dp_gradient` is the whole privacy mechanism of one step: clipped per-example sum, noise added
once, division by the expected batch size. `make_dp_step` wraps it with any optax optimizer in a
single `jax.jit`. `train` is the host loop: sampling, the privacy ledger, checkpoints, metrics
and progress lines.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from dpjax import accounting
from dpjax import checkpoint
from dpjax import clipping
from dpjax import noise
from dpjax import sampling

PyTree = Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: PyTree
  opt_state: PyTree
  noise_key: jax.Array  # base key; the noise of step t uses fold_in(noise_key, t)


def init_state(params: PyTree, optimizer: optax.GradientTransformation, noise_key: jax.Array) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params), noise_key=noise_key)


@dataclasses.dataclass(frozen=True)
class DPConfig:
  """The privacy mechanism of a step. `noise_multiplier=0` and `clip_norm=inf` is non-private."""
  clipping: clipping.ClippingConfig
  noise_multiplier: float
  expected_batch_size: float

  def __post_init__(self):
    if self.noise_multiplier < 0:
      raise ValueError(f"noise_multiplier={self.noise_multiplier} must be >= 0.")
    if not self.expected_batch_size > 0:
      raise ValueError(f"expected_batch_size={self.expected_batch_size} must be > 0.")
    if self.noise_multiplier > 0 and not math.isfinite(self.clipping.sensitivity):
      raise ValueError("noise needs a finite clip norm: with clip_norm=inf the sum is unbounded.")

  @property
  def mechanism(self) -> str:
    return noise.mechanism_for_norm(self.clipping.norm)


def dp_gradient(loss_fn, params, batch, mask, key, config: DPConfig, *args):
  """The privatised mean gradient of one step, and its `ClipMetrics`."""
  summed, metrics = clipping.clipped_grad_sum(loss_fn, params, batch, mask, config.clipping, *args)
  grad = noise.privatize_sum(
      key, summed, noise_multiplier=config.noise_multiplier,
      sensitivity=config.clipping.sensitivity if config.noise_multiplier else 0.0,
      expected_batch_size=config.expected_batch_size, mechanism=config.mechanism)
  return grad, metrics


def metrics_dict(m: clipping.ClipMetrics) -> dict:
  n = jnp.maximum(m.num_examples, 1.0)
  return {"loss": m.loss_sum / n, "clipped_fraction": m.num_clipped / n,
          "mean_grad_norm": m.norm_sum / n, "num_nonfinite": m.num_nonfinite,
          "batch_size": m.num_examples}


def _apply(optimizer, state: TrainState, grad) -> TrainState:
  updates, opt_state = optimizer.update(grad, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state)


def make_dp_step(loss_fn, optimizer: optax.GradientTransformation, config: DPConfig, jit: bool = True):
  """`step(state, batch, mask) -> (state, metrics)`, one DP-SGD step in one `jax.jit`."""
  def step(state: TrainState, batch, mask):
    key = jax.random.fold_in(state.noise_key, state.step)
    grad, m = dp_gradient(loss_fn, state.params, batch, mask, key, config)
    return _apply(optimizer, state, grad), metrics_dict(m)
  return jax.jit(step, donate_argnames="state") if jit else step


def make_nonprivate_step(loss_fn, optimizer: optax.GradientTransformation, jit: bool = True):
  """The same interface without clipping or noise: the gradient of the masked mean loss."""
  def mean_loss(params, batch, mask):
    losses = jax.vmap(loss_fn, in_axes=(None, 0))(params, batch)
    n = jnp.maximum(jnp.sum(mask), 1)
    return jnp.sum(jnp.where(mask, losses, 0.0)) / n

  def step(state: TrainState, batch, mask):
    loss, grad = jax.value_and_grad(mean_loss)(state.params, batch, mask)
    metrics = {"loss": loss, "batch_size": jnp.sum(mask).astype(jnp.float32)}
    return _apply(optimizer, state, grad), metrics
  return jax.jit(step, donate_argnames="state") if jit else step


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
  # Shard each batch over all local devices (`dpjax.parallel`); on CPU see `dpjax.devices`.
  # The sampler's padded batch size must be a multiple of the device count.
  data_parallel: bool = False


@dataclasses.dataclass
class TrainResult:
  state: TrainState
  ledger: accounting.PrivacyLedger
  history: list[dict]
  stopped_by_budget: bool = False

  def epsilon(self, delta: float, accountant: str = "rdp") -> float:
    return self.ledger.epsilon(delta, accountant)


def _gatherer(data, on_device: bool):
  if on_device:
    device_data = jax.device_put(data)
    take = jax.jit(lambda d, idx: jax.tree.map(lambda a: jnp.take(a, idx, axis=0), d))
    return lambda idx: take(device_data, idx)
  return lambda idx: jax.tree.map(lambda a: a[idx], data)


def _nbytes(tree) -> int:
  return sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree))


def check_finite_data(data) -> None:
  for path, leaf in jax.tree_util.tree_flatten_with_path(data)[0]:
    arr = np.asarray(leaf)
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
      bad = int(np.sum(~np.isfinite(arr)))
      raise ValueError(f"training data {jax.tree_util.keystr(path)} has {bad} NaN/Inf values; "
                       "clean or impute them before training.")


def train(loss_fn, params: PyTree, optimizer: optax.GradientTransformation, data: PyTree, *,
          sampler: sampling.BatchSampler, dp: DPConfig | None, loop: LoopConfig,
          noise_key: jax.Array, eval_fn: Callable[[PyTree], dict] | None = None,
          run_config: dict | None = None) -> TrainResult:
  """Trains `params` on `data` (a pytree of host arrays with a leading example axis).

  With `loop.workdir`, resumes from its checkpoint (parameters, optimizer and PRNG state, step,
  privacy ledger), writes `metrics.jsonl`, and checkpoints atomically every
  `loop.checkpoint_every` steps and at the end. `dp=None` trains without privacy (epsilon inf).
  """
  check_finite_data(data)
  sizes = {np.asarray(x).shape[0] for x in jax.tree.leaves(data)}
  if sizes != {sampler.dataset_size}:
    raise ValueError(f"data leaves have leading sizes {sorted(sizes)}; the sampler expects "
                     f"{sampler.dataset_size} examples.")
  if dp is not None and abs(dp.expected_batch_size - sampler.expected_batch_size) > 1e-9:
    raise ValueError("DPConfig.expected_batch_size must equal the sampler's expected batch size "
                     f"({dp.expected_batch_size} != {sampler.expected_batch_size}).")
  accounting.check_delta(loop.delta)
  if loop.delta >= 1.0 / sampler.dataset_size:
    logging.warning("delta=%g >= 1/N=%g: such a delta allows releasing some examples outright; "
                    "use delta well below 1/N.", loop.delta, 1.0 / sampler.dataset_size)

  # dpjax.parallel builds on this module, so it is imported here, not at the top.
  from dpjax import parallel  # pylint: disable=g-import-not-at-top
  mesh = _data_parallel_mesh(sampler) if loop.data_parallel else None
  if mesh is not None:
    step_fn = (parallel.make_parallel_nonprivate_step(loss_fn, optimizer, mesh) if dp is None
               else parallel.make_parallel_dp_step(loss_fn, optimizer, dp, mesh))
  elif dp is None:
    step_fn = make_nonprivate_step(loss_fn, optimizer)
  else:
    step_fn = make_dp_step(loss_fn, optimizer, dp)
  phase = (sampler.privacy_phase(0.0) if dp is None
           else sampler.privacy_phase(dp.noise_multiplier, dp.mechanism))

  # The step donates its state: copy, so that the caller's `params` stay usable.
  state = init_state(jax.tree.map(jnp.copy, params), optimizer, noise_key)
  ledger = accounting.PrivacyLedger()
  if loop.workdir:
    os.makedirs(loop.workdir, exist_ok=True)
    restored = checkpoint.restore(loop.workdir, state)
    if restored is not None:
      state, meta = restored
      ledger = accounting.PrivacyLedger.from_dict(meta["ledger"])
      logging.info("resumed from %s at step %d (%d steps in the ledger)",
                   checkpoint.path(loop.workdir), int(state.step), ledger.steps)
  ledger.begin(phase, allow_change=loop.allow_privacy_change)

  on_device = loop.data_on_device
  if on_device is None:
    on_device = _nbytes(data) < 2 * 1024 ** 3
  if mesh is None:
    gather = _gatherer(data, on_device)
    place = lambda indices, mask: (gather(indices), jnp.asarray(mask))
  else:
    state = parallel.replicate(state, mesh)
    gather = _gatherer(data, on_device=False)
    place = lambda indices, mask: parallel.shard_batch(gather(indices), mask, mesh)

  budget_steps = None
  if loop.max_epsilon is not None and dp is not None:
    budget_steps = steps_within_budget(ledger, loop.max_epsilon, loop.delta, loop.accountant,
                                       loop.num_steps)
  history: list[dict] = []
  metrics_file = open(os.path.join(loop.workdir, "metrics.jsonl"), "a") if loop.workdir else None

  def save():
    if loop.workdir:
      checkpoint.save(loop.workdir, state, {"ledger": ledger.to_dict(), "config": run_config or {}})

  def record(entry):
    history.append(entry)
    if metrics_file:
      metrics_file.write(json.dumps(entry) + "\n")
      metrics_file.flush()

  def epsilon_now():
    return ledger.epsilon(loop.delta, loop.accountant) if dp is not None else math.inf

  stopped_by_budget = False
  start_step = int(state.step)
  window_start, window_examples = time.perf_counter(), 0
  try:
    for t in range(start_step, loop.num_steps):
      if budget_steps is not None and t - start_step >= budget_steps:
        stopped_by_budget = True
        # Steps are numbered from 1 in the logs: t steps are done, step t + 1 is refused.
        logging.warning("stopping before step %d: it would take epsilon past --max_epsilon=%g "
                        "(spent %.4f at delta=%g).", t + 1, loop.max_epsilon, epsilon_now(),
                        loop.delta)
        break
      batch = sampler.batch(t)
      state, metrics = step_fn(state, *place(batch.indices, batch.mask))
      ledger.record(1)
      window_examples += batch.size
      done = t + 1
      is_last = done == loop.num_steps
      is_eval = eval_fn is not None and (is_last or (loop.eval_every and done % loop.eval_every == 0))
      if is_last or is_eval or (loop.log_every and done % loop.log_every == 0):
        metrics = {k: float(v) for k, v in metrics.items()}
        if not math.isfinite(metrics["loss"]):
          raise FloatingPointError(f"step {done}: the loss is {metrics['loss']}; stopping instead "
                                   "of training on (lower the learning rate).")
        elapsed = time.perf_counter() - window_start
        entry = {"step": done, **metrics, "epsilon": epsilon_now(),
                 "examples_per_sec": window_examples / max(elapsed, 1e-9)}
        if is_eval:
          entry.update(eval_fn(state.params))
        record(entry)
        logging.info("step %d/%d %s", done, loop.num_steps,
                     " ".join(f"{k}={v:.4g}" for k, v in entry.items() if k != "step"))
        window_start, window_examples = time.perf_counter(), 0  # evaluation time is not training time
      if loop.workdir and (done % loop.checkpoint_every == 0):
        save()
  finally:
    if metrics_file:
      metrics_file.close()
  save()
  return TrainResult(state=state, ledger=ledger, history=history, stopped_by_budget=stopped_by_budget)


def _data_parallel_mesh(sampler: sampling.BatchSampler):
  """The mesh over all local devices, or None (with a log line) when there is only one."""
  from dpjax import parallel  # pylint: disable=g-import-not-at-top  (builds on this module)
  devices = jax.local_devices()
  if len(devices) == 1:
    logging.info("data_parallel: only one device; training on it (on CPU, split the host with "
                 "--cpu_devices, see dpjax.devices).")
    return None
  if sampler.padded_size % len(devices):
    raise ValueError(f"data_parallel: the padded batch size {sampler.padded_size} is not a "
                     f"multiple of the {len(devices)} devices; build the sampler with "
                     f"multiple_of={len(devices)}.")
  return parallel.data_mesh(devices)


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
