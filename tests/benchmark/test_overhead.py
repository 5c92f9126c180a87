"""The overhead tool times every part of the step, and its full DP variant is dpjax's step."""

from experiments.benchmark import overhead


def test_every_variant_is_timed_and_counted():
  variants = overhead.build("linear", batch_size=8)
  results = overhead.measure(variants, rounds=1, calls=2)
  assert set(results) == {"nonprivate", "dp", "dp_no_noise", "dp_no_metrics", "dp_bare",
                          "clipped_sum", "noise"}
  assert results["nonprivate"]["over_nonprivate"] == 1.0
  for r in results.values():
    assert r["median_ms"] >= r["min_ms"] > 0 and r["fusions"] > 0
  # Leaving noise or metrics out leaves fewer kernels than the whole DP step.
  assert results["dp_bare"]["fusions"] < results["dp"]["fusions"]
  assert "| dp_bare |" in overhead.format_table(results)
