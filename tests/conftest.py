"""Test-wide settings (8 forced CPU devices, strict rank promotion), the fixtures many
modules use, and what a test does when something it needs is missing. Plain helpers
(entry points in subprocesses, the smoke config, record readers) are in helpers.py."""

import os
import pathlib

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # after the environment set-up above
import numpy as np
from helpers import XLA_CACHE, ForkServer, quiet

from jscale import data as data_lib
from jscale.train import build_run, make_train_step, train
from jscale.train import config as config_lib
from jscale.train.restore import compression_for
from jscale.train.sharding import data_parallel

jax.config.update("jax_numpy_rank_promotion", "raise")
# Many tests build the same small programs: a persistent cache compiles each once.
jax.config.update("jax_compilation_cache_dir", XLA_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


@pytest.fixture(scope="session")
def dataset():
  """The synthetic text tiny_config trains on (built in memory, no download)."""
  return data_lib.load(data_lib.DataSpec(name="synthetic_text", seq_len=16))


@pytest.fixture(scope="session")
def fork_server(tmp_path_factory):
  """The entry points run as ``python -m`` runs them, forked from one process (see
  ``helpers.ForkServer``)."""
  server = ForkServer(tmp_path_factory.mktemp("fork-server"))
  yield server
  server.close()


def tiny_config(width=16, **train_overrides):
  """A run config that trains in about a second: a small LM on synthetic text."""
  c = config_lib.base_config()
  c.model.width, c.model.depth, c.model.num_heads = width, 1, 2
  c.data.name, c.data.seq_len = "synthetic_text", 16
  c.train.steps, c.train.global_batch, c.train.warmup_steps = 12, 8, 2
  c.train.eval_every, c.train.eval_batches, c.train.log_every = 6, 2, 6
  c.checkpoint.every, c.checkpoint.keep, c.checkpoint.async_save = 4, 3, False
  for key, value in train_overrides.items():
    c.train[key] = value
  return c


def train_config(config, dataset, folder):
  """(result, RunSpec) of ``config`` trained in ``folder`` on one device, as
  ``jscale.train`` alone trains it: the run writes its own folder, a distillation teacher
  is restored from its run folder."""
  run, dp = config_lib.resolve(config, dataset), data_parallel(1)
  return train(run, dataset, folder, dp=dp, compression=compression_for(run, folder, dp),
               progress=quiet), run


def train_alone(run, dataset, dp, steps=None):
  """Losses and final params of ``run`` from the plain jitted single-run step: the
  reference other training paths are compared with."""
  built = build_run(run)
  step_fn = make_train_step(built, dp)
  state = jax.device_put(built.init(run.train.seed), dp.replicated)
  losses = []
  for step in range(run.train.steps if steps is None else steps):
    batch = dp.shard_batch(dataset.train_batch(step, run.train.global_batch, run.train.seed))
    state, metrics = step_fn(state, batch)
    losses.append(float(metrics["loss"]))
  return np.array(losses), jax.device_get(state.params)


# What the suite needs but does not create: the fitters' shared CSVs (../shared/data), the
# corpora `make setup` fetches, and root with private mount namespaces (the read-only and
# full-storage tests). A missing one skips on a developer's machine but fails where it is
# promised, so a CI run cannot pass by skipping.
REQUIRE_VAR = "JSCALE_REQUIRE_SHARED_DATA"


def requirements_enforced() -> bool:
  """True in CI (``$CI`` set, not "false"/"0") or with ``JSCALE_REQUIRE_SHARED_DATA=1``."""
  ci = os.environ.get("CI", "").strip().lower()
  return os.environ.get(REQUIRE_VAR) == "1" or ci not in ("", "false", "0")


def missing_requirement(message: str):
  """Skips the calling test, or fails it where requirements are enforced."""
  if requirements_enforced():
    pytest.fail(f"{message} ({REQUIRE_VAR}=1 or CI is set, so this fails instead of"
                " skipping)", pytrace=False)
  pytest.skip(message)


def require_data(path, source: str = "see SOURCES.md in that folder"):
  """``path`` if it exists, else ``missing_requirement`` naming it and where it comes from."""
  path = pathlib.Path(path)
  if not path.exists():
    missing_requirement(f"data not found at {path} ({source})")
  return path
