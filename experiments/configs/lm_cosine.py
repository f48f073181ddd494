"""L(N) at fixed data, the classic recipe: byte-level LMs on Shakespeare, one cosine schedule.

    python -m experiments.sweep --config=experiments/configs/lm_cosine.py --workdir=DIR

Seven decoder-only Transformers, 2 layers, widths 16-128 (about 6e3 to 4e5 non-embedding
parameters), standard parametrization, each trained on the same 1.64M tokens at one learning
rate, then L(N) = E + (N_c/N)^alpha is fitted with bootstrap intervals (about 2.5 minutes on
the 2-core CPU dev box; BUILD_NOTES.md). The IsoFLOP and compression sweeps start from it.
Why the default sweep moved on from it (every size sees the same tokens, one rate for every
width, no depth): BUILD_NOTES.md, "Sweep planning and runner".
"""

from jscale.sweep import sweep_section
from jscale.train.config import base_config


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
