"""The default L(N, D) sweep on BPE tokens: GPT-2-tokenized Shakespeare (``make tokens``).

    make tokens   # = python -m experiments.tokenize --input=corpus:shakespeare --tokenizer=gpt2 \\
                  #       --validation_fraction=0.1 --out=workdir/tokens/shakespeare-gpt2
    python -m experiments.sweep --config=experiments/configs/lm_bpe.py --workdir=DIR
    make sweep CONFIG=experiments/configs/lm_bpe.py WORKDIR=DIR   # tokenizes first if needed

The shape of lm_default.py (muP, warmup-stable-decay trunks with a cooldown branch per
token count, Chinchilla fit with bootstrap intervals) on the 50,257-token GPT-2 vocabulary:
eight Transformers, widths 32-96 x depths 2 and 4, at 0.1M-0.8M tokens each (the training
split holds 1.43M tokens, ~3.1 bytes each; ``epochs`` in results.csv says how often a run
went over it). The embedding and head dominate the parameters and the FLOPs at these
widths; the law is fitted on non-embedding parameters as everywhere. val_bpb is in bits per
byte, comparable with lm_default's byte-level runs. The learning rate is lm_default's,
not re-tuned for BPE. ``--dry_run`` prints the plan with wall times measured on the machine
at hand.

Small variant for CPU and CI (three tiny LMs, seconds):
``--config=experiments/configs/lm_bpe.py:smoke``. Run from the repository root, or give
``--config.data.tokens_dir`` (a folder made by ``experiments.tokenize``, local or gs://).
"""

from jscale.sweep import sweep_section
from jscale.train.config import base_config

TOKENS_DIR = "workdir/tokens/shakespeare-gpt2"  # what `make tokens` writes


def get_config(variant: str = ""):
  c = base_config()
  c.data.name, c.data.tokens_dir = "tokens", TOKENS_DIR
  c.sweep = sweep_section()
  if variant == "smoke":
    c.model.width, c.model.depth, c.model.head_dim = 16, 1, 8
    c.data.seq_len = 32
    c.train.steps, c.train.global_batch, c.train.warmup_steps = 12, 8, 2
    c.train.eval_every, c.train.eval_batches, c.train.log_every = 6, 2, 4
    c.checkpoint.every = 4
    c.sweep.widths = (8, 16, 24)
    c.sweep.bootstrap = 20
    return c
  if variant:
    raise ValueError(f"lm_bpe.py takes no argument or ':smoke', got {variant!r}")
  c.model.num_heads = 2
  c.model.parametrization, c.model.mup_base_width = "mup", 64
  c.data.seq_len = 64
  c.train.global_batch, c.train.learning_rate, c.train.warmup_steps = 32, 2**-6, 20
  c.train.schedule, c.train.cooldown_fraction, c.train.cooldown_shape = "wsd", 0.2, "1-sqrt"
  c.train.eval_every, c.train.eval_batches, c.train.log_every = 200, 16, 100
  c.checkpoint.every = 200
  c.sweep.widths = (32, 48, 64, 96)
  c.sweep.depths = (2, 4)
  c.sweep.tokens = (1e5, 2e5, 4e5, 8e5)
  return c
