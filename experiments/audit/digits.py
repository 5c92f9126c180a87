"""The digits task of the audits (and of train_small): features, two small models, their loss.

scikit-learn's embedded 8x8 digits (1,797 examples, 64 features, 10 classes), a softmax-linear
model and a one-hidden-layer ReLU MLP, both as plain dicts of arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from sklearn import datasets

NUM_EXAMPLES = 1797


def digits_features() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's embedded 8x8 digits as (1797, 64) features in [0, 1] and int labels."""
  digits = datasets.load_digits()
  return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int32)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, labels[..., None], -1)[..., 0]


def init_mlp(key: jax.Array, num_features: int, hidden: int, num_classes: int) -> dict:
  """A one-hidden-layer ReLU network as a plain dict: the small model of audits and CLI checks."""
  k1, k2 = jax.random.split(key)
  return {"w1": jax.random.normal(k1, (num_features, hidden)) / np.sqrt(num_features),
          "b1": jnp.zeros(hidden),
          "w2": jax.random.normal(k2, (hidden, num_classes)) / np.sqrt(hidden),
          "b2": jnp.zeros(num_classes)}


def mlp_logits(params: dict, x: jax.Array) -> jax.Array:
  return jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def softmax_linear_loss(params: dict, example) -> jax.Array:
  x, y = example
  return cross_entropy(x @ params["w"] + params["b"], y)
