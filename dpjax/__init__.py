"""dpjax: differentially private machine learning in JAX.

The small public API; everything else is reachable through its module (`dpjax.clipping`,
`dpjax.accounting`, ...).
"""

from dpjax.accounting import PrivacyLedger, PrivacyPhase, calibrate_noise_multiplier, compute_epsilon
from dpjax.clipping import ClippingConfig, clipped_grad_sum
# `dpjax.train` stays the step module; the loop is `dpjax.engine.train`.
from dpjax.engine import LoopConfig, PrivateTrainer, TrainResult, make_private
from dpjax.randomness import PrivateRandomness
from dpjax.report import write_privacy_report
from dpjax.sampling import BatchSampler
from dpjax.train import DPConfig, dp_gradient, make_dp_step

__version__ = "0.1.0"

__all__ = [
    "BatchSampler", "ClippingConfig", "DPConfig", "LoopConfig", "PrivacyLedger", "PrivacyPhase",
    "PrivateRandomness", "PrivateTrainer", "TrainResult", "calibrate_noise_multiplier",
    "clipped_grad_sum", "compute_epsilon", "dp_gradient", "make_dp_step", "make_private",
    "write_privacy_report",
]
