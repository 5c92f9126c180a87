"""paper: the study's command line on simulated SPRINT-like data at SPRINT's size (days on a CPU).

  python -m experiments.gan --config=experiments/gan/configs/paper.py --workdir=runs/gan_paper \
      --config.prefix=1_0.0001_2e-05_

SPRINT_gan `dp_gan.py --noise 1 --clip_value 0.0001 --epochs 500 --lr 2e-05 --batch_size 1`:
6502 simulated participants (80% train; 10% validation, 10% test), noise multiplier 1, clip
norm 1e-4, 500 epochs at expected batch 1 (about 2.6 million discriminator steps), Adam 2e-5,
the study's widths (generator conv 256, discriminator 1024), TSTR every 10 epochs, delta 1e-5,
plus the non-private baselines. The real SPRINT files (controlled access):
`--config.dataset=sprint --config.data_dir=...`. Never run here: at 7.5 steps/s it takes
about eight days for its two GANs (README.md, issue 17). `:quick` keeps the study's settings
for 200 participants and one epoch (160 steps per GAN: a check that the study's sizes run, not
a result).
"""

from experiments.gan import settings


def get_config(arg: str | None = None):
  config = settings.default_config()
  config.name = "paper"
  if arg == "quick":
    config.name = "paper:quick"
    config.num_participants = 200
    config.epochs = 1
    config.eval_every = 1
  elif arg:
    raise ValueError(f"paper.py:{arg}: unknown argument; use paper.py or paper.py:quick.")
  return config
