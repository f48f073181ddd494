"""The default sweep (the README's ``make sweep``): byte-level LMs on Shakespeare.

    python -m experiments.sweep --config=experiments/configs/lm_default.py --workdir=DIR

Twelve decoder-only Transformers of depth 2, widths 8-144: 5.7e3 to 5.7e5 parameters in all
(``sweep.law_params = "total"``: the law's N counts embeddings and head), 2.0 decades. Each
trains the token counts 0.1M-1.6M that give it between 2 and 80 tokens per parameter, so the
small models sit above the compute-optimal ~20 tokens per parameter and the large ones
below it (a diagonal design: 53 points, 2.4 .. 80 tokens per parameter). Widths 20 and 40,
where the residuals of a one-seed sweep scattered most, train a second seed. Width-transferable
hyperparameters (muP, base width 64, base rate 2^-6, rechecked at widths 8 and 144) and a
warmup-stable-decay schedule: every size and seed trains one constant-rate trunk, and
each token count is a branch cooled down from it. Then L(N, D) = E + A/N^alpha +
B/D^beta is fitted with a bootstrap over model sizes, the largest size held out and
predicted, and per size the annealing law fitted to the trunk and its longest branch
predicts the other branches' final losses (fit.json ``annealing``). Why one depth, the
bounds, the seeds and the rate, and the fitted law: BUILD_NOTES.md, "The default
experiment". Measured on the 2-core CPU dev box, empty compilation cache: 7 min 04 s
wall quiet (load < 2), 9 min 00 s beside other jobs (load 3-5; 11.4 min of CPU time);
1.37e13 training FLOPs. Under load 5-7 a first version of the plan (61 runs) took 16 min.

A model of twice the largest size by the same recipe (2.8 tokens per parameter):
``--config.sweep.widths='(208,)' --config.sweep.tokens='(3.2e6,)'`` (2.2e13 FLOPs; 8-12 min
measured, with ``--config.train.eval_every=400``).
Smaller variant for a quick look (91 s; its law is not identified: 3 sizes):
``--config.sweep.widths='(8,16,32)' --config.sweep.seeds='(0,)'``.
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
  # Evaluations every 50 steps: the points of each trunk's annealing-law curve.
  c.train.eval_every, c.train.eval_batches, c.train.log_every = 50, 16, 100
  c.checkpoint.every = 200
  c.sweep = sweep_section()
  # One depth: muP transfers the rate across width at fixed depth, and the old default's
  # depths 2 and 4 differed by up to 2.5% at equal N, which a law in N cannot fit.
  c.sweep.widths = (8, 12, 16, 20, 24, 28, 32, 40, 48, 64, 96, 144)
  c.sweep.depths = (2,)
  c.sweep.tokens = (1e5, 2e5, 4e5, 8e5, 1.6e6)
  c.sweep.min_tokens_per_param, c.sweep.max_tokens_per_param = 2.0, 80.0
  c.sweep.seeds, c.sweep.seed_widths = (0, 1), (20, 40)
  return c
