"""Regenerates `logits.json`: torchvision's real resnet18 on a deterministic random state dict.

  python -m tests.models.torchvision_fixture.make_fixture   # needs torch and torchvision

The state dict is drawn with NumPy from a fixed seed in torch's layout (`random_state_dict`),
so the test rebuilds it without torch; the fixture holds only the two inputs' logits (computed
here once by torchvision) and checksums that catch a change in NumPy's random streams.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

HERE = pathlib.Path(__file__).parent
FIXTURE = HERE / "logits.json"
NUM_CLASSES = 10
INPUT_SHAPE = (2, 64, 64, 3)  # NHWC; 64x64 leaves a 2x2 map for the average pool
WEIGHT_SEED, INPUT_SEED = 16, 17


def _shapes() -> dict[str, tuple[int, ...]]:
  from dpjax.models import torchvision_import  # pylint: disable=import-outside-toplevel
  convs, norms = torchvision_import._layout()  # pylint: disable=protected-access
  shapes = {key: shape for key, (_, shape) in convs.items()}
  for prefix, (_, channels) in norms.items():
    shapes.update({f"{prefix}.{field}": (channels,)
                   for field in ("weight", "bias", "running_mean", "running_var")})
  shapes["fc.weight"] = (NUM_CLASSES, 512)
  shapes["fc.bias"] = (NUM_CLASSES,)
  return shapes


def random_state_dict() -> dict[str, np.ndarray]:
  """torch-named float32 arrays: He-scaled conv/fc weights and non-trivial BatchNorm statistics
  (gamma, beta, running mean and a positive running var), so a wrong fold or transpose shows."""
  rng = np.random.default_rng(WEIGHT_SEED)
  out = {}
  for key, shape in sorted(_shapes().items()):
    if key.endswith("running_var"):
      value = rng.uniform(0.5, 2.0, shape)
    elif key.endswith("running_mean") or key.endswith(".bias"):
      value = rng.normal(0.0, 0.2, shape)
    elif len(shape) == 1:  # BatchNorm gamma
      value = rng.uniform(0.5, 1.5, shape)
    else:
      fan_in = int(np.prod(shape[1:]))
      value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
    out[key] = value.astype(np.float32)
  out["bn1.num_batches_tracked"] = np.array(7, np.int64)  # present in real files; ignored
  return out


def fixed_inputs() -> np.ndarray:
  """Two NHWC inputs, already in the normalised space the weights expect."""
  return np.random.default_rng(INPUT_SEED).normal(0.0, 1.0, INPUT_SHAPE).astype(np.float32)


def checksums(state_dict: dict[str, np.ndarray], inputs: np.ndarray) -> dict[str, float]:
  return {"weights": float(sum(np.abs(v).sum(dtype=np.float64) for k, v in state_dict.items()
                               if v.dtype == np.float32)),
          "inputs": float(np.abs(inputs).sum(dtype=np.float64))}


def import_torchvision():
  """torchvision, or None. The PyPI torchvision 0.28.0 wheel is a CUDA build: beside torch
  2.13.0+cpu its C++ ops do not load and its import fails while registering their fake kernels.
  The models need only torch.nn, so on that failure the import is retried with the fake-kernel
  registration skipped."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  try:
    import torchvision  # pylint: disable=import-outside-toplevel
    return torchvision
  except ImportError:
    return None
  except RuntimeError:
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
      del sys.modules[name]
    register_fake = torch.library.register_fake
    torch.library.register_fake = lambda *args, **kwargs: (lambda fn: fn)
    try:
      import torchvision  # pylint: disable=import-outside-toplevel,redefined-outer-name
      return torchvision
    except (ImportError, RuntimeError):
      return None
    finally:
      torch.library.register_fake = register_fake


def torchvision_logits(state_dict: dict[str, np.ndarray], inputs: np.ndarray) -> np.ndarray:
  """torchvision's resnet18 (eval mode: BatchNorm with the running statistics) on NHWC inputs."""
  import torch  # pylint: disable=import-outside-toplevel
  torchvision = import_torchvision()
  if torchvision is None:
    raise ImportError("the fixture needs torchvision: pip install torchvision==0.28.0 --no-deps")
  model = torchvision.models.resnet18(weights=None, num_classes=NUM_CLASSES)
  model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()})
  model.eval()
  with torch.no_grad():
    return model(torch.from_numpy(np.ascontiguousarray(inputs.transpose(0, 3, 1, 2)))).numpy()


def main():
  state_dict, inputs = random_state_dict(), fixed_inputs()
  logits = torchvision_logits(state_dict, inputs)
  import torch, torchvision  # pylint: disable=import-outside-toplevel,multiple-imports
  FIXTURE.write_text(json.dumps({
      "made_by": "python -m tests.models.torchvision_fixture.make_fixture",
      "torch": torch.__version__, "torchvision": torchvision.__version__,
      "weight_seed": WEIGHT_SEED, "input_seed": INPUT_SEED, "input_shape": INPUT_SHAPE,
      "checksums": checksums(state_dict, inputs),
      "logits": np.asarray(logits, np.float64).round(7).tolist()}, indent=1) + "\n")
  print(f"wrote {FIXTURE}: logits {logits.shape}, max |logit| {np.abs(logits).max():.4g}")


if __name__ == "__main__":
  main()
