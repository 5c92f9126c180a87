"""The device-scaling tool times the three steps and the cores they keep busy."""

from experiments.benchmark import device_scaling
from experiments.benchmark import overhead


def test_every_variant_is_timed_with_its_cores():
  results = overhead.measure(device_scaling.build("linear", 8, "ghost"), rounds=1, calls=2)
  assert set(results) == {"nonprivate", "dp", "dp_no_noise"}
  assert results["nonprivate"]["over_nonprivate"] == 1.0
  for r in results.values():
    assert r["median_ms"] >= r["min_ms"] > 0 and r["cores"] >= 0
  assert "| 1 | dp |" in device_scaling.format_table(results, 1)
