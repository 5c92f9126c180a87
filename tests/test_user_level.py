"""Per-person DP: person sampling, one clipped term per person, accounting over persons."""

import json
import math

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dpjax import accounting
from dpjax import clipping
from dpjax import engine
from dpjax import randomness
from dpjax import report
from dpjax import train as step_lib
from dpjax import user_level
from dpjax.data import images


def loss_fn(params, example):
  return (jnp.dot(params["w"], example["x"]) + params["b"] - example["y"]) ** 2


def _data(num_records=30, dim=3, seed=0):
  rng = np.random.default_rng(seed)
  return {"x": rng.normal(size=(num_records, dim)).astype(np.float32) * 3,
          "y": rng.normal(size=num_records).astype(np.float32)}


def _params(dim=3):
  return {"w": jnp.full((dim,), 0.5, jnp.float32), "b": jnp.zeros((), jnp.float32)}


def _gather(data, batch):
  inputs = jax.tree.map(lambda a: jnp.asarray(a[batch.indices]), data)
  return user_level.person_inputs(inputs, jnp.asarray(batch.record_mask))


def test_person_clipping_equals_a_loop_over_persons():
  data = _data()
  # 12 persons with 1-4 records each (more than k for some, padded slots for others), shuffled.
  ids = np.repeat(np.arange(12), [1, 2, 3, 4] * 3)[np.random.default_rng(1).permutation(30)]
  sampler = user_level.PersonSampler(ids, batch_size=6, records_per_person=3, secret_seed=7)
  config = clipping.ClippingConfig(clip_norm=1.0)
  clipped_sum = jax.jit(lambda inputs, mask: clipping.clipped_grad_sum(
      user_level.person_loss(loss_fn), _params(), inputs, mask, config))
  grad = jax.jit(jax.grad(loss_fn))
  for step in range(3):
    batch = sampler.batch(step)
    summed, metrics = clipped_sum(_gather(data, batch), jnp.asarray(batch.mask))
    expected = jax.tree.map(np.zeros_like, _params())
    for row in np.flatnonzero(batch.mask):
      records = batch.indices[row][batch.record_mask[row]]
      assert len(set(ids[records])) == 1 and len(records) == min(3, np.sum(ids == ids[records[0]]))
      grads = [grad(_params(), jax.tree.map(lambda a: a[r], data)) for r in records]
      mean = jax.tree.map(lambda *g: sum(g) / len(g), *grads)
      norm = math.sqrt(sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(mean)))
      factor = min(1.0, 1.0 / norm)
      expected = jax.tree.map(lambda e, g: e + factor * np.asarray(g), expected, mean)
    for got, want in zip(jax.tree.leaves(summed), jax.tree.leaves(expected)):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert float(metrics.num_examples) == batch.size


def test_removing_a_person_moves_the_noisy_sum_by_at_most_c():
  """Two records of one person count once: removing the person moves the sum by <= C, where
  record-level clipping of the same two records would move it by 2C."""
  data = _data(num_records=6)
  data["x"][0] = data["x"][1] = 100.0  # one person, two identical records with huge gradients
  ids = np.array([5, 5, 1, 2, 3, 4])
  clip = clipping.ClippingConfig(clip_norm=1.0)
  dp = step_lib.DPConfig(clip, noise_multiplier=1.0, expected_batch_size=2.0)
  sampler = user_level.PersonSampler(ids, batch_size=5, records_per_person=2,
                                     sampling="full")
  batch = sampler.batch(0)
  inputs, mask = _gather(data, batch), jnp.asarray(batch.mask)
  person_row = int(np.flatnonzero([set(ids[r[m]]) == {5} for r, m in
                                   zip(batch.indices, batch.record_mask)])[0])
  without = mask.at[person_row].set(False)
  key = jax.random.PRNGKey(3)
  noisy = jax.jit(lambda mask: step_lib.dp_gradient(user_level.person_loss(loss_fn), _params(),
                                                    inputs, mask, key, dp)[0])
  with_person, without_person = noisy(mask), noisy(without)
  moved = math.sqrt(sum(float(jnp.sum((a - b) ** 2)) * dp.expected_batch_size ** 2
                        for a, b in zip(jax.tree.leaves(with_person),
                                        jax.tree.leaves(without_person))))
  assert moved <= 1.0 + 1e-4
  assert moved > 0.99  # the huge gradient was clipped to C, once
  # The same two records as two examples: record-level clipping moves the sum by 2C.
  records = jax.tree.map(lambda a: jnp.asarray(a[:2]), data)
  pair, _ = jax.jit(lambda r: clipping.clipped_grad_sum(loss_fn, _params(), r, jnp.ones(2, bool),
                                                        clip))(records)
  assert math.sqrt(sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(pair))) > 1.99


def test_sampler_draws_each_person_once_and_at_most_k_distinct_records():
  ids = np.array([0] * 7 + [1] * 2 + list(range(2, 40)))
  sampler = user_level.PersonSampler(ids, batch_size=10, records_per_person=3)  # OS CSPRNG
  assert sampler.dataset_size == 40 and sampler.num_records == ids.size
  for step in range(20):
    batch = sampler.batch(step)
    assert batch.indices.shape == (sampler.padded_size, 3)
    persons = []
    for row in np.flatnonzero(batch.mask):
      records = batch.indices[row][batch.record_mask[row]]
      assert 1 <= records.size <= 3 and len(set(records)) == records.size
      assert len(set(ids[records])) == 1
      persons.append(ids[records[0]])
    assert len(persons) == len(set(persons)) == batch.size
    assert not batch.record_mask[~batch.mask].any()


def test_k_records_are_taken_uniformly():
  ids = np.array([0] * 5 + [1])
  sampler = user_level.PersonSampler(ids, batch_size=2, records_per_person=2, secret_seed=11,
                                     sampling="full")
  counts = np.zeros(5)
  for step in range(3000):
    batch = sampler.batch(step)
    for row in range(batch.size):
      records = batch.indices[row][batch.record_mask[row]]
      counts[records[records < 5]] += 1
  np.testing.assert_allclose(counts / 3000, 2 / 5, atol=0.03)


def test_epsilon_equals_dp_accounting_for_n_persons():
  ids = np.repeat(np.arange(500), 4)  # 2000 records, 500 persons
  sampler = user_level.PersonSampler(ids, batch_size=25, records_per_person=2)
  phase = sampler.privacy_phase(1.1).with_steps(300)
  assert phase.unit == "person" and phase.dataset_size == 500
  ours = accounting.compute_epsilon([phase], 1e-5)
  acct = dp_accounting.rdp.RdpAccountant()
  acct.compose(dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(25 / 500, dp_accounting.GaussianDpEvent(1.1)), 300))
  assert ours == pytest.approx(acct.get_epsilon(1e-5), rel=1e-9)
  per_record = accounting.compute_epsilon([accounting.PrivacyPhase(1.1, 2000, 25, steps=300)], 1e-5)
  assert ours > per_record  # q = 25/500 over persons, not 25/2000 over records


def test_units_never_mix_in_a_ledger():
  ledger = accounting.PrivacyLedger()
  ledger.begin(accounting.PrivacyPhase(1.0, 100, 10))
  with pytest.raises(ValueError, match="unit"):
    ledger.begin(accounting.PrivacyPhase(1.0, 100, 10, unit="person"))
  ledger.record(1)
  ledger.begin(accounting.PrivacyPhase(1.0, 100, 10, unit="person"), allow_change=True)
  ledger.record(1)
  with pytest.raises(ValueError, match="units of privacy"):
    ledger.epsilon(1e-5)


def test_engine_trains_per_person_and_the_report_says_per_person(tmp_path):
  data = _data(num_records=40)
  ids = np.repeat(np.arange(20), 2)
  sampler = user_level.PersonSampler(ids, batch_size=5, records_per_person=2)
  dp = step_lib.DPConfig(clipping.ClippingConfig(clip_norm=1.0), 1.0, sampler.expected_batch_size)
  loop = engine.LoopConfig(num_steps=3, workdir=str(tmp_path), delta=1e-3, log_every=1)
  result = engine.train(user_level.person_loss(loss_fn), _params(), optax.sgd(0.1), data,
                        sampler=sampler, dp=dp, loop=loop, randomness=randomness.SECURE)
  assert result.ledger.current.unit == "person" and result.ledger.steps == 3
  release = result.release("params", [], 1e-3)
  report.write_privacy_report(str(tmp_path), [release], result.randomness)
  saved = json.loads((tmp_path / report.REPORT_JSON).read_text())
  assert saved["unit"] == "person" and saved["releases"][0]["unit"] == "person"
  assert "per person" in (tmp_path / report.REPORT_MD).read_text()
  expected = accounting.compute_epsilon([sampler.privacy_phase(1.0).with_steps(3)], 1e-3)
  assert saved["epsilon"] == pytest.approx(expected)


def test_kermany_names():
  assert images.kermany_person_id("train/PNEUMONIA/person123_bacteria_456.jpeg") == 123
  assert images.kermany_person_id("person7_virus_8.jpeg") == 7
  np.testing.assert_array_equal(
      images.ids_from_names(["person1_virus_2.jpeg", "person1_bacteria_3.jpeg"]),
      [1, 1])
  for name in ("IM-0001-0001.jpeg", "NORMAL2-IM-0007-0001.jpeg"):
    with pytest.raises(ValueError, match="name no person"):
      images.ids_from_names(["person1_virus_2.jpeg", name])


def test_bad_settings_are_named():
  with pytest.raises(ValueError, match="records_per_person"):
    user_level.PersonSampler(np.arange(5), batch_size=2, records_per_person=0)
  with pytest.raises(ValueError, match="vmap"):
    user_level.clipping_config(clipping.ClippingConfig(method="ghost"))


def test_loaders_read_person_ids(tmp_path):
  from PIL import Image
  pixels = np.full((8, 8), 128, np.uint8)
  for split, names in {"train": ["person3_bacteria_1.jpeg", "person3_virus_2.jpeg",
                                 "person4_bacteria_3.jpeg"], "test": ["person9_virus_1.jpeg"]}.items():
    folder = tmp_path / "xray" / split / "PNEUMONIA"
    folder.mkdir(parents=True)
    for name in names:
      Image.fromarray(pixels).save(folder / name)
    (tmp_path / "xray" / split / "NORMAL").mkdir()
    Image.fromarray(pixels).save(tmp_path / "xray" / split / "NORMAL" / "person5_normal_1.jpeg")
  dataset = images.load_image_dataset(f"chest_xray:{tmp_path / 'xray'}", person_ids=True)
  assert sorted(dataset.train_ids.tolist()) == [3, 3, 4, 5]
  Image.fromarray(pixels).save(tmp_path / "xray" / "train" / "NORMAL" / "IM-0001-0001.jpeg")
  with pytest.raises(ValueError, match="IM-0001-0001"):
    images.load_image_dataset(f"chest_xray:{tmp_path / 'xray'}", person_ids=True)
  arrays = {"train_images": np.zeros((3, 4, 4), np.uint8), "train_labels": np.array([0, 1, 0]),
            "test_images": np.zeros((2, 4, 4), np.uint8), "test_labels": np.array([0, 1])}
  np.savez(tmp_path / "plain.npz", **arrays)
  with pytest.raises(ValueError, match="names no persons"):
    images.load_image_dataset(f"npz:{tmp_path / 'plain.npz'}", person_ids=True)
  np.savez(tmp_path / "ids.npz", train_ids=np.array([7, 7, 8]), **arrays)
  assert images.load_image_dataset(f"npz:{tmp_path / 'ids.npz'}").train_ids.tolist() == [7, 7, 8]


@pytest.mark.slow
def test_classifier_trains_per_person_from_npz_ids(tmp_path):
  from experiments.classify import classifier
  rng = np.random.default_rng(0)
  np.savez(tmp_path / "persons.npz", train_images=rng.integers(0, 255, (24, 8, 8), np.uint8),
           train_labels=np.arange(24) % 2, train_ids=np.repeat(np.arange(8), 3),
           test_images=rng.integers(0, 255, (6, 8, 8), np.uint8), test_labels=np.arange(6) % 2)
  config = classifier.ClassifierConfig(dataset=f"npz:{tmp_path / 'persons.npz'}", steps=2,
                                       model="linear", eval_every=2,
                                       batch_size=4, records_per_person=2, delta=1e-3,
                                       log_every=1)
  result = classifier.train_classifier(config, str(tmp_path / "run"))
  assert result.ledger.current.unit == "person" and result.ledger.current.dataset_size == 8
  assert result.release("model", [])["unit"] == "person"
  with pytest.raises(ValueError, match="records_per_person"):
    classifier.ClassifierConfig(records_per_person=2, ldp_scale=0.5)
