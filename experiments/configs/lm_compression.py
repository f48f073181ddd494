"""How compression moves the scaling curve: dense vs 50% and 75% gradual magnitude
pruning, int8/int4 post-training quantization of every run, and a distilled student of
each smaller size taught by the largest dense model.

    python -m experiments.sweep --config=experiments/configs/lm_compression.py --workdir=DIR

The LMs of ``lm_cosine.py`` at four widths x {dense, 50%, 75%} plus three
students on Shakespeare (20-30 minutes on the 2-core CPU dev box; findings in
BUILD_NOTES.md). Quick variant: ``--config.train.steps=100 --config.sweep.widths='(32,64)'``.
"""

from experiments.configs import lm_cosine


def get_config():
  c = lm_cosine.get_config()
  c.compress.ptq_eval_bits = (8, 4)
  c.compress.prune.start_fraction, c.compress.prune.end_fraction = 0.2, 0.7
  c.compress.prune.update_every = 10
  c.compress.distill.temperature, c.compress.distill.weight = 2.0, 0.5
  c.sweep.widths = (24, 32, 48, 64)
  c.sweep.sparsities = (0.0, 0.5, 0.75)
  c.sweep.distill_from_largest = True
  return c
