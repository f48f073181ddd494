"""The default sweep (the README's ``make sweep``): byte-level LMs on Shakespeare.

    python -m experiments.sweep --config=experiments/configs/lm_default.py --workdir=DIR

Eight decoder-only Transformers, widths 32-96 x depths 2 and 4 (about 2.5e4 to 4.4e5
non-embedding parameters), each at four token counts 0.2M-1.6M. Width-transferable
hyperparameters (muP, base width 64) and a warmup-stable-decay schedule: every size trains
one constant-rate trunk, and each token count is a branch cooled down from it (1.6x fewer
FLOPs than independent runs). Then L(N, D) = E + A/N^alpha + B/D^beta is fitted with
bootstrap intervals, the compute-optimal allocation is plotted, and the fit is checked by
holding out the largest size. The base learning rate 2^-6 comes from the LR sweep recorded
in BUILD_NOTES.md ("Sweep planning and runner"). Wall time and the fitted law on the 2-core
CPU dev box are in BUILD_NOTES.md.

One held-out point, by the same recipe (its trunk and cooldown):
``--config.sweep.widths='(128,)' --config.sweep.depths='(4,)' --config.sweep.tokens='(1.6e6,)'``.
Smaller variant for a quick look: ``--config.sweep.widths='(32,64)' --config.sweep.depths='(2,)'``.
"""

from jscale.sweep import sweep_section
from jscale.train.config import base_config


def get_config():
  c = base_config()
  # Two heads at every width. Head size 8 made the CPU step ~2x slower (tiny attention
  # matmuls); Kaplan et al. found the head count matters little.
  c.model.num_heads = 2
  c.model.parametrization, c.model.mup_base_width = "mup", 64
  c.data.name, c.data.seq_len = "shakespeare", 64
  c.train.global_batch, c.train.learning_rate, c.train.warmup_steps = 32, 2**-6, 20
  c.train.schedule, c.train.cooldown_fraction, c.train.cooldown_shape = "wsd", 0.2, "1-sqrt"
  c.train.eval_every, c.train.eval_batches, c.train.log_every = 200, 16, 100
  c.checkpoint.every = 200
  c.sweep = sweep_section()
  c.sweep.widths = (32, 48, 64, 96)
  c.sweep.depths = (2, 4)
  c.sweep.tokens = (2e5, 4e5, 8e5, 1.6e6)
  return c
