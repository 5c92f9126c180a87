"""Shadow models trained at once: membership respected, secret randomness, never shared noise."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dpjax import auditing
from dpjax import clipping
from dpjax import randomness
from dpjax import train
from experiments.audit import digits
from experiments.audit import shadow_models


def tiny_classification(n=120, d=50, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = (rng.random(n) < 0.5).astype(np.int32)  # random labels: only memorisation helps
  return x, y


def tiny_loss(params, example):
  x, y = example
  return digits.cross_entropy(x @ params["w"] + params["b"], y)


@pytest.mark.slow
def test_shadow_models_memorise_without_privacy_and_not_with_heavy_noise():
  x, y = tiny_classification()
  membership = auditing.random_halves(0, 8, len(x))
  params = {"w": jnp.zeros((50, 2)), "b": jnp.zeros(2)}
  results = {}
  for name, dp in (("nonprivate", None),
                   ("dp", train.DPConfig(clipping.ClippingConfig(1.0), 50.0, 0.5 * 60))):
    stacked = shadow_models.train_models(tiny_loss, params, (x, y), membership,
                                         optimizer=optax.sgd(0.5), num_steps=200,
                                         sampling_rate=0.5, dp=dp)
    assert jax.tree.leaves(stacked)[0].shape[0] == 8
    logits = jnp.einsum("nd,mdk->mnk", x, stacked["w"]) + stacked["b"][:, None]
    labels = jnp.broadcast_to(y, membership.shape)
    stats = np.asarray(auditing.logit_confidence(logits, labels))
    losses = np.asarray(digits.cross_entropy(logits, labels))
    results[name] = auditing.membership_inference(stats, losses, membership)
  assert results["nonprivate"]["loss"]["auc"] > 0.65
  assert results["nonprivate"]["lira_online"]["auc"] > 0.7
  assert abs(results["dp"]["lira_online"]["auc"] - 0.5) < 0.1


def tiny_shadow_models(source, noise_multiplier=0.0, membership=None):
  x, y = tiny_classification(n=40, d=5)
  if membership is None:
    membership = np.zeros((2, 40), bool)
    membership[0, :20] = True  # model 1 sees nothing: without noise it must not move
  params = {"w": jnp.zeros((5, 2)), "b": jnp.zeros(2)}
  dp = train.DPConfig(clipping.ClippingConfig(1.0), noise_multiplier, 10.0)
  return shadow_models.train_models(tiny_loss, params, (x, y), membership,
                                    optimizer=optax.sgd(0.1), num_steps=5, sampling_rate=0.5,
                                    dp=dp, randomness=source)


def test_train_models_respects_membership():
  stacked = tiny_shadow_models(randomness.SECURE)
  assert np.abs(stacked["w"][0]).sum() > 0
  assert np.abs(stacked["w"][1]).sum() == 0


def test_train_models_batches_are_secret_by_default_and_reproducible_with_the_opt_in():
  """Same public inputs: different models from the OS CSPRNG, identical ones from a secret seed."""
  a, b = tiny_shadow_models(randomness.SECURE), tiny_shadow_models(randomness.SECURE)
  assert not np.array_equal(a["w"][0], b["w"][0])
  secret = randomness.PrivateRandomness(secret_seed=3)
  np.testing.assert_array_equal(tiny_shadow_models(secret)["w"], tiny_shadow_models(secret)["w"])


def test_shadow_models_never_share_noise():
  """Two models on the same examples, with a secret seed: each its own noise stream."""
  membership = np.ones((2, 40), bool)
  stacked = tiny_shadow_models(randomness.PrivateRandomness(secret_seed=3), noise_multiplier=1.0,
                               membership=membership)
  assert not np.allclose(stacked["w"][0], stacked["w"][1])


def test_train_models_takes_no_public_noise_key():
  with pytest.raises(TypeError, match="key"):
    shadow_models.train_models(tiny_loss, {}, (), np.ones((3, 1), bool),
                               optimizer=optax.sgd(0.1), num_steps=1, sampling_rate=0.5, dp=None,
                               key=jax.random.PRNGKey(0))
