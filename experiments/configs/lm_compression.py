"""How compression moves the scaling curve: dense vs 50% and 75% gradual magnitude
pruning, int8/int4 post-training quantization of every run, and a distilled student of
each smaller size taught by the largest dense model.

    python -m experiments.sweep --config=experiments/configs/lm_compression.py --workdir=DIR

Four LM sizes x {dense, 50%, 75%} + three students on Shakespeare (about 20-30 minutes on
the 2-core CPU dev box; findings in BUILD_NOTES.md). Quick variant:
``--config.train.steps=100 --config.sweep.widths='(32,64)'``.
"""

from jscale.config import base_config
from jscale.sweep import sweep_section


def get_config():
  c = base_config()
  c.model.depth, c.model.head_dim = 2, 8
  c.data.name, c.data.seq_len = "shakespeare", 128
  c.train.steps, c.train.global_batch = 400, 32
  c.train.learning_rate, c.train.warmup_steps = 3e-3, 40
  c.train.eval_every, c.train.eval_batches, c.train.log_every = 100, 16, 100
  c.checkpoint.every = 200
  c.compress.ptq_eval_bits = (8, 4)
  c.compress.prune.start_fraction, c.compress.prune.end_fraction = 0.2, 0.7
  c.compress.prune.update_every = 10
  c.compress.distill.temperature, c.compress.distill.weight = 2.0, 0.5
  c.sweep = sweep_section()
  c.sweep.widths = (24, 32, 48, 64)
  c.sweep.depths = (2,)
  c.sweep.sparsities = (0.0, 0.5, 0.75)
  c.sweep.distill_from_largest = True
  return c
