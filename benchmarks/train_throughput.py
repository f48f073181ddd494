"""Training throughput of the real train step against measured matmul peaks.

    python benchmarks/train_throughput.py [--sizes=32x2,64x2,128x2] [--rounds=8]
        [--compare_head_dim=64] [--compare_devices=2] [--compare_mesh=1,-1,1]
        [--batch=32] [--head_dim=8] [--dtype=float32|bfloat16]

Everything is measured in one process and interleaved: each round times every
reference matmul and every case once, and the fastest round of each is kept, so
a burst of load from other processes slows all of them alike rather than one.

References (the denominator of every ratio), both jitted, in the compute dtype:
  * square peak: an n x n x n matmul (``--peak_n``), the backend's best case;
  * model-shape peak: [T, D] x [D, F] at the largest size, T = tokens per step,
    D = width, F = MLP width, the biggest matmul the model itself runs.
Cases: the train step of ``jscale.train.step`` (AdamW, clipping, jit, data
parallel) at every size of ``--sizes`` with the config's head dimension on one
device, as the default sweep trains them; then, at the largest size: with
``--compare_head_dim``; data parallel over ``--compare_devices`` devices (on
CPU, host devices forced before jax starts, each run by its own thread); and
on the same devices laid out as ``--compare_mesh`` (FSDP by default: parameters and
optimizer state sharded, gathered per layer); and its gradient alone (``value_and_grad``
of the loss, no optimizer update).
Every case starts from experiments/configs/lm_cosine.py (the L(N) sweep).
Model FLOPs follow ``jscale.models.flops``. Ends with one key=value line for the
largest size as the default sweep trains it, against the square peak, and the
``--compare_mesh`` case's throughput over the data-parallel one's on the same devices
(``sharded_to_replicated``, the ratio of their MFUs).
"""

import dataclasses
import math
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import smoke
from absl import app, flags

from experiments import cli
from experiments.configs import lm_cosine
from jscale import data as data_lib
from jscale.errors import BadInput
from jscale.models import flops
from jscale.train import config as config_lib
from jscale.train.sharding import LayoutSpec, make_layout
from jscale.train.step import build_run, cross_entropy, fresh_state, make_train_step

_BATCH = flags.DEFINE_integer("batch", 0, "Global batch (0 = the default sweep's).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 0, "Head dimension (0 = the default sweep's).")
_SIZES = flags.DEFINE_string("sizes", "32x2,64x2,128x2", "widthxdepth,... smallest first.")
_COMPARE_HEAD_DIM = flags.DEFINE_integer(
    "compare_head_dim", 64, "Extra case: the largest size with this head dimension (0 = none).")
_COMPARE_DEVICES = flags.DEFINE_integer(
    "compare_devices", 2, "Extra case: the largest size data parallel over this many devices "
    "(0 or 1 = none).")
_COMPARE_MESH = flags.DEFINE_list(
    "compare_mesh", ["1", "-1", "1"], "Extra case: the largest size on --compare_devices "
    "devices laid out as this data,fsdp,tensor mesh, as train.mesh (default FSDP).")
_SHARD_MIN_BYTES = flags.DEFINE_integer(
    "shard_min_bytes", LayoutSpec.shard_min_bytes,
    "Parameters smaller stay replicated in the --compare_mesh case (train.shard_min_bytes).")
_ROUNDS = flags.DEFINE_integer("rounds", 8, "Interleaved timing rounds; the fastest is kept.")
_STEPS = flags.DEFINE_integer("steps", 3, "Train steps per case per round.")
_PEAK_N = flags.DEFINE_integer("peak_n", 2048, "Side of the square reference matmul.")


@dataclasses.dataclass(frozen=True)
class Case:
  """One timed configuration of the train step."""
  label: str
  width: int
  depth: int
  head_dim: int  # 0: the config's num_heads
  devices: int
  grad_only: bool = False
  mesh: tuple[int, int, int] = LayoutSpec.mesh  # data parallel


@dataclasses.dataclass
class Timed:
  """A case made ready to time: ``run()`` executes one timed unit and blocks."""
  case: Case
  run: Callable[[], None]
  flops_per_unit: float
  tokens_per_unit: int
  heads: int
  params: int


def _run_spec(case: Case, config, dataset):
  c = config.copy_and_resolve_references()
  c.model.width, c.model.depth, c.model.head_dim = case.width, case.depth, case.head_dim
  return config_lib.resolve(c, dataset)


def prepare(case: Case, config, dataset) -> Timed:
  """Compiles the case's train step (or gradient) and returns its timer."""
  run = _run_spec(case, config, dataset)
  dp = make_layout(LayoutSpec(case.mesh, _SHARD_MIN_BYTES.value), case.devices,
                   "--compare_mesh")
  dp.check_batch(run.train.global_batch)
  built = build_run(run)
  module = built.module
  holder = {"state": fresh_state(built, dp, 0)}
  batches = [dp.shard_batch(dataset.train_batch(i, run.train.global_batch, 0))
             for i in range(_STEPS.value)]
  if case.grad_only:
    def loss(params, batch):
      logits = module.apply({"params": params}, batch["inputs"])
      return cross_entropy(logits, batch["targets"])[0]
    grad = jax.jit(jax.value_and_grad(loss))

    def unit():  # one at a time, as steps are: independent calls would overlap
      for b in batches:
        jax.block_until_ready(grad(holder["state"].params, b))
  else:
    step = make_train_step(built, dp)

    def unit():
      for b in batches:
        holder["state"], metrics = step(holder["state"], b)
      jax.block_until_ready(metrics)
  unit()  # compiles
  tokens = run.train.global_batch * run.model.context_length * _STEPS.value
  return Timed(case, unit, _STEPS.value * flops.train_flops_per_step(
      run.model, run.train.global_batch), tokens, run.model.num_heads,
               run.model.param_counts().total)


def matmul_timer(m: int, k: int, n: int, dtype: str,
                 min_flops: float) -> tuple[Callable[[], None], float]:
  """A timer of jitted [m, k] x [k, n] matmuls, one after another, and its FLOPs.

  It repeats the matmul until the unit does ``min_flops`` (the largest train
  step's), so that every timed unit lasts about as long: under shared load a
  short unit is likelier to fit in a quiet moment, which would flatter it.
  """
  key_a, key_b = jax.random.split(jax.random.key(0))
  a_MxK = jax.random.normal(key_a, (m, k), jnp.dtype(dtype))
  b_KxN = jax.random.normal(key_b, (k, n), jnp.dtype(dtype))
  matmul = jax.jit(jnp.matmul)
  matmul(a_MxK, b_KxN).block_until_ready()
  repeats = max(1, math.ceil(min_flops / (2.0 * m * k * n)))

  def unit():
    for _ in range(repeats):
      matmul(a_MxK, b_KxN).block_until_ready()

  return unit, repeats * 2.0 * m * k * n


def fastest(timers: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
  """Fastest wall time of each timer over ``rounds`` interleaved rounds."""
  best = {name: float("inf") for name in timers}
  for _ in range(rounds):
    for name, timer in timers.items():
      start = time.perf_counter()
      timer()
      best[name] = min(best[name], time.perf_counter() - start)
  return best


def parse_sizes(text: str) -> list[tuple[int, int]]:
  try:
    sizes = [tuple(int(x) for x in size.split("x")) for size in text.split(",")]
  except ValueError:
    sizes = []
  if not sizes or any(len(s) != 2 or min(s) <= 0 for s in sizes):
    raise BadInput(f"--sizes must look like 32x2,64x2 (widthxdepth,...), got {text!r}")
  return sizes


def cases(sizes: list[tuple[int, int]], head_dim: int, mesh: tuple[int, int, int]
          ) -> list[Case]:
  """The default sweep's cases, then the comparisons at the largest size.

  ``head_dim`` 0 keeps the config's ``model.num_heads`` at every width.
  """
  out = [Case(f"{w}x{d}", w, d, head_dim, 1) for w, d in sizes]
  width, depth = sizes[-1]
  if _COMPARE_HEAD_DIM.value and _COMPARE_HEAD_DIM.value != head_dim:
    out.append(Case(f"{width}x{depth} head_dim {_COMPARE_HEAD_DIM.value}", width, depth,
                    _COMPARE_HEAD_DIM.value, 1))
  devices = _COMPARE_DEVICES.value if 1 < _COMPARE_DEVICES.value <= jax.device_count() else 1
  if devices > 1:
    out.append(Case(f"{width}x{depth} {devices} devices", width, depth, head_dim, devices))
  out.append(Case(f"{width}x{depth} mesh {','.join(map(str, mesh))}", width, depth, head_dim,
                  devices, mesh=mesh))
  out.append(Case(f"{width}x{depth} gradient only", width, depth, head_dim, 1,
                  grad_only=True))
  return out


def force_host_devices(count: int) -> None:
  """On CPU, expose ``count`` host devices (each runs on its own thread)."""
  if count > 1 and "xla_force_host_platform_device_count" not in os.environ.get(
      "XLA_FLAGS", ""):
    jax.config.update("jax_num_cpu_devices", count)


def main(argv):
  smoke.shrink({"sizes": "16x1,32x1", "compare_head_dim": 16, "rounds": 1, "steps": 1,
                "peak_n": 256, "shard_min_bytes": 0})
  if len(argv) > 1:
    raise BadInput(f"unexpected arguments {argv[1:]}")
  sizes = parse_sizes(_SIZES.value)
  mesh = cli.parse_mesh(_COMPARE_MESH.value, "--compare_mesh")
  force_host_devices(_COMPARE_DEVICES.value)
  config = lm_cosine.get_config()
  config.train.global_batch = _BATCH.value or config.train.global_batch
  config.model.head_dim = _HEAD_DIM.value or config.model.head_dim
  config.train.compute_dtype = _DTYPE.value
  dtype = config.train.compute_dtype
  dataset = data_lib.load(config_lib.data_spec(config))
  if _COMPARE_DEVICES.value > jax.device_count():
    print(f"skipping the {_COMPARE_DEVICES.value}-device case: this backend has "
          f"{jax.device_count()} device(s)")
  timed = [prepare(case, config, dataset)
           for case in cases(sizes, config.model.head_dim, mesh)]
  step_flops = timed[len(sizes) - 1].flops_per_unit / _STEPS.value
  width = sizes[-1][0]
  tokens = config.train.global_batch * config.data.seq_len
  n = _PEAK_N.value
  references = {
      f"square {n}x{n}x{n}": matmul_timer(n, n, n, dtype, step_flops),
      f"model shape {tokens}x{width}x{config.model.mlp_ratio * width}": matmul_timer(
          tokens, width, config.model.mlp_ratio * width, dtype, step_flops),
  }
  timers = {name: timer for name, (timer, _) in references.items()}
  timers.update({t.case.label: t.run for t in timed})
  seconds = fastest(timers, _ROUNDS.value)

  device = jax.devices()[0]
  load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
  print(f"device {device.device_kind} x{jax.device_count()} ({os.cpu_count()} host cores, "
        f"load average {load}), {dtype}, batch {config.train.global_batch} x "
        f"{config.data.seq_len} tokens, fastest of {_ROUNDS.value} interleaved rounds")
  peaks = {}
  for name, (_, matmul_flops) in references.items():
    peaks[name] = matmul_flops / seconds[name]
    print(f"peak, {name}: {peaks[name] / 1e9:.1f} GFLOP/s")
  square, shaped = peaks.values()
  table_peak = flops.peak_flops_per_device(device.device_kind, dtype)
  print(f"{'case':>24} {'heads':>5} {'devs':>4} {'params':>9} {'step ms':>8} {'tok/s':>9} "
        f"{'GFLOP/s':>8} {'/square':>7} {'/shape':>7} {'MFU':>6}")
  for t in timed:
    per_unit = seconds[t.case.label]
    rate = t.flops_per_unit / per_unit
    mfu = flops.mfu(rate / t.case.devices, table_peak)
    print(f"{t.case.label:>24} {t.heads:5d} {t.case.devices:4d} {t.params:9,d} "
          f"{1e3 * per_unit / _STEPS.value:8.1f} {t.tokens_per_unit / per_unit:9,.0f} "
          f"{rate / 1e9:8.2f} {rate / square:7.3f} {rate / shaped:7.3f} "
          f"{'n/a' if mfu is None else f'{mfu:.3f}':>6}")
  def rate_of(t: Timed) -> float:
    return t.flops_per_unit / seconds[t.case.label]

  largest = timed[len(sizes) - 1]
  sharded = next(t for t in timed if t.case.mesh != LayoutSpec.mesh)
  twin = dataclasses.replace(sharded.case, mesh=LayoutSpec.mesh)  # data parallel, same devices
  replicated = next(t for t in timed if dataclasses.replace(t.case, label=twin.label) == twin)
  rate = rate_of(largest)
  print(f"ratio_to_peak={rate / square:.3f} train_gflops={rate / 1e9:.2f} "
        f"peak_gflops={square / 1e9:.2f} model_width={largest.case.width} "
        f"model_depth={largest.case.depth} "
        f"ratio_to_model_shape_peak={rate / shaped:.3f} "
        f"sharded_to_replicated={rate_of(sharded) / rate_of(replicated):.3f}")


if __name__ == "__main__":
  app.run(cli.run_main(main), flags_parser=cli.flags_parser)
