"""Training throughput against the backend's measured dense-matmul peak.

    python benchmarks/train_throughput.py [--dtype=float32|bfloat16] [--steps=20]

Measures, in one run: the FLOP/s of a large jitted matmul (the practical peak of this
backend), then for several LM sizes the FLOP/s of the real jscale train step (AdamW,
clipping, data-parallel jit over all local devices) on Shakespeare batches, and prints the
ratio of each to the peak. Model FLOPs follow ``jscale.flops`` (see its docstring). Ends
with one key=value line: the largest model's ratio and both rates.
"""

import time

import jax
from absl import app, flags

from jscale import config as config_lib
from jscale import data as data_lib
from jscale import flops
from jscale.optim import learning_rate_schedule, make_optimizer
from jscale.sharding import data_parallel
from jscale.train.step import init_state, make_train_step

_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per model (after compilation).")
_SIZES = flags.DEFINE_string("sizes", "32x2,64x2,128x2,256x4", "widthxdepth,... to measure.")
_BATCH = flags.DEFINE_integer("batch", 32, "Global batch (sequences of 128 bytes).")
_HEADS = flags.DEFINE_integer("num_heads", 2, "Attention heads.")


def step_rate(width: int, depth: int, dataset) -> tuple[float, float]:
  """(model FLOP/s, tokens/s) of the train step, compilation excluded."""
  c = config_lib.base_config()
  c.model.width, c.model.depth, c.model.num_heads = width, depth, _HEADS.value
  c.data.seq_len = 128
  c.train.global_batch, c.train.compute_dtype = _BATCH.value, _DTYPE.value
  run = config_lib.resolve(c, dataset)
  dp = data_parallel()
  module, tx = run.model.make_module(), make_optimizer(run.train)
  step = make_train_step(module, tx, learning_rate_schedule(run.train), dp)
  state = jax.jit(lambda: init_state(module, tx, run.model.dummy_inputs(1), 0),
                  out_shardings=dp.replicated)()
  batches = [dp.shard_batch(dataset.train_batch(i, run.train.global_batch, 0))
             for i in range(_STEPS.value + 1)]
  state, metrics = step(state, batches[0])
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for batch in batches[1:]:
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / _STEPS.value
  flops_per_step = flops.train_flops_per_step(run.model, run.train.global_batch)
  return flops_per_step / seconds, run.train.global_batch * 128 / seconds


def main(argv):
  del argv
  dataset = data_lib.load(data_lib.DataSpec(name="shakespeare", seq_len=128))
  peak = flops.measure_matmul_peak(n=2048, dtype=_DTYPE.value, repeats=10)
  device = jax.devices()[0]
  print(f"device {device.device_kind} x{jax.device_count()}, {_DTYPE.value}")
  print(f"measured matmul peak: {peak / 1e9:.1f} GFLOP/s")
  print(f"{'model':>10} {'params':>10} {'GFLOP/s':>9} {'tok/s':>10} {'ratio':>6} {'MFU':>6}")
  rows = []
  for size in _SIZES.value.split(","):
    width, depth = (int(x) for x in size.split("x"))
    rate, tokens = step_rate(width, depth, dataset)
    table_peak = flops.peak_flops_per_device(device.device_kind, _DTYPE.value)
    mfu = flops.mfu(rate / jax.device_count(), table_peak)
    rows.append((size, rate))
    print(f"{size:>10} {'':>10} {rate / 1e9:9.2f} {tokens:10,.0f} {rate / peak:6.3f} "
          f"{'n/a' if mfu is None else f'{mfu:.3f}':>6}")
  largest, rate = rows[-1]
  print(f"largest_model={largest} train_gflops={rate / 1e9:.2f} peak_gflops={peak / 1e9:.2f} "
        f"ratio_to_peak={rate / peak:.3f}")


if __name__ == "__main__":
  app.run(main)
