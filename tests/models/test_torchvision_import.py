"""torchvision's ResNet-18 state dict -> Flax: logits against torchvision's own (a stored fixture,
so no torch is needed), a torch.save round trip where torch is installed, the refusals, the
pre-processing, and (slow) the transfer study's probe and fine-tune modes end to end."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax.models import pretrained, registry, resnet, torchvision_import, weights
from tests.models.torchvision_fixture import make_fixture

FIXTURE = json.loads(make_fixture.FIXTURE.read_text())


@pytest.fixture(scope="module")
def torch_npz(tmp_path_factory):
  """The fixture's random state dict, torch key names, saved as .npz (what a user without torch
  writes)."""
  path = tmp_path_factory.mktemp("sd") / "resnet18_torch.npz"
  np.savez(path, **make_fixture.random_state_dict())
  return path


@pytest.fixture(scope="module")
def converted(torch_npz, tmp_path_factory):
  out = tmp_path_factory.mktemp("conv") / "resnet18.npz"
  torchvision_import.convert_file(torch_npz, out)
  return out


def _apply(params, images, num_classes):
  model = pretrained.PretrainedResNet18(num_classes=num_classes)
  return np.asarray(jax.jit(model.apply)({"params": params}, images))


def test_converted_random_weights_give_torchvisions_logits(converted):
  state_dict, inputs = make_fixture.random_state_dict(), make_fixture.fixed_inputs()
  assert make_fixture.checksums(state_dict, inputs) == pytest.approx(FIXTURE["checksums"],
                                                                     rel=1e-12), (
      "NumPy's random stream changed: rerun python -m tests.models.torchvision_fixture."
      "make_fixture where torch and torchvision are installed")
  # Through the file path a user takes: the converted .npz read by init_weights' loader.
  like = registry.param_shapes(registry.build_model("resnet18_finetune", 10), (64, 64, 3))
  params = weights.load_params(converted, like)
  expected = np.asarray(FIXTURE["logits"])
  logits = _apply(params, inputs, 10)
  scale = np.abs(expected).max()
  np.testing.assert_allclose(logits, expected, atol=2e-5 * scale, rtol=0)
  assert scale > 10  # the logits are not trivially small


def test_batchnorm_is_folded_from_the_running_statistics():
  state_dict = make_fixture.random_state_dict()
  flat = torchvision_import.convert_state_dict(state_dict)
  gamma, beta, mean, var = (state_dict[f"layer2.0.downsample.1.{f}"].astype(np.float64)
                            for f in ("weight", "bias", "running_mean", "running_var"))
  x = np.linspace(-3, 3, 128)
  by_hand = (x - mean) / np.sqrt(var + 1e-5) * gamma + beta  # torch's BatchNorm2d in eval mode
  folded = flat["stage2_block1/FrozenBatchNorm_2/scale"] * x + flat[
      "stage2_block1/FrozenBatchNorm_2/bias"]
  np.testing.assert_allclose(folded, by_hand, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(flat["stage1_block2/conv2/kernel"],
                                state_dict["layer1.1.conv2.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(flat["head/kernel"], state_dict["fc.weight"].T)


def test_frozen_batchnorm_keeps_examples_independent():
  model = resnet.ResNet(stage_sizes=(1, 1), num_classes=3, num_filters=4, stem="imagenet",
                        norm="frozen_batchnorm", conv_lowering="native")
  images = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  # Random values for every parameter (and a non-identity affine) without compiling init.
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0.5, 0.3, s.shape), jnp.float32),
                        registry.param_shapes(model, (32, 32, 3)))
  apply = jax.jit(model.apply)
  alone = apply({"params": params}, images[:1])
  others_changed = apply({"params": params}, images.at[1:].multiply(100.0))[:1]
  np.testing.assert_allclose(alone, others_changed, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="BatchNorm mixes the examples"):
    resnet.ResNet18(num_classes=3, norm="batchnorm")
  with pytest.raises(ValueError, match="unknown stem"):
    resnet.ResNet18(num_classes=3, stem="imagnet")


def test_ghost_clipping_of_frozen_batchnorm_equals_vmap():
  """FrozenBatchNorm is registered with ghost clipping (scale and bias gradients per example,
  formed exactly), so a frozen-BN ResNet keeps the ghost path, and it equals vmap."""
  from dpjax import clipping, ghost  # pylint: disable=import-outside-toplevel
  from tests import test_ghost  # pylint: disable=import-outside-toplevel
  model = resnet.ResNet(stage_sizes=(1, 1), num_classes=3, num_filters=4, stem="imagenet",
                        norm="frozen_batchnorm", conv_lowering="native")
  rng = np.random.default_rng(1)
  params = {"params": jax.tree.map(
      lambda s: jnp.asarray(rng.normal(0.3, 0.5, s.shape), jnp.float32),
      registry.param_shapes(model, (16, 16, 3)))}
  x = jnp.asarray(rng.normal(size=(5, 16, 16, 3)), jnp.float32).at[2].set(jnp.nan)
  batch = {"x": x, "y": jnp.asarray([0, 1, 2, 1, 0])}
  mask = jnp.arange(5) < 4  # one padding example; one NaN example contributes zero
  loss_fn = test_ghost.classification_loss(model)
  plan, reason = ghost.make_plan(loss_fn, params, jax.tree.map(lambda v: v[0], batch))
  assert plan is not None, reason
  assert sum(layer.kind == ghost.NORM for layer in plan.layers) == 6  # stem 1, blocks 2 + 3
  config = clipping.ClippingConfig(clip_norm=0.5)
  reference = test_ghost.run(loss_fn, params, batch, mask, config)
  result = test_ghost.run(loss_fn, params, batch, mask, dataclasses.replace(config, method="ghost"))
  test_ghost.assert_same(reference, result, rtol=1e-4, atol=1e-5)


def test_default_resnet_keeps_its_parameter_names():
  """GroupNorm and the CIFAR stem stay the default, so existing checkpoints still load."""
  flat = flax.traverse_util.flatten_dict(
      registry.param_shapes(registry.build_model("resnet18", 10), (32, 32, 3)), sep="/")
  assert flat["stem_conv/kernel"].shape == (3, 3, 3, 64)
  assert "GroupNorm_0/scale" in flat and "stage4_block1/GroupNorm_2/scale" in flat
  assert not any("Frozen" in key for key in flat)


def test_new_head_for_other_classes(converted):
  """Fine-tuning: the body from the file, the head re-initialised (keep_init=('head',))."""
  fresh = registry.param_shapes(registry.build_model("resnet18_finetune", 2), (64, 64, 3))
  fresh["head"] = {"kernel": jnp.full((512, 2), 0.5), "bias": jnp.zeros(2)}  # the new head
  params = weights.load_params(converted, fresh, keep_from_like=("head",))
  np.testing.assert_array_equal(params["head"]["kernel"], fresh["head"]["kernel"])
  with np.load(converted) as arrays:
    np.testing.assert_array_equal(params["stem_conv"]["kernel"], arrays["stem_conv/kernel"])
  with pytest.raises(ValueError, match="head/kernel: file \\(512, 10\\) vs model \\(512, 2\\)"):
    weights.load_params(converted, fresh, keep_from_like=())


def test_refuses_missing_extra_and_misshapen_keys(tmp_path):
  state_dict = make_fixture.random_state_dict()
  missing = {k: v for k, v in state_dict.items() if k != "layer3.1.bn2.running_var"}
  with pytest.raises(ValueError, match="my.pth.*missing keys \\['layer3.1.bn2.running_var'\\]"):
    torchvision_import.convert_state_dict(missing, source="my.pth")
  with pytest.raises(ValueError, match="unexpected keys \\['layer5.0.conv1.weight'\\]"):
    torchvision_import.convert_state_dict({**state_dict, "layer5.0.conv1.weight": np.zeros(1)})
  prefixed = {f"module.{k}": v for k, v in state_dict.items()}
  with pytest.raises(ValueError, match="prefixed keys such as 'module.'"):
    torchvision_import.convert_state_dict(prefixed)
  wrong = {**state_dict, "layer1.0.conv1.weight": np.zeros((64, 64, 1, 1), np.float32)}
  with pytest.raises(ValueError, match="layer1.0.conv1.weight: \\(64, 64, 1, 1\\), expected "
                     "\\(64, 64, 3, 3\\)"):
    torchvision_import.convert_state_dict(wrong)
  with pytest.raises(FileNotFoundError, match="nowhere.pth: no such file"):
    torchvision_import.read_state_dict(tmp_path / "nowhere.pth")
  with pytest.raises(FileNotFoundError, match="nowhere.pth: no such file"):
    torchvision_import.convert_file(tmp_path / "nowhere.pth", tmp_path / "out.npz")
  (tmp_path / "a_dir.pth").mkdir()
  with pytest.raises(FileNotFoundError, match="a_dir.pth: no such file"):
    torchvision_import.read_state_dict(tmp_path / "a_dir.pth")


def test_refuses_a_torch_file_without_torch(tmp_path, monkeypatch):
  path = tmp_path / "resnet18.pth"
  path.write_bytes(b"not read")
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
  with pytest.raises(ImportError, match="resnet18.pth: reading a torch file needs torch.*"
                     "np.savez"):
    torchvision_import.read_state_dict(path)


def test_pretrained_file_refusals(tmp_path, torch_npz, converted):
  with pytest.raises(FileNotFoundError, match="--config.pretrained=.*missing.npz: no such file"):
    pretrained.load_converted(tmp_path / "missing.npz")
  with pytest.raises(ValueError, match="holds torch key names.*torchvision_import"):
    pretrained.load_converted(torch_npz)
  assert "stem_conv/kernel" in pretrained.load_converted(converted)


def test_imagenet_inputs_are_public_preprocessing():
  grey = np.full((2, 28, 28, 1), 0.5, np.float32)
  out = torchvision_import.imagenet_inputs(grey, 64)
  assert out.shape == (2, 64, 64, 3)
  expected = (0.5 - np.asarray(torchvision_import.IMAGENET_MEAN)) / np.asarray(
      torchvision_import.IMAGENET_STD)
  np.testing.assert_allclose(out[0, 10, 10], expected, rtol=1e-5)
  with pytest.raises(ValueError, match="1 or 3 channels"):
    torchvision_import.imagenet_inputs(np.zeros((1, 8, 8, 2)), 32)


def test_probe_features_are_the_bodys_pooled_output(converted):
  flat = pretrained.load_converted(converted)
  inputs = make_fixture.fixed_inputs()
  features = pretrained.resnet18_features(flat, inputs, batch_size=1)
  assert features.shape == (2, 1, 1, 512)
  # The head applied to the features gives the full model's logits.
  logits = features.reshape(2, 512) @ flat["head/kernel"] + flat["head/bias"]
  expected = np.asarray(FIXTURE["logits"])
  np.testing.assert_allclose(logits, expected, atol=2e-5 * np.abs(expected).max(), rtol=0)


def test_round_trip_through_torch_save(tmp_path):
  """A real torch.save'd torchvision.models.resnet18(weights=None), randomised BatchNorm
  statistics, converted and compared to torchvision's logits (where torch is installed)."""
  torch = pytest.importorskip("torch")
  torchvision = make_fixture.import_torchvision()
  if torchvision is None:
    pytest.skip("torchvision is not installed")
  torch.manual_seed(0)
  model = torchvision.models.resnet18(weights=None)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.normal_(0.0, 0.2)
        module.running_var.uniform_(0.5, 2.0)
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.2)
  model.eval()
  path = tmp_path / "resnet18.pth"
  torch.save(model.state_dict(), path)
  params = torchvision_import.convert_file(path, tmp_path / "resnet18.npz")
  assert params["head/kernel"].shape == (512, 1000)
  images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    expected = model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
  like = registry.param_shapes(registry.build_model("resnet18_finetune", 1000), (64, 64, 3))
  logits = _apply(weights.load_params(tmp_path / "resnet18.npz", like), images, 1000)
  np.testing.assert_allclose(logits, expected, atol=2e-5 * np.abs(expected).max(), rtol=0)


def test_transfer_config_refuses_a_pretrained_model_without_its_file():
  from experiments.classify import transfer  # pylint: disable=import-outside-toplevel
  config = transfer.default_config()
  config.model = "resnet18_probe"
  with pytest.raises(ValueError, match="--config.model=resnet18_probe needs "
                     "--config.pretrained=FILE"):
    transfer.from_config_dict(config)
  config.model, config.pretrained = "scatter_linear", "resnet18.npz"
  with pytest.raises(ValueError, match="--config.pretrained=resnet18.npz is used only by"):
    transfer.from_config_dict(config)


@pytest.mark.slow
def test_command_line_converts_a_file(torch_npz, tmp_path):
  out = tmp_path / "cli.npz"
  done = subprocess.run(
      [sys.executable, "-m", "dpjax.models.torchvision_import", f"--state_dict={torch_npz}",
       f"--out={out}"], capture_output=True, text=True, check=False, timeout=300,
      cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  assert done.returncode == 0, done.stderr[-2000:]
  assert "62 arrays, 10 classes" in done.stdout
  with np.load(out) as arrays:
    assert arrays["head/kernel"].shape == (512, 10)
  missing = subprocess.run(
      [sys.executable, "-m", "dpjax.models.torchvision_import", "--state_dict=/nonexistent.pth",
       f"--out={out}"], capture_output=True, text=True, check=False, timeout=300,
      cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  assert missing.returncode != 0 and "no such file" in missing.stderr


@pytest.fixture(scope="module")
def small_pretrained(tmp_path_factory):
  """A narrow, shallow file of the converted format (width 4, stages 1-1): the transfer study
  builds the network the file holds, so the end-to-end runs compile a small model (the full
  ResNet-18's exactness is tested above)."""
  model = pretrained.PretrainedResNet18(num_classes=3, num_filters=4, stage_sizes=(1, 1))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(0.0, 0.3, s.shape).astype(np.float32),
                        registry.param_shapes(model, (32, 32, 3)))
  path = tmp_path_factory.mktemp("small") / "small_resnet.npz"
  weights.save_params(path, params)
  return path


def test_architecture_is_read_from_the_file(converted, small_pretrained):
  assert pretrained.architecture(pretrained.load_converted(converted)) == {
      "num_filters": 64, "stage_sizes": (2, 2, 2, 2)}
  flat = pretrained.load_converted(small_pretrained)
  assert pretrained.architecture(flat) == {"num_filters": 4, "stage_sizes": (1, 1)}
  features = pretrained.resnet18_features(flat, np.zeros((3, 32, 32, 3), np.float32))
  assert features.shape == (3, 1, 1, 8)


def _tiny_transfer(tmp_path, model, path):
  from experiments.classify import make_sets, transfer  # pylint: disable=import-outside-toplevel
  sets = make_sets.write_sets(str(tmp_path / "sets"))[0]
  config = transfer.default_config()
  config.dataset = f"npz:{sets}"
  config.model = model
  config.pretrained = str(path)
  config.pretrained_size = 32
  config.learning_rates = (0.25,)
  config.clip_norms = (0.1,)
  config.steps_grid = (2,)
  config.recipe.steps = 2
  config.recipe.batch_size = 16
  config.non_private_learning_rates = (1e-3,)
  config.mean_trials = 1.0
  config.non_private = False  # the reference arm's path is the transfer study's own test
  return transfer.train_and_evaluate(config, str(tmp_path / model))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["resnet18_probe", "resnet18_finetune"])
def test_tiny_probe_and_finetune_end_to_end(tmp_path, small_pretrained, monkeypatch, model):
  loaded = []  # the fine-tune runs start from the file, with a fresh head
  real_load = registry.load_params
  monkeypatch.setattr(registry, "load_params", lambda path, like, **kw: (
      loaded.append((str(path), kw)), real_load(path, like, **kw))[1])
  results = _tiny_transfer(tmp_path, model, small_pretrained)
  dp_row = results["rows"][0]
  assert dp_row["model"] == model and dp_row["epsilon"] <= 8.0 + 1e-9
  assert math.isfinite(dp_row["test_accuracy"])
  assert dp_row["dataset"].endswith(f"+{model}32")
  report = json.load(open(tmp_path / model / "privacy_report.json"))
  assert any("pretrained weights" in line for line in report["not_covered"])
  assert dp_row["selected"]["steps"] == 2
  if model == "resnet18_finetune":
    assert loaded == [(str(small_pretrained), {"keep_from_like": ("head",)})]
  else:  # the probe reads the file for its features, not as initial parameters
    assert loaded == []
