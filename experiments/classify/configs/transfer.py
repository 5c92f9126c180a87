"""transfer: a DP classifier for a new dataset without looking at its test split. ScatterNet
features with a linear head, the transferable recipe (steps, expected batch, lr for normalised
gradients), private random search on the validation split counted in epsilon (Papernot &
Steinke), and the non-private reference; medical metrics and the collapse detector. Two rules
from public quantities (issue 16c): the linear head's features are average-pooled until it has
<= 4 parameters per training example (`max_head_params_per_example`), and the selection scores
by balanced accuracy only where the noisy validation histogram allows it, else by accuracy
(`score=auto`, `max_score_std`).

  python -m experiments.classify.transfer --config=experiments/classify/configs/transfer.py \
      --workdir=runs/transfer_pneu_s0 --config.dataset=pneumoniamnist --config.seed=0
  # a new user's own file:  --config.dataset=npz:/path/to/set.npz

`:cnn`: the small CNN on pixels instead (same recipe and selection).
"""

from __future__ import annotations

import ml_collections

from experiments.classify import transfer


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = transfer.default_config()
  if arg == "cnn":
    config.model = "cnn"
  elif arg not in (None, ""):
    raise ValueError(f"transfer.py:{arg}: unknown variant; valid: cnn")
  return config
