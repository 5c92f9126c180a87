"""pbcseq: the quick settings on the Mayo PBC trial (212 patients x 6 labs x 4 visits).

  python -m experiments.gan --config=experiments/gan/configs/pbcseq.py --workdir=runs/gan_pbcseq

quick.py with the real pbcseq data (all 212 patients the loader keeps: 169 train / 22
validation / 21 test), expected batch 16, 40 epochs (440 discriminator steps), TSTR every 5
epochs, epsilon 2 at delta 1e-3 (< 1/169). Needs the shared data
(trials/survival_pbcseq.csv under $DPJAX_DATA_DIR or ../shared/data; `--config.data_dir=...`).
`:tiny` is quick.py:tiny's networks and length on this data (seconds).
"""

from experiments.gan.configs import quick


def get_config(arg: str | None = None):
  return quick.real_trial("pbcseq", arg, batch_size=16)
