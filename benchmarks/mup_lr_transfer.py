"""Does the best learning rate transfer across width? SP against muP on Shakespeare.

    python benchmarks/mup_lr_transfer.py [--widths=32,64,128,256] [--steps=150]
        [--log2_rates=-13,-12,-11,-10,-9,-8,-7,-6,-5] [--mup_base_width=64]

For each parametrization and width, one byte-level transformer (depth 2, 4 heads, so
the head dimension grows with width and muP's 1/K attention matters) is trained at every
learning rate of the grid (powers of two: neighbours a factor 2 apart) from the same
initialisation on the same batches, with base_config's optimizer (AdamW, warm-up and
cosine decay, clipping). The rates of one (parametrization, width) run as one vmapped
program: one compilation, the rate a traced per-run value. Each run is scored by its
validation loss at the end (a diverged run scores +inf).

Prints the loss table, the best rate per width for each parametrization (the grid's
argmin, and a parabola through it and its neighbours in log2(rate), which is not
quantised to the grid), the spread of the best rates (max / min over widths), and ends
with one key=value line. Under muP the spread should stay near 1 (Tensor Programs V,
Fig. 1); under SP the best rate falls as width grows. Defaults take 3.5 minutes on
the 2-core CPU dev box.
"""

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import smoke
from absl import app, flags

from jscale import data as data_lib
from jscale import models
from jscale.train import config as config_lib
from jscale.train.optim import learning_rate_schedule, make_optimizer
from jscale.train.step import cross_entropy, init_state, train_step_fn

_WIDTHS = flags.DEFINE_list("widths", ["32", "64", "128", "256"], "Model widths.")
_LOG2_RATES = flags.DEFINE_list("log2_rates", [str(k) for k in range(-11, -3)],
                                "Peak learning rates as powers of two.")
_STEPS = flags.DEFINE_integer("steps", 100, "Optimizer steps per run.")
_BATCH = flags.DEFINE_integer("batch", 16, "Sequences per step.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 32, "Tokens per sequence.")
_DEPTH = flags.DEFINE_integer("depth", 2, "Transformer blocks.")
_HEADS = flags.DEFINE_integer("num_heads", 4, "Attention heads (fixed: K grows with width).")
_BASE = flags.DEFINE_integer("mup_base_width", 64, "muP's base width (SP there).")
_EVAL_BATCHES = flags.DEFINE_integer("eval_batches", 8, "Validation batches per score.")


def train_spec():
  c = config_lib.base_config()
  c.train.steps, c.train.global_batch = _STEPS.value, _BATCH.value
  c.train.warmup_steps = max(1, _STEPS.value // 10)
  c.data.name, c.data.seq_len = "shakespeare", _SEQ_LEN.value
  return config_lib.resolve(c).train


def final_losses(spec, train, dataset, rates: np.ndarray) -> np.ndarray:
  """Validation loss after training ``spec`` at each of ``rates`` (inf if diverged)."""
  module = spec.make_module()
  unit = learning_rate_schedule(dataclasses.replace(train, learning_rate=1.0))

  def one_step(state, rate, batch):
    def schedule(count):
      return rate * unit(count)

    tx = make_optimizer(train, learning_rate=schedule, model=spec)
    return train_step_fn(module, tx, schedule)(state, batch)

  step = jax.jit(jax.vmap(one_step, in_axes=(0, 0, None)), donate_argnums=0)
  # The optimizer's state does not depend on the rate: one initial state, copied.
  start = init_state(module, make_optimizer(train, model=spec), spec.dummy_inputs(1),
                     train.seed)
  state = jax.tree.map(lambda x: jnp.broadcast_to(x, (len(rates), *x.shape)), start)
  rates = jnp.asarray(rates, jnp.float32)
  for s in range(train.steps):
    state, _ = step(state, rates, dataset.train_batch(s, train.global_batch, train.seed))

  @jax.jit
  def loss(params, batch):
    return jax.vmap(lambda p: cross_entropy(module.apply({"params": p}, batch["inputs"]),
                                            batch["targets"])[0])(params)

  batches = dataset.eval_batches(train.global_batch, _EVAL_BATCHES.value)
  losses = np.mean([np.asarray(loss(state.params, b)) for b in batches], axis=0)
  return np.where(np.isfinite(losses), losses, np.inf)


def parabola_minimum(log2_rates: np.ndarray, losses: np.ndarray) -> float:
  """log2 of the best rate: the vertex of the parabola through the grid's minimum and
  its two neighbours (evenly spaced), or the grid's minimum at an edge of the grid."""
  i = int(np.argmin(losses))
  if i == 0 or i == len(losses) - 1 or not np.isfinite(losses[i - 1:i + 2]).all():
    return float(log2_rates[i])
  left, middle, right = losses[i - 1:i + 2]
  step = log2_rates[i + 1] - log2_rates[i]
  return float(log2_rates[i] + step * 0.5 * (left - right) / (left - 2 * middle + right))


def main(argv):
  del argv
  smoke.shrink({"widths": ["16", "32"], "log2_rates": ["-8", "-6"], "steps": 4,
                "eval_batches": 1})
  widths = [int(w) for w in _WIDTHS.value]
  log2_rates = np.array([float(k) for k in _LOG2_RATES.value])
  rates = 2.0**log2_rates
  train = train_spec()
  dataset = data_lib.load(data_lib.DataSpec("shakespeare", seq_len=_SEQ_LEN.value))
  print(f"{train.steps} steps x {train.global_batch} x {_SEQ_LEN.value} tokens, depth "
        f"{_DEPTH.value}, {_HEADS.value} heads, muP base width {_BASE.value}; rates "
        + " ".join(f"2^{int(k)}" for k in _LOG2_RATES.value), flush=True)
  summary = {}
  for parametrization in ("sp", "mup"):
    best, fitted = {}, {}
    for width in widths:
      started = time.time()
      spec = models.make_spec(
          "transformer", width=width, depth=_DEPTH.value, num_heads=_HEADS.value,
          context_length=_SEQ_LEN.value, vocab_size=dataset.vocab_size,
          parametrization=parametrization, mup_base_width=_BASE.value)
      losses = final_losses(spec, train, dataset, rates)
      best[width] = rates[int(np.argmin(losses))]
      fitted[width] = 2.0**parabola_minimum(log2_rates, losses)
      print(f"{parametrization:3s} width {width:4d}: "
            + " ".join(f"{v:6.3f}" for v in losses)
            + f"  best 2^{math.log2(best[width]):g}, parabola 2^{math.log2(fitted[width]):.2f}"
            + f" ({time.time() - started:.0f} s)", flush=True)
    for name, by_width in (("best_lr", best), ("parabola_lr", fitted)):
      spread = max(by_width.values()) / min(by_width.values())
      summary[f"{parametrization}_{name}_spread"] = spread
      print(f"{parametrization}: {name.replace('_', ' ')} per width "
            + ", ".join(f"{w}: {r:.3g}" for w, r in by_width.items())
            + f"; spread (max/min) {spread:.3g}", flush=True)
  print(" ".join(f"{key}={summary[key]:.3g}" for key in (
      "mup_best_lr_spread", "sp_best_lr_spread", "mup_parabola_lr_spread",
      "sp_parabola_lr_spread")))


if __name__ == "__main__":
  app.run(main)
