"""The default sweep (the README's ``make sweep``): byte-level LMs on Shakespeare.

    python -m experiments.sweep --config=experiments/configs/lm_default.py --workdir=DIR

Seven decoder-only Transformers, 2 layers, widths 16-128 (about 6e3 to 4e5 non-embedding
parameters, 1.8 decades), each trained on the same tokens, then L(N) = E + (N_c/N)^alpha
is fitted with bootstrap intervals. Wall time and the fitted exponent on the 2-core CPU
dev box are in BUILD_NOTES.md. Smaller variant for a quick look:
``--config.train.steps=100 --config.sweep.widths='(16,32,64)'``.
"""

from jscale.sweep import sweep_section
from jscale.sweep.config import base_config


def get_config():
  c = base_config()
  # Two heads at every width: head size 8-64. Head size 8 made the CPU step ~2x slower
  # (tiny attention matmuls); Kaplan et al. found the head count matters little.
  c.model.depth, c.model.num_heads = 2, 2
  c.data.name, c.data.seq_len = "shakespeare", 128
  c.train.steps, c.train.global_batch = 400, 32
  c.train.learning_rate, c.train.warmup_steps = 3e-3, 40
  c.train.eval_every, c.train.eval_batches, c.train.log_every = 100, 16, 100
  c.checkpoint.every = 200
  c.sweep = sweep_section()
  c.sweep.widths = (16, 24, 32, 48, 64, 96, 128)
  return c
