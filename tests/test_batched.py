"""Model-batched training: equal to training each run alone, per-run files, resume."""

import json
import os
import subprocess
import sys
import textwrap

import conftest
import jax
import numpy as np
import pytest
from conftest import train_alone
from helpers import cli_env, metrics_records, quiet, stop_on_call

from jscale.train import batched, build_run, grouping, train, train_group
from jscale.train import config as config_lib
from jscale.train.checkpoint import Checkpointer
from jscale.train.optim import learning_rate_schedule
from jscale.train.sharding import data_parallel


def tiny_config(width=16, **train_overrides):
  c = conftest.tiny_config(width, **{"steps": 8, "eval_every": 4, "log_every": 4,
                                     **train_overrides})
  c.checkpoint.every = 3
  return c


# Three runs differing in everything a group may differ in.
VARIANTS = (dict(seed=0),
            dict(seed=1, learning_rate=1e-3, steps=5, warmup_steps=3, schedule="linear",
                 eval_every=5),
            dict(seed=2, weight_decay=0.0, schedule="constant", warmup_steps=0))


@pytest.fixture(scope="module")
def runs(dataset):
  return [config_lib.resolve(tiny_config(**v), dataset) for v in VARIANTS]


def final_params(folder, run):
  abstract = jax.eval_shape(build_run(run).init, 0)
  with Checkpointer(folder / "checkpoints", run.checkpoint, read_only=True) as ckpt:
    state, meta = ckpt.restore(ckpt.steps()[-1], abstract)
  assert meta["step"] == run.train.steps
  return jax.device_get(state.params)


def assert_trees_close(a, b, rtol=1e-5):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-6)


def test_group_runs_by_shape_sorted_by_steps(dataset):
  specs = [config_lib.resolve(c, dataset) for c in (
      tiny_config(steps=9), tiny_config(width=24), tiny_config(steps=3, seed=4),
      tiny_config(learning_rate=1e-2), tiny_config(grad_accum=2))]
  assert grouping.group_runs(specs) == [[2, 3, 0], [1], [4]]
  assert grouping.group_runs(specs, max_size=2) == [[0], [1], [2, 3], [4]]


def test_mixed_shapes_are_a_one_line_error(dataset):
  mixed = [config_lib.resolve(tiny_config(width=w), dataset) for w in (16, 24)]
  with pytest.raises(ValueError, match="runs must share one shape key") as e:
    batched.check_group(mixed)
  assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match="run_devices must be a divisor of the device count 8"):
    grouping.make_layout(data_parallel(8), 3, run_devices=3)


def test_layout_spreads_runs_before_data():
  layout = grouping.make_layout(data_parallel(8), 3)
  assert (layout.run_devices, layout.slots) == (2, 4)  # 2 run devices x 4 data devices
  assert grouping.make_layout(data_parallel(8), 8).run_devices == 8
  assert grouping.make_layout(data_parallel(1), 5).slots == 5


def test_learning_rate_table_is_the_schedule_held_after_the_end(runs):
  t = runs[1].train
  table = batched.learning_rate_table(t, 9)
  schedule = learning_rate_schedule(t)
  np.testing.assert_allclose(table[:6], [float(schedule(s)) for s in range(6)], rtol=1e-6)
  np.testing.assert_array_equal(table[5:], table[5])


@pytest.mark.slow
def test_group_equals_each_run_alone(tmp_path, dataset, runs):
  dp = data_parallel(1)
  dirs = [tmp_path / f"run{i}" for i in range(len(runs))]
  results = train_group(runs, dataset, dirs, dp=dp, progress=[quiet] * len(runs))
  for run, folder, result in zip(runs, dirs, results):
    losses, params = train_alone(run, dataset, dp)
    logged = metrics_records(folder, "train")
    assert [r["step"] for r in logged] == list(range(1, run.train.steps + 1))
    np.testing.assert_allclose([r["loss"] for r in logged], losses, rtol=1e-5)
    assert_trees_close(final_params(folder, run), params)
    assert result["status"] == "done" and result["steps"] == run.train.steps
    assert result["batched_runs"] == len(runs)
  alone = train(runs[1], dataset, tmp_path / "alone", dp=dp, progress=quiet)
  assert set(alone) | {"batched_runs"} == set(results[1])
  assert [r["step"] for r in metrics_records(dirs[1], "eval")] == [
      r["step"] for r in metrics_records(tmp_path / "alone", "eval")]
  np.testing.assert_allclose(results[1]["val_loss"], alone["val_loss"], rtol=1e-5)
  assert results[1]["tokens"] == alone["tokens"] == 5 * 8 * 16


@pytest.mark.slow
def test_preempted_group_resumes_batched_or_alone(tmp_path, dataset, runs):
  dp = data_parallel(1)
  straight = train_group(runs, dataset, [tmp_path / f"s{i}" for i in range(3)],
                                 dp=dp, progress=[quiet] * 3)
  dirs = [tmp_path / f"r{i}" for i in range(3)]
  first = train_group(runs, dataset, dirs, dp=dp, should_stop=stop_on_call(4),
                              progress=[quiet] * 3)
  assert [r["status"] for r in first] == ["preempted"] * 3
  assert [r["step"] for r in first] == [4, 4, 4]
  # Run 2 resumes alone with the single-run loop; runs 0 and 1 resume as a group.
  alone = train(runs[2], dataset, dirs[2], dp=dp, progress=quiet)
  resumed = train_group(runs[:2], dataset, dirs[:2], dp=dp, progress=[quiet] * 2)
  for before, after, folder_s, folder_r in zip(straight, resumed + [alone],
                                               [tmp_path / f"s{i}" for i in range(3)], dirs):
    assert after["status"] == "done"
    np.testing.assert_allclose(after["val_loss"], before["val_loss"], rtol=1e-5)
    np.testing.assert_allclose(after["train_loss"], before["train_loss"], rtol=1e-5)
    a, b = metrics_records(folder_s, "train"), metrics_records(folder_r, "train")
    assert [r["step"] for r in a] == [r["step"] for r in b]


def test_diverged_member_stops_alone(tmp_path, dataset):
  specs = [config_lib.resolve(tiny_config(steps=4, eval_every=4, clip_norm=0.0, **v), dataset)
           for v in (dict(), dict(learning_rate=1e30, warmup_steps=0))]
  results = train_group(specs, dataset, [tmp_path / "ok", tmp_path / "bad"],
                                dp=data_parallel(1), progress=[quiet] * 2)
  assert results[0]["status"] == "done" and "val_loss" in results[0]
  assert results[1]["status"] == "diverged" and 1 <= results[1]["diverged_step"] <= 4
  assert "val_loss" not in results[1]


def _run_isolated(code: str, timeout: float, env_extra=None) -> str:
  """Runs ``code`` in a fresh interpreter under a timeout: multi-device XLA CPU
  collectives have aborted whole processes before, and must not take pytest along."""
  env = cli_env(8, **(env_extra or {}))
  env["PYTHONPATH"] += os.pathsep + os.path.dirname(os.path.abspath(__file__))  # the helpers
  done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  return done.stdout


@pytest.mark.slow
def test_runs_over_devices_and_data_over_devices_equal_one_device(tmp_path):
  out = _run_isolated(f"""
      import json, jax
      from jscale import data as data_lib
      from jscale.train import config as config_lib
      from jscale.train.sharding import data_parallel
      from jscale.train import train_group
      from helpers import metrics_records, quiet
      from test_batched import tiny_config
      import pathlib
      ds = data_lib.load(data_lib.DataSpec(name="synthetic_text", seq_len=16))
      runs = [config_lib.resolve(tiny_config(seed=s, learning_rate=1e-3 * (s + 1), steps=3),
                                 ds) for s in range(2)]
      losses = {{}}
      for devices, run_devices in ((1, 1), (2, 2), (2, 1), (4, 2)):
        dirs = [pathlib.Path({str(tmp_path)!r}) / f"{{devices}}-{{run_devices}}-{{i}}"
                for i in range(2)]
        train_group(runs, ds, dirs, dp=data_parallel(devices),
                            run_devices=run_devices, progress=[quiet] * 2)
        losses[f"{{devices}}x{{run_devices}}"] = [[r["loss"] for r in metrics_records(d, "train")]
                                                for d in dirs]
      print(json.dumps(losses))
      """, timeout=300)
  losses = json.loads(out.strip().splitlines()[-1])
  for layout, values in losses.items():
    np.testing.assert_allclose(values, losses["1x1"], rtol=1e-5, err_msg=layout)


@pytest.mark.slow
def test_compilation_cache_is_written_and_reused(tmp_path):
  code = f"""
      import time, jax, jax.numpy as jnp
      from experiments.cli import enable_compilation_cache
      enable_compilation_cache({str(tmp_path)!r})
      start = time.perf_counter()
      jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).block_until_ready()
      print(time.perf_counter() - start)
      """
  _run_isolated(code, timeout=120)
  entries = list(tmp_path.iterdir())
  assert entries, "the first process wrote no cache entry"
  _run_isolated(code, timeout=120)
  assert sorted(tmp_path.iterdir()) == sorted(entries)  # a hit adds nothing
