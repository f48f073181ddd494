"""Image classifiers on the 5,000-image MNIST subset: width sweep of an MLP or a CNN.

    python -m experiments.sweep --config=experiments/configs/image_default.py --workdir=DIR
    python -m experiments.sweep --config=experiments/configs/image_default.py:cnn --workdir=DIR2

The argument after ':' picks the family (mlp by default); each family gets its own
workdir so its scaling law is fitted on its own runs. A few minutes on the 2-core CPU dev
box. Quick variant: ``--config.train.steps=50 --config.sweep.widths='(16,64)'``.
"""

from jscale.sweep import sweep_section
from jscale.train.config import base_config


def get_config(family: str = "mlp"):
  c = base_config()
  c.model.family = family
  c.model.depth = 2
  c.data.name = "mnist"
  c.train.steps, c.train.global_batch = 300, 64
  c.train.learning_rate, c.train.warmup_steps = 1e-3, 30
  c.train.eval_every, c.train.eval_batches, c.train.log_every = 100, 7, 100
  c.checkpoint.every = 150
  c.sweep = sweep_section()
  c.sweep.widths = (8, 16, 32, 64) if family == "cnn" else (16, 32, 64, 128, 256, 512)
  return c
