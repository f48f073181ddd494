"""IsoFLOP sweep (Chinchilla Approach 2): for each compute budget C, several model sizes,
each trained for D = C / (FLOPs per token) tokens.

    python -m experiments.sweep --config=experiments/configs/lm_isoflop.py --workdir=DIR

Three budgets x six widths on Shakespeare (about 7 minutes on the 2-core CPU dev box;
sizes whose run would be shorter than sweep.min_steps are left out). Quick variant:
``--config.sweep.budgets='(1e11,3e11)' --config.sweep.widths='(16,32,64)'``.
"""

from jscale.config import base_config
from jscale.sweep import sweep_section


def get_config():
  c = base_config()
  c.model.depth, c.model.head_dim = 2, 8
  c.data.name, c.data.seq_len = "shakespeare", 128
  c.train.global_batch, c.train.learning_rate, c.train.warmup_steps = 32, 3e-3, 20
  c.train.eval_every, c.train.eval_batches, c.train.log_every = 100, 16, 100
  c.checkpoint.every = 200
  c.sweep = sweep_section()
  c.sweep.widths = (16, 24, 32, 48, 64, 96)
  c.sweep.depths = (2,)
  c.sweep.budgets = (1e11, 3e11, 1e12)
  c.sweep.min_steps = 30
  return c
