"""An exponential moving average of the parameters: post-processing of the DP iterates, free in
privacy.

Each DP-SGD step releases (to the optimizer) a privatised gradient; the parameters are a function
of those, and so is any average of them, so evaluating or releasing the average spends nothing
beyond the ledger of the run. De et al. (2022) found an EMA of the iterates worth a point or more
of accuracy at no cost; their decay warms up as min(decay, (1 + t) / (10 + t)) at update t
(counted from 0), so that early iterates, far from the optimum, are forgotten quickly.

The average is an optax transformation chained after the optimizer (`with_ema`): it passes the
updates through unchanged and keeps the average in its state, so it lives in the train state's
`opt_state`, is checkpointed with it, and a resumed run continues the same average.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

PyTree = Any


class EmaState(NamedTuple):
  count: jax.Array  # updates averaged so far
  params: PyTree  # the average (float32 leaves stay float32)


def decay_at(decay: float, count) -> jax.Array:
  """De et al.'s warmed-up decay at update `count` (from 0): min(decay, (1 + t) / (10 + t))."""
  count = jnp.asarray(count, jnp.float32)
  return jnp.minimum(decay, (1.0 + count) / (10.0 + count))


def track_params(decay: float) -> optax.GradientTransformation:
  """Keeps EMA_t = d_t EMA_{t-1} + (1 - d_t) params_t (EMA_0 = the initial parameters) in its
  state; the updates pass through unchanged. Chain it after the optimizer."""
  if not 0.0 < decay < 1.0:
    raise ValueError(f"ema decay={decay!r} must be in (0, 1), e.g. 0.999 (0: no EMA).")

  def init(params):
    return EmaState(count=jnp.zeros((), jnp.int32), params=jax.tree.map(jnp.copy, params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("track_params needs the parameters: call update(updates, state, params).")
    new_params = optax.apply_updates(params, updates)
    d = decay_at(decay, state.count)
    average = jax.tree.map(lambda e, p: (d * e + (1.0 - d) * p).astype(e.dtype),
                           state.params, new_params)
    return updates, EmaState(count=state.count + 1, params=average)

  return optax.GradientTransformation(init, update)


def with_ema(optimizer: optax.GradientTransformation, decay: float) -> optax.GradientTransformation:
  """`optimizer`, followed by an EMA of the parameters when `decay > 0` (0: unchanged)."""
  if decay == 0:
    return optimizer
  return optax.chain(optimizer, track_params(decay))


def find_state(opt_state: PyTree) -> EmaState | None:
  """The `EmaState` inside an optimizer state, or None when the optimizer keeps no EMA."""
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, EmaState))
           if isinstance(s, EmaState)]
  if len(found) > 1:
    raise ValueError("the optimizer state holds more than one parameter EMA.")
  return found[0] if found else None


def released_params(params: PyTree, opt_state: PyTree) -> PyTree:
  """The parameters to evaluate and release: the EMA when the optimizer keeps one, else
  `params` (the last DP iterate)."""
  state = find_state(opt_state)
  return params if state is None else state.params
