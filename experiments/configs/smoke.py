"""Smoke sweep used by the tests: finishes in seconds on a 2-core CPU.

    python -m experiments.sweep --config=experiments/configs/smoke.py --workdir=/tmp/smoke

Three tiny LMs on Shakespeare, 12 steps each, checkpoints every 4 steps.
"""

from jscale.sweep import sweep_section
from jscale.train.config import base_config


def get_config():
  c = base_config()
  c.model.width, c.model.depth, c.model.head_dim = 16, 1, 8
  c.data.seq_len = 32
  c.train.steps, c.train.global_batch, c.train.warmup_steps = 12, 8, 2
  c.train.eval_every, c.train.eval_batches, c.train.log_every = 6, 2, 4
  c.checkpoint.every = 4
  c.sweep = sweep_section()
  c.sweep.widths = (8, 16, 24)
  c.sweep.bootstrap = 20
  return c
