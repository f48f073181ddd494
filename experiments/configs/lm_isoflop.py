"""IsoFLOP sweep (Chinchilla Approach 2): for each compute budget C, several model sizes,
each trained for D = C / (FLOPs per token) tokens.

    python -m experiments.sweep --config=experiments/configs/lm_isoflop.py --workdir=DIR

The LMs of ``lm_cosine.py``, three budgets x six widths on Shakespeare
(sizes whose run would be shorter than sweep.min_steps are left out; wall time in
BUILD_NOTES.md). Quick variant:
``--config.sweep.budgets='(1e11,3e11)' --config.sweep.widths='(16,32,64)'``.
"""

from experiments.configs import lm_cosine


def get_config():
  c = lm_cosine.get_config()
  c.train.warmup_steps = 20
  c.sweep.widths = (16, 24, 32, 48, 64, 96)
  c.sweep.budgets = (1e11, 3e11, 1e12)
  c.sweep.min_steps = 30
  return c
