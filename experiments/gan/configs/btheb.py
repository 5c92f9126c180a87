"""btheb: the quick settings on the Beat the Blues trial (97 patients, BDI at 5 visits).

  python -m experiments.gan --config=experiments/gan/configs/btheb.py --workdir=runs/gan_btheb

quick.py with the real BtheB data (the 97 patients with >= 2 BDI scores: 78 train / 10
validation / 9 test; one feature at months 0, 2, 4, 6, 8), expected batch 8, 40 epochs (390
discriminator steps), TSTR every 5 epochs on 1000 synthetic participants, epsilon 2 at delta
1e-3 (< 1/78). Needs the shared data (trials/HSAUR_BtheB.csv under $DPJAX_DATA_DIR or
../shared/data; `--config.data_dir=...`). With 9 test patients an AUC is very noisy: a
check that the pipeline runs on a one-feature trial, not a method comparison. `:tiny` is
quick.py:tiny's networks and length on this data (seconds).
"""

from experiments.gan.configs import quick


def get_config(arg: str | None = None):
  return quick.real_trial("btheb", arg, batch_size=8)
