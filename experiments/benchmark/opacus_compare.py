"""The benchmark's workloads in PyTorch and Opacus, for side-by-side step times.

Used by the benchmark with `compare="opacus"` (configs/*.py; `--config.compare=opacus`); needs
`pip install torch==2.13.0 opacus`.
The models mirror dpjax.models (CIFAR CNN, ResNet-18 with GroupNorm(32), VGG-16 without
BatchNorm, linear regression with 2000 parameters). Inputs are contiguous NCHW tensors: Opacus
1.6 returns zero per-sample conv weight gradients for a channels-last view.
"""

from __future__ import annotations

import os
import time
import warnings

import numpy as np


def check_installed() -> None:
  import opacus  # pylint: disable=import-outside-toplevel,unused-import
  import torch  # pylint: disable=import-outside-toplevel,unused-import


def _models():
  import torch  # pylint: disable=import-outside-toplevel
  from torch import nn  # pylint: disable=import-outside-toplevel

  class SmallCNN(nn.Module):
    def __init__(self):
      super().__init__()
      layers, channels = [], 3
      for index, features in enumerate((32, 64, 64, 128)):
        layers += [nn.Conv2d(channels, features, 3, padding=1), nn.ReLU()]
        if index < 3:
          layers.append(nn.AvgPool2d(2))
        channels = features
      self.body = nn.Sequential(*layers)
      self.head = nn.Linear(128, 10)

    def forward(self, x):
      return self.head(self.body(x).mean(dim=(2, 3)))

  class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
      self.norm1 = nn.GroupNorm(32, c_out)
      self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
      self.norm2 = nn.GroupNorm(32, c_out)
      self.proj = None
      if stride != 1 or c_in != c_out:
        self.proj = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.GroupNorm(32, c_out))

    def forward(self, x):
      y = torch.relu(self.norm1(self.conv1(x)))
      y = self.norm2(self.conv2(y))
      return torch.relu(y + (x if self.proj is None else self.proj(x)))

  class ResNet18(nn.Module):
    def __init__(self):
      super().__init__()
      self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.GroupNorm(32, 64), nn.ReLU())
      blocks, c_in = [], 64
      for stage, c_out in enumerate((64, 128, 256, 512)):
        for block in range(2):
          blocks.append(BasicBlock(c_in, c_out, 2 if stage > 0 and block == 0 else 1))
          c_in = c_out
      self.blocks = nn.Sequential(*blocks)
      self.head = nn.Linear(512, 10)

    def forward(self, x):
      return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))

  class VGG16(nn.Module):
    def __init__(self):
      super().__init__()
      layers, channels = [], 3
      for item in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                   512, 512, 512, "M"):
        if item == "M":
          layers.append(nn.MaxPool2d(2))
        else:
          layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU()]
          channels = item
      self.body = nn.Sequential(*layers)
      self.head = nn.Linear(512, 10)

    def forward(self, x):
      return self.head(torch.flatten(self.body(x), 1))

  return {"cnn": SmallCNN, "resnet18": ResNet18, "vgg16": VGG16,
          "linear": lambda: nn.Linear(1999, 1)}


def run(workload: str, x: np.ndarray, y: np.ndarray, *, steps: int, warmup: int, rounds: int,
        clip_norm: float, noise_multiplier: float, learning_rate: float, modes, seed: int,
        device: str | None = None) -> dict:
  """Median ms per step of the non-private step and of Opacus in each `grad_sample_mode`.

  `device`: a torch device; None is "cuda" where torch sees a GPU, else "cpu". On a GPU each
  step is followed by `torch.cuda.synchronize()`, as the JAX steps by `block_until_ready`.
  """
  import opacus  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from torch import nn  # pylint: disable=import-outside-toplevel

  warnings.filterwarnings("ignore", message="Full backward hook is firing")
  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(seed)
  device = device or ("cuda" if torch.cuda.is_available() else "cpu")
  sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
  if workload == "linear":
    inputs = torch.from_numpy(np.ascontiguousarray(x))
    targets = torch.from_numpy(np.asarray(y, np.float32)).reshape(-1, 1)
    criterion = nn.MSELoss
  else:
    inputs = torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))
    targets = torch.from_numpy(np.asarray(y, np.int64))
    criterion = nn.CrossEntropyLoss
  inputs, targets = inputs.to(device), targets.to(device)
  batch_size = inputs.shape[0]
  builder = _models()[workload]
  loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, targets),
                                       batch_size=batch_size)

  runners = {}
  model = builder().to(device)
  optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
  runners["nonprivate"] = (model, optimizer, criterion())
  errors = {}
  for mode in modes:
    model = builder().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    try:
      made = opacus.PrivacyEngine().make_private(
          module=model, optimizer=optimizer, criterion=criterion(), data_loader=loader,
          noise_multiplier=noise_multiplier, max_grad_norm=clip_norm, poisson_sampling=False,
          grad_sample_mode=mode)
    except Exception as error:  # pylint: disable=broad-except
      errors[mode] = f"{type(error).__name__}: {error}"
      continue
    if len(made) == 4:
      model, optimizer, loss_fn, _ = made
    else:
      model, optimizer, _ = made
      loss_fn = criterion()
    runners[mode] = (model, optimizer, loss_fn)

  def step(model, optimizer, loss_fn):
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(inputs), targets)
    loss.backward()
    optimizer.step()
    sync()

  times = {name: ([], []) for name in runners}
  for name, runner in list(runners.items()):
    try:
      for _ in range(warmup):
        step(*runner)
    except Exception as error:  # pylint: disable=broad-except
      errors[name] = f"{type(error).__name__}: {error}"
      del runners[name], times[name]
  for _ in range(rounds):
    for name, runner in runners.items():
      for _ in range(steps):
        wall, cpu = time.perf_counter(), time.process_time()
        step(*runner)
        times[name][0].append(time.perf_counter() - wall)
        times[name][1].append(time.process_time() - cpu)
  results = {}
  for name, (wall, cpu) in times.items():
    median = float(np.median(wall))
    results[name] = {"median_ms": 1e3 * median, "min_ms": 1e3 * float(np.min(wall)),
                     "examples_per_sec": batch_size / median,
                     "cores_used": float(np.sum(cpu) / np.sum(wall))}
  return {"torch": torch.__version__, "opacus": opacus.__version__, "device": device,
          "threads": torch.get_num_threads(), "results": results, "errors": errors}
