"""The noise-draw timing tool times both generators at every size asked for."""

from experiments.benchmark import noise_draw


def test_both_generators_are_timed():
  results = noise_draw.measure(size=101, rounds=1, calls=2)
  assert set(results) == {"jax_random", "dpjax"}
  for r in results.values():
    assert r["median_ms"] >= r["min_ms"] > 0
