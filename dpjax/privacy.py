r"""Privacy calculator: the epsilon of DP-SGD settings, or the noise for a target epsilon.

  python -m dpjax.privacy --dataset_size=60000 --batch_size=256 --noise_multiplier=1.1 \
      --epochs=60 --delta=1e-5 [--accountant=pld] [--json]
  python -m dpjax.privacy --dataset_size=60000 --batch_size=256 --target_epsilon=3 \
      --epochs=60 --delta=1e-5
"""

from __future__ import annotations

import json
import sys

from absl import app
from absl import flags
from absl import logging

from dpjax import accounting
from dpjax import sampling as sampling_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the calculator's flags (only when run as a script: importing stays side-effect free)."""
  flags.DEFINE_integer("dataset_size", None, "Number of training examples N.")
  flags.DEFINE_integer("batch_size", None, "Expected batch size (Poisson) or exact "
                       "batch size (fixed); q = batch_size / dataset_size.")
  flags.DEFINE_float("noise_multiplier", None, "Noise std (or Laplace scale) / clip norm.")
  flags.DEFINE_float("target_epsilon", None, "Print the noise multiplier reaching this "
                     "epsilon instead of an epsilon.")
  flags.DEFINE_float("epochs", None, "Passes over the data; steps = ceil(epochs * N / B).")
  flags.DEFINE_integer("steps", None, "Number of steps (instead of --epochs).")
  flags.DEFINE_float("delta", 1e-5, "Target delta.")
  flags.DEFINE_enum("accountant", "rdp", list(accounting.ACCOUNTANTS), "Accountant.")
  flags.DEFINE_enum("sampling", "poisson", list(accounting.SAMPLINGS), "Batch sampling.")
  flags.DEFINE_enum("mechanism", "gaussian", list(accounting.MECHANISMS), "Noise.")
  flags.DEFINE_bool("json", False, "Print one JSON object.")


class UsageError(ValueError):
  pass


def _require(flag, value):
  if value is None:
    raise UsageError(f"--{flag} is required.")
  return value


def steps_for(dataset_size: int, batch_size: int, sampling: str, epochs: float | None,
              steps: int | None) -> int:
  if (epochs is None) == (steps is None):
    raise UsageError("give exactly one of --epochs and --steps.")
  if steps is not None:
    if steps < 1:
      raise UsageError(f"--steps={steps} must be >= 1.")
    return steps
  if not epochs > 0:
    raise UsageError(f"--epochs={epochs} must be > 0.")
  expected = dataset_size if sampling == "full" else batch_size
  return sampling_lib.steps_for_epochs(epochs, dataset_size, expected)


def compute(dataset_size, batch_size, noise_multiplier, target_epsilon, epochs, steps, delta,
            accountant, sampling, mechanism) -> dict:
  """The calculator's result as a dict; raises UsageError naming the offending flag."""
  n = _require("dataset_size", dataset_size)
  b = _require("batch_size", batch_size) if sampling != "full" else n
  if n < 1:
    raise UsageError(f"--dataset_size={n} must be >= 1.")
  if b < 1:
    raise UsageError(f"--batch_size={b} must be >= 1.")
  if b > n:
    raise UsageError(f"--batch_size={b} > --dataset_size={n}: the sampling probability "
                     f"q = {b / n:.3g} must be <= 1.")
  if not 0 < delta < 1:
    raise UsageError(f"--delta={delta} must be in (0, 1).")
  if (noise_multiplier is None) == (target_epsilon is None):
    raise UsageError("give exactly one of --noise_multiplier and --target_epsilon.")
  if noise_multiplier is not None and not noise_multiplier > 0:
    raise UsageError(f"--noise_multiplier={noise_multiplier} must be > 0.")
  if target_epsilon is not None and not target_epsilon > 0:
    raise UsageError(f"--target_epsilon={target_epsilon} must be > 0.")
  num_steps = steps_for(n, b, sampling, epochs, steps)
  phase = accounting.PrivacyPhase(noise_multiplier=noise_multiplier or 1.0, dataset_size=n,
                                  batch_size=b, sampling=sampling, mechanism=mechanism,
                                  steps=num_steps)
  try:
    if target_epsilon is not None:
      sigma = accounting.calibrate_noise_multiplier(target_epsilon, delta, phase, accountant)
      phase = accounting.PrivacyPhase(**{**phase.__dict__, "noise_multiplier": sigma})
    epsilon = accounting.compute_epsilon([phase], delta, accountant)
  except ValueError as e:
    flag = "--target_epsilon" if target_epsilon is not None else "--accountant"
    raise UsageError(f"{flag}: {e}") from e
  result = {
      "epsilon": epsilon, "delta": delta, "noise_multiplier": phase.noise_multiplier,
      "steps": num_steps, "sampling_probability": phase.sampling_probability,
      "epochs": num_steps * phase.sampling_probability, "accountant": accountant,
      "sampling": sampling, "mechanism": mechanism, "dataset_size": n, "batch_size": b,
  }
  if mechanism == "laplace":
    result["pure_epsilon"] = accounting.pure_epsilon([phase])
  return result


def main(argv):
  logging.set_verbosity(logging.ERROR)  # dp_accounting warns per excluded RDP order
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    result = compute(FLAGS.dataset_size, FLAGS.batch_size, FLAGS.noise_multiplier, FLAGS.target_epsilon,
                     FLAGS.epochs, FLAGS.steps, FLAGS.delta, FLAGS.accountant,
                     FLAGS.sampling, FLAGS.mechanism)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if FLAGS.json:
    print(json.dumps(result))
  elif FLAGS.target_epsilon is not None:
    print(f"noise_multiplier={result['noise_multiplier']:.6g} reaches epsilon="
          f"{result['epsilon']:.4f} (target {FLAGS.target_epsilon}) at delta={result['delta']:g} after "
          f"{result['steps']} steps with q={result['sampling_probability']:.4g} "
          f"({result['accountant']}).")
  else:
    print(f"epsilon={result['epsilon']:.4f} at delta={result['delta']:g}: "
          f"noise_multiplier={result['noise_multiplier']:g}, {result['steps']} steps, "
          f"q={result['sampling_probability']:.4g}, {result['sampling']} sampling, "
          f"{result['accountant']} accountant.")
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(main)
