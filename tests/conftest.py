"""Test-wide settings: 8 forced CPU devices and strict rank promotion."""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must follow the environment set-up above)

jax.config.update("jax_numpy_rank_promotion", "raise")
# Many tests build the same small programs: a persistent cache compiles each once.
jax.config.update("jax_compilation_cache_dir",
                  os.path.join(tempfile.gettempdir(), "jscale-test-xla-cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def tiny_config(**train_overrides):
  """A run config that trains in about a second: a 16-wide LM on synthetic text."""
  from jscale import config as config_lib  # noqa: PLC0415

  c = config_lib.base_config()
  c.model.width, c.model.depth, c.model.num_heads = 16, 1, 2
  c.data.name, c.data.seq_len = "synthetic_text", 16
  c.train.steps, c.train.global_batch, c.train.warmup_steps = 12, 8, 2
  c.train.eval_every, c.train.eval_batches, c.train.log_every = 6, 2, 6
  c.checkpoint.every, c.checkpoint.keep, c.checkpoint.async_save = 4, 3, False
  for key, value in train_overrides.items():
    c.train[key] = value
  return c
