"""Per-device memory of a ~800 M-parameter transformer's train step on 8 CPU devices,
replicated against FSDP: compiled, never run (nothing is allocated).

    python benchmarks/sharding_memory.py [--width=2048] [--depth=16] [--heads=16]
        [--seq_len=256] [--batch=8] [--shard_min_bytes=1048576] [--nomemory_scheduler]
        [--smoke]

The step is jscale's own (``jscale.train.step``: AdamW, clipping, jit shardings from the
model's parameter table, ``jscale.train.sharding``), compiled for three meshes of the 8
host devices: replicated (8, 1, 1), FSDP over 8 (1, 8, 1), and FSDP 4 x tensor 2
(1, 4, 2). For each, XLA's memory analysis of the compiled executable gives, per device,
its arguments (the parameters and AdamW state as the mesh splits them, plus the device's
rows of the batch, a few KB) and its peak (arguments + outputs not written over the
donated state + temporaries: gathered weights, gradients, activations). XLA CPU compiles
with its memory-minimising scheduler (``--xla_cpu_enable_concurrency_optimized_scheduler
=false``, set here before the backend starts): its default scheduler, tuned for thread
concurrency, starts every weight's all-gather at once and holds them all, so under FSDP
a device briefly holds the whole model again (``--nomemory_scheduler`` measures that;
GPU and TPU compilers schedule collectives against a memory limit).

The default size is width 2048, depth 16, 16 heads, byte vocabulary: 806.4 M parameters.
Ends with one line: ``replicated_gb``, ``fsdp_gb``, ``fsdp_tensor_gb`` (parameter +
optimizer GB per device), ``state_ratio`` (replicated / FSDP 8) and ``peak_ratio``
(replicated peak / FSDP 8 peak).
"""

import os

import jax
import smoke
from absl import app, flags

from experiments import cli
from jscale import data as data_lib
from jscale.errors import BadInput
from jscale.train import config as config_lib
from jscale.train import memory, sharding

_WIDTH = flags.DEFINE_integer("width", 2048, "Transformer width (d_model).")
_DEPTH = flags.DEFINE_integer("depth", 16, "Transformer blocks.")
_HEADS = flags.DEFINE_integer("heads", 16, "Attention heads.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 256, "Tokens per example.")
_BATCH = flags.DEFINE_integer("batch", 8, "Global batch (examples): one per device.")
_MEMORY_SCHEDULER = flags.DEFINE_bool(
    "memory_scheduler", True,
    "Compile with XLA CPU's memory-minimising scheduler (its default, tuned for thread "
    "concurrency, starts every all-gather early and holds all the gathered weights).")
_SHARD_MIN_BYTES = flags.DEFINE_integer(
    "shard_min_bytes", config_lib.base_config().train.shard_min_bytes,
    "Parameters smaller stay replicated (train.shard_min_bytes).")

DEVICES = 8
MESHES = {"replicated": (8, 1, 1), "fsdp": (1, 8, 1), "fsdp_tensor": (1, 4, 2)}


def main(argv):
  smoke.shrink({"width": 64, "depth": 2, "heads": 4, "seq_len": 32, "shard_min_bytes": 0})
  if len(argv) > 1:
    raise BadInput(f"unexpected arguments {argv[1:]}")
  # Read when the backend starts, at the first jax.devices() below.
  os.environ["XLA_FLAGS"] = " ".join(
      [os.environ.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={DEVICES}"]
      + ["--xla_cpu_enable_concurrency_optimized_scheduler=false"] * _MEMORY_SCHEDULER.value)
  jax.config.update("jax_platforms", "cpu")
  c = config_lib.base_config()
  c.model.width, c.model.depth, c.model.num_heads = _WIDTH.value, _DEPTH.value, _HEADS.value
  c.data.name, c.data.seq_len = "synthetic_text", _SEQ_LEN.value
  c.train.global_batch = _BATCH.value
  run = config_lib.resolve(c, data_lib.load(config_lib.data_spec(c)))
  print(f"transformer {_WIDTH.value}x{_DEPTH.value}, {run.model.param_counts().total:,} "
        f"parameters, batch {_BATCH.value} x {_SEQ_LEN.value} tokens, "
        f"{jax.device_count()} {jax.devices()[0].platform} devices, "
        f"{'memory-minimising' if _MEMORY_SCHEDULER.value else 'default'} XLA scheduler")
  print(f"{'layout':>12} {'mesh':>10} {'state GB':>9} {'temp GB':>8} {'peak GB':>8}  "
        "(per device)")
  measured = {}
  for name, mesh in MESHES.items():
    layout = sharding.make_layout(sharding.LayoutSpec(mesh, _SHARD_MIN_BYTES.value))
    used = memory.compiled_bytes(run, layout)
    measured[name] = used
    print(f"{name:>12} {str(mesh):>10} {used.arguments / 1e9:9.3f} "
          f"{used.temporaries / 1e9:8.3f} {used.peak / 1e9:8.3f}")
  replicated, fsdp = measured["replicated"], measured["fsdp"]
  print(f"replicated_gb={replicated.arguments / 1e9:.4f} fsdp_gb={fsdp.arguments / 1e9:.4f} "
        f"fsdp_tensor_gb={measured['fsdp_tensor'].arguments / 1e9:.4f} "
        f"state_ratio={replicated.arguments / fsdp.arguments:.2f} "
        f"peak_ratio={replicated.peak / fsdp.peak:.2f}")


if __name__ == "__main__":
  app.run(cli.run_main(main), flags_parser=cli.flags_parser)
