"""Same-shape runs trained one after another vs together, and the compilation cache.

    python benchmarks/sweep_efficiency.py [--width=64] [--runs=8] [--steps=30]
        [--host_devices=8]

In one run: ``--runs`` small LMs of one shape (depth 2, 128-byte sequences, batch 32;
seeds and learning rates differ) are trained end to end -- checkpoints, metrics.jsonl,
evaluation, result records -- first one after another with ``jscale.train.train``, then
together with ``jscale.train.train_group``, the same steps each; both wall times
include compilation, as a sweep pays it, with a (fresh) persistent compilation cache on,
as the sweep entry point has it: the sequential runs compile once and load the rest.
Then the step alone is timed both ways (``measure_batching``, after compilation), and
two fresh processes compile the batched step against one persistent compilation cache:
the second finds the first's entry.
On CPU the process forces ``--host_devices`` host devices (set before jax starts); both
ways then use the defaults of a sweep in that process: the sequential runs are data
parallel over all devices, the batched group spreads its runs over them. The step-only
timing is also given on one device. Ends with one key=value line.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

import smoke
from absl import app, flags

_WIDTH = flags.DEFINE_integer("width", 64, "Model width (d_model).")
_RUNS = flags.DEFINE_integer("runs", 8, "Runs of the one shape (K).")
_STEPS = flags.DEFINE_integer("steps", 30, "Training steps of every run.")
_HOST_DEVICES = flags.DEFINE_integer("host_devices", 8, "Forced CPU devices (CPU only).")
_DATA = flags.DEFINE_string("data", "synthetic_text", "Corpus (data.name).")
_COMPILE_PROBE = flags.DEFINE_string("compile_probe", "", "Internal: cache dir of a probe.")


def _runs(dataset):
  from jscale.train import config as config_lib
  runs = []
  for seed in range(_RUNS.value):
    c = config_lib.base_config()
    c.model.width, c.model.depth, c.model.num_heads = _WIDTH.value, 2, 4
    c.data.name, c.data.seq_len = _DATA.value, 128
    c.train.seed, c.train.learning_rate = seed, 1e-3 * 1.5**seed
    c.train.steps, c.train.global_batch, c.train.warmup_steps = _STEPS.value, 32, 5
    c.train.eval_every = c.train.log_every = c.checkpoint.every = _STEPS.value
    runs.append(config_lib.resolve(c, dataset))
  return runs


def _compile_seconds(cache_dir: str) -> float:
  """Seconds to lower and compile the batched step in this (fresh) process."""
  import jax

  from experiments.cli import enable_compilation_cache
  from jscale import data as data_lib
  from jscale.train import batched, build_run, grouping
  from jscale.train.sharding import data_parallel
  enable_compilation_cache(cache_dir)
  dataset = data_lib.load(data_lib.DataSpec(name=_DATA.value, seq_len=128))
  runs = _runs(dataset)
  dp = data_parallel()
  layout = grouping.make_layout(dp, len(runs))
  run = runs[0]
  state = jax.eval_shape(jax.vmap(build_run(run).init), jax.numpy.arange(layout.slots))
  batch = jax.eval_shape(lambda: {k: jax.numpy.zeros((layout.slots,) + v.shape, v.dtype)
                                  for k, v in dataset.train_batch(0, 32, 0).items()})
  floats = jax.ShapeDtypeStruct((layout.slots, run.train.steps + 1), jax.numpy.float32)
  vector = jax.ShapeDtypeStruct((layout.slots,), jax.numpy.float32)
  flags_ = jax.ShapeDtypeStruct((layout.slots,), bool)
  step = batched.make_group_step(run, layout)
  start = time.perf_counter()
  step.lower(state, batch, floats, vector, flags_).compile()
  return time.perf_counter() - start


def _probe(cache_dir: str) -> float:
  command = [sys.executable, __file__, f"--compile_probe={cache_dir}",
             f"--width={_WIDTH.value}", f"--runs={_RUNS.value}", f"--steps={_STEPS.value}",
             f"--host_devices={_HOST_DEVICES.value}", f"--data={_DATA.value}"]
  out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
  return float(out.stdout.strip().splitlines()[-1])


def main(argv):
  smoke.shrink({"width": 8, "runs": 2, "steps": 6})
  del argv
  if _COMPILE_PROBE.value:
    print(_compile_seconds(_COMPILE_PROBE.value))
    return
  import jax

  from jscale import data as data_lib

  dataset = data_lib.load(data_lib.DataSpec(name=_DATA.value, seq_len=128))
  runs = _runs(dataset)
  print(f"{len(runs)} runs: width {_WIDTH.value}, depth 2, seq 128, batch 32, "
        f"{_STEPS.value} steps each; {jax.device_count()} {jax.devices()[0].platform} devices "
        f"({os.cpu_count()} cores)", flush=True)
  tmp = tempfile.mkdtemp()  # the cache must outlive every compilation of this process
  try:
    _compare(runs, dataset, tmp)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _compare(runs, dataset, tmp: str) -> None:
  from experiments.cli import enable_compilation_cache
  from jscale.train import batched, train, train_group
  from jscale.train.sharding import data_parallel

  enable_compilation_cache(f"{tmp}/xla")

  def quiet(progress):
    del progress
  start = time.perf_counter()
  alone = [train(run, dataset, f"{tmp}/seq/{i}", dp=data_parallel(), progress=quiet)
           for i, run in enumerate(runs)]
  sequential = time.perf_counter() - start
  start = time.perf_counter()
  together = train_group(runs, dataset, [f"{tmp}/batched/{i}" for i in range(len(runs))],
                         dp=data_parallel(), progress=[quiet] * len(runs))
  batched_seconds = time.perf_counter() - start
  worst = max(abs(a["val_loss"] - b["val_loss"]) / a["val_loss"] for a, b in zip(alone, together))
  print(f"end to end (compilation included): sequential {sequential:.1f}s, batched "
        f"{batched_seconds:.1f}s, speedup {sequential / batched_seconds:.2f}x; "
        f"largest val_loss difference {worst:.1e} (relative)", flush=True)

  steps = {}
  for label, dp, run_devices in (("runs over devices", data_parallel(), 0),
                                 ("one device", data_parallel(1), 1)):
    m = batched.measure_batching(runs, dataset, dp, steps=5, run_devices=run_devices)
    steps[label] = m
    print(f"step only ({label}, {m.run_devices} run devices): sequential "
          f"{m.sequential_seconds * 1e3:.0f} ms, batched {m.batched_seconds * 1e3:.0f} ms per "
          f"step of all runs, speedup {m.speedup:.2f}x", flush=True)

  with tempfile.TemporaryDirectory() as cache:
    first, second = _probe(cache), _probe(cache)
  print(f"compilation of the batched step: {first:.2f}s in a fresh process with an empty "
        f"cache, {second:.2f}s in the next process (saved {first - second:.2f}s)", flush=True)
  print(f"batched_speedup={sequential / batched_seconds:.2f} sequential_seconds={sequential:.1f} "
        f"batched_seconds={batched_seconds:.1f} "
        f"step_speedup_runs_over_devices={steps['runs over devices'].speedup:.2f} "
        f"step_speedup_one_device={steps['one device'].speedup:.2f} "
        f"cache_compile_seconds_first={first:.2f} cache_compile_seconds_second={second:.2f}")


if __name__ == "__main__":
  if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    count = next((a.split("=")[1] for a in sys.argv if a.startswith("--host_devices=")), "8")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={count}").strip()
  from experiments import cli
  app.run(cli.run_main(main), flags_parser=cli.flags_parser)
