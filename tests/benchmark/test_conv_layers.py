"""Per-layer conv timing: the layers it finds and what it reports."""

import pytest

from experiments.benchmark import conv_layers


def test_finds_the_distinct_conv_layers_of_the_cnn():
  layers = conv_layers.conv_layers("cnn", batch_size=2)
  assert [(l["shape"], l["features"], l["count"]) for l in layers] == [
      ((2, 32, 32, 3), 32, 1), ((2, 16, 16, 32), 64, 1), ((2, 8, 8, 64), 64, 1),
      ((2, 4, 4, 64), 128, 1)]
  assert layers[0]["pads"] == ((1, 1), (1, 1)) and layers[0]["out_spatial"] == (32, 32)


def test_resnet_layers_are_counted_once_per_shape():
  layers = conv_layers.conv_layers("resnet18", batch_size=1)
  assert sum(l["count"] for l in layers) == 20  # stem, 16 block convs, 3 projections
  assert len({l["key"] for l in layers}) == len(layers)


def test_time_layer_reports_each_part_in_each_form():
  spec = conv_layers.conv_layers("cnn", batch_size=1)[-1]
  timed = conv_layers.time_layer(spec, repeats=1)
  for form in ("native", "patches"):
    assert set(timed["ms"][form]) == {"forward", "input_grad", "weight_grad"}
  assert timed["best_total_ms"] <= min(timed["auto_total_ms"], timed["native_total_ms"]) + 1e-9


@pytest.mark.slow
def test_run_and_markdown_on_the_cnn():
  result = conv_layers.run("cnn", batch_size=2, repeats=1, steps=1, rounds=1)
  assert set(result["steps"]) >= {"native", "auto"}
  text = conv_layers.format_markdown(result)
  assert "JAX convs auto" in text and "(2, 32, 32, 3) -> 32" in text
  with pytest.raises(ValueError, match="--workload='linear'"):
    conv_layers.run("linear", 2)
