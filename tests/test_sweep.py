"""Sweeps through the real entry point: plan, resume after SIGKILL/SIGTERM, workers, errors."""

import csv
import json
import logging
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from helpers import ROOT, SMOKE, XLA_CACHE, cli_env, run_command, smoke_config, sweep_command

from jscale import data as data_lib
from jscale.errors import BadInput
from jscale.sweep import batching
from jscale.sweep import plan as plan_lib
from jscale.sweep import spec as spec_lib
from jscale.sweep.runner import SweepOptions, run_sweep
from jscale.train import config as config_lib
from jscale.train.sharding import data_parallel

ENV = cli_env(1)  # one device


def run(cmd, timeout=300):
  return run_command(cmd, env=ENV, timeout=timeout)


def test_plan_is_the_product_of_axes_with_stable_ids():
  c = smoke_config()
  c.sweep.widths, c.sweep.depths, c.sweep.seeds = (8, 16), (1, 2), (0, 1)
  dataset = data_lib.load(config_lib.data_spec(c))
  def ids():
    return [r.run_id for r in plan_lib.plan_runs(c, spec_lib.sweep_spec(c.sweep), dataset)]

  runs = plan_lib.plan_runs(c, spec_lib.sweep_spec(c.sweep), dataset)
  assert len(runs) == 8 and len({r.run_id for r in runs}) == 8
  assert ids() == [r.run_id for r in runs]
  flops = [r.flops for r in runs]
  assert flops == sorted(flops)
  c.train.log_every = 3  # bookkeeping only: same runs
  assert set(ids()) == {r.run_id for r in runs}
  c.train.learning_rate = 1e-3  # changes the numbers: new runs
  assert not set(ids()) & {r.run_id for r in runs}


def test_isoflop_plan_trains_each_size_for_the_budget():
  c = smoke_config()
  c.sweep.budgets, c.sweep.min_steps = (4e8, 8e8), 1
  dataset = data_lib.load(config_lib.data_spec(c))
  runs = plan_lib.plan_runs(c, spec_lib.sweep_spec(c.sweep), dataset)
  for r in runs:
    assert r.flops == pytest.approx(r.budget, rel=0.1)
  assert {r.budget for r in runs} == {4e8, 8e8}


def test_hours_warning_says_how_far_over():
  from jscale.sweep.preview import hours_warning  # noqa: PLC0415
  assert hours_warning(100.0, 0.0) is None and hours_warning(3600.0, 1.0) is None
  assert "(2.00x)" in hours_warning(7200.0, 1.0)


def test_worker_flag_parsing():
  assert plan_lib.parse_worker("1/3") == (1, 3)
  for bad in ("3/3", "a/b", "1"):
    with pytest.raises(ValueError, match="--worker must look like i/K"):
      plan_lib.parse_worker(bad)


@pytest.fixture
def jscale_log(caplog, monkeypatch):
  """The "jscale" logger's INFO lines (an entry point may have stopped their propagation)."""
  monkeypatch.setattr(logging.getLogger("jscale"), "propagate", True)
  caplog.set_level(logging.INFO, logger="jscale")
  return caplog


def _dry_run(workdir, config, log) -> str:
  log.clear()
  options = SweepOptions(str(workdir), dry_run=True, num_devices=1)
  assert run_sweep(config, options) == "done"
  return log.text


def test_dry_run_plans_and_trains_nothing(tmp_path, jscale_log):
  shown = _dry_run(tmp_path / "w", smoke_config(), jscale_log)
  assert "3 runs" in shown and "estimated training time" in shown and "WARNING" not in shown
  assert not (tmp_path / "w").exists()
  over = smoke_config()
  over.sweep.max_hours = 1e-6
  assert "over the budget sweep.max_hours=1e-06" in _dry_run(tmp_path / "w", over, jscale_log)
  refused = smoke_config()  # over the FLOP limit the plan is refused, dry run or not
  refused.sweep.max_flops = 1e8
  with pytest.raises(BadInput, match="over sweep.max_flops=1e[+]08"):
    _dry_run(tmp_path / "w", refused, jscale_log)
  assert not (tmp_path / "w").exists()


def _final_params(workdir):
  from jscale.train.folder import read_config as load_run_config  # noqa: PLC0415
  from jscale.train.restore import restore_params  # noqa: PLC0415
  out = {}
  for folder in sorted((workdir / "runs").iterdir()):
    c = load_run_config(folder)
    spec = config_lib.resolve(c, data_lib.load(config_lib.data_spec(c)))
    params, step = restore_params(folder, spec, data_parallel(1))
    out[folder.name] = (step, [np.asarray(x) for x in jax.tree.leaves(params)])
  return out


# A kill at a chosen moment, deterministically: the sweep runs in-process with one
# function patched to SIGKILL the process at its n-th call.
KILLER = textwrap.dedent("""
    import os, signal, sys
    target, attribute, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
    module = __import__(target, fromlist=["_"])
    owner = module
    *path, name = attribute.split(".")
    for part in path:
      owner = getattr(owner, part)
    original, calls = getattr(owner, name), []
    def patched(*args, **kwargs):
      result = original(*args, **kwargs)
      calls.append(1)
      if len(calls) == nth:
        os.kill(os.getpid(), signal.SIGKILL)
      return result
    setattr(owner, name, patched)
    from absl import app
    from experiments import sweep
    from experiments import cli
    sys.argv = [sys.argv[0]] + sys.argv[4:]
    app.run(cli.run_main(sweep.main), flags_parser=cli.flags_parser)
""")

KILL_MOMENTS = {
    # 2nd run, its 6th logged step: in the middle of training.
    "during_a_run": ("jscale.train.metrics", "MetricsLog.append", 12 + 2 + 6),
    # After run 1's result.json, before the table is rebuilt and run 2 starts.
    "between_runs": ("jscale.sweep.runner", "write_results_csv", 1),
    # An asynchronous save has been started and is still writing.
    "during_a_checkpoint_save": ("jscale.train.checkpoint", "Checkpointer.save", 5),
}


@pytest.mark.slow
def test_sigkill_at_three_moments_then_resume_equals_uninterrupted(tmp_path):
  straight = tmp_path / "straight"
  assert run(sweep_command(straight, "--nofit")).returncode == 0
  expected_csv, expected_params = (straight / "results.csv").read_text(), _final_params(straight)
  for moment, (module, attribute, nth) in KILL_MOMENTS.items():
    workdir = tmp_path / moment
    killed = run([sys.executable, "-c", KILLER, module, attribute, str(nth), SMOKE,
                  f"--workdir={workdir}", f"--compilation_cache={XLA_CACHE}",
                  "--nofit"])
    assert killed.returncode == -signal.SIGKILL, (moment, killed.stderr[-2000:])
    resumed = run(sweep_command(workdir, "--nofit"))
    assert resumed.returncode == 0, (moment, resumed.stderr[-2000:])
    assert (workdir / "results.csv").read_text() == expected_csv, moment
    params = _final_params(workdir)
    assert params.keys() == expected_params.keys()
    for run_id, (step, leaves) in expected_params.items():
      assert params[run_id][0] == step
      for a, b in zip(params[run_id][1], leaves):
        np.testing.assert_array_equal(a, b, err_msg=f"{moment} {run_id}")


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_zero_then_resumes(tmp_path):
  workdir = tmp_path / "w"
  proc = subprocess.Popen(sweep_command(workdir, "--nofit", "--config.train.steps=400",
                                    "--config.sweep.widths=(16,)"),
                          cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  for line in proc.stdout:
    if "step 8/400" in line:
      proc.send_signal(signal.SIGTERM)
      break
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  assert "preempted" in out
  run_folder = next((workdir / "runs").iterdir())
  steps = sorted(int(p.name) for p in (run_folder / "checkpoints").iterdir() if p.name.isdigit())
  assert steps and steps[-1] < 400 and not (run_folder / "result.json").exists()
  resumed = run(sweep_command(workdir, "--nofit", "--config.train.steps=400",
                          "--config.sweep.widths=(16,)"))
  assert resumed.returncode == 0 and f"resumed at step {steps[-1]}" in resumed.stdout
  assert json.loads((run_folder / "result.json").read_text())["status"] == "done"


@pytest.mark.slow
def test_two_workers_share_a_workdir_and_train_each_run_once(tmp_path):
  workdir = tmp_path / "w"
  procs = [subprocess.Popen(sweep_command(workdir, f"--worker={i}/2", "--nofit"), cwd=ROOT,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=300) for p in procs]
  assert all(p.returncode == 0 for p in procs), [o[1][-1000:] for o in outputs]
  started = [{line.split()[2] for line in out.splitlines() if " start " in line}
             for out, _ in outputs]
  assert started[0] and started[1] and not started[0] & started[1]
  assert len(started[0] | started[1]) == 3
  for folder in (workdir / "runs").iterdir():
    records = map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps == list(range(1, 13))
  assert len((workdir / "results.csv").read_text().splitlines()) == 4


@pytest.mark.slow
def test_diverged_run_is_recorded_and_the_sweep_goes_on(tmp_path):
  workdir = tmp_path / "w"
  result = run(sweep_command(workdir, "--nofit", "--config.sweep.learning_rates=(0.003,1e30)",
                         "--config.train.clip_norm=0.0", "--config.sweep.widths=(8,)"))
  assert result.returncode == 0, result.stderr[-2000:]
  rows = (workdir / "results.csv").read_text().splitlines()[1:]
  statuses = sorted(r.split(",")[2] for r in rows)
  assert statuses == ["diverged", "done"]


@pytest.mark.slow
def test_editing_an_incomparable_field_is_refused(tmp_path):
  workdir = tmp_path / "w"
  assert run(sweep_command(workdir, "--nofit", "--config.sweep.widths=(8,)")).returncode == 0
  grown = run(sweep_command(workdir, "--nofit", "--config.sweep.widths=(8,16)"))
  assert grown.returncode == 0 and "1 finished already" in grown.stdout
  changed = run(sweep_command(workdir, "--nofit", "--config.data.seq_len=64"))
  assert changed.returncode == 2
  assert "data.seq_len is 64 but the runs in" in changed.stderr


def test_compression_axes_and_students_are_planned_after_their_teacher():
  c = smoke_config()
  c.sweep.widths = (8, 16)
  c.sweep.sparsities, c.sweep.precisions = (0.0, 0.5), ("float32", "int8-qat")
  c.sweep.distill_from_largest = True
  dataset = data_lib.load(config_lib.data_spec(c))
  runs = plan_lib.plan_runs(c, spec_lib.sweep_spec(c.sweep), dataset)
  assert len(runs) == 2 * 2 * 2 + 1
  passes = sorted(tuple(r.spec.compress.order) for r in runs)
  assert passes.count(("prune", "qat")) == 2 and passes.count(("distill",)) == 1
  student = runs[-1]
  teacher = next(r for r in runs if r.run_id == student.teacher_id)
  assert student.spec.compress.distill.teacher == f"run:{teacher.run_id}"
  assert teacher.spec.model.width == 16 and not teacher.spec.compress.order
  assert student.spec.model.width == 8


@pytest.mark.slow
def test_batched_sweep_matches_one_by_one(tmp_path):
  tables = {}
  for mode in ("always", "never"):
    workdir = tmp_path / mode
    result = run(sweep_command(workdir, "--nofit", f"--batch_runs={mode}",
                           "--config.sweep.seeds=(0,1,2)", "--config.sweep.widths=(8,)"))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = (workdir / "results.csv").read_text().splitlines()
    header = lines[0].split(",")
    tables[mode] = {row.split(",")[0]: dict(zip(header, row.split(","))) for row in lines[1:]}
  assert tables["always"].keys() == tables["never"].keys() and len(tables["never"]) == 3
  for run_id, row in tables["never"].items():
    for column in ("train_loss", "val_loss", "tokens", "flops"):
      np.testing.assert_allclose(float(tables["always"][run_id][column]), float(row[column]),
                                 rtol=1e-5, err_msg=f"{run_id} {column}")
  batched = json.loads(next((tmp_path / "always" / "runs").iterdir()).joinpath(
      "result.json").read_text())
  assert batched["batched_runs"] == 3


# The flags of _wsd_config. Every run trains alone, as the independent runs it is compared
# with do: batched and alone agree to rtol 1e-5, not bit for bit.
WSD = ("--config.train.schedule=wsd", "--config.sweep.widths=(8,16)",
       "--config.sweep.tokens=(2560,3840,5120)", "--config.sweep.min_steps=1",
       "--batch_runs=never")


def test_wsd_token_axis_plans_one_trunk_per_size_and_branches():
  c = smoke_config()
  c.train.schedule, c.train.cooldown_fraction = "wsd", 0.2
  c.sweep.widths, c.sweep.tokens, c.sweep.min_steps = (8, 16), (2560, 3840, 5120), 1
  runs = plan_lib.plan_runs(c, spec_lib.sweep_spec(c.sweep), data_lib.load(
      config_lib.data_spec(c)))
  trunks = [r for r in runs if r.is_trunk]
  branches = [r for r in runs if r.trunk_id]
  assert len(trunks) == 2 and len(branches) == 6
  for trunk in trunks:
    mine = [r for r in branches if r.trunk_id == trunk.run_id]
    assert sorted(r.branch_step for r in mine) == [8, 12, 16]  # 10, 15, 20 steps - 20%
    assert trunk.spec.train.schedule == "constant" and trunk.spec.train.steps == 16
    assert trunk.spec.checkpoint.keep_steps == (8, 12, 16)
    assert all(r.spec.model == trunk.spec.model for r in mine)
    assert runs.index(trunk) < min(runs.index(r) for r in mine)  # trained first
  independent = sum(r.flops for r in branches)
  assert sum(r.cost_flops for r in runs) == pytest.approx(independent * (16 + 2 + 3 + 4) / 45)
  c.train.schedule = "cosine"  # no trunks: every run trains its whole length
  assert not any(r.is_trunk or r.trunk_id for r in plan_lib.plan_runs(
      c, spec_lib.sweep_spec(c.sweep), data_lib.load(config_lib.data_spec(c))))


def _wsd_config():
  c = smoke_config()
  c.train.schedule = "wsd"
  c.sweep.widths, c.sweep.tokens, c.sweep.min_steps = (8, 16), (2560, 3840, 5120), 1
  return c


def test_dry_run_shows_trunks_branches_and_their_flops(tmp_path, jscale_log):
  shown = _dry_run(tmp_path / "w", _wsd_config(), jscale_log)
  assert shown.count("  trunk") == 2 and shown.count("branch of") == 6
  assert "as independent runs (1.80x)" in shown


@pytest.mark.slow
def test_trunks_and_branches_survive_sigkill_and_equal_independent_runs(tmp_path):
  straight = tmp_path / "straight"
  done = run(sweep_command(straight, "--nofit", *WSD))
  assert done.returncode == 0, done.stderr[-2000:]
  rows = list(csv.DictReader((straight / "results.csv").open()))
  trunks = {r["trunk"] for r in rows if r["trunk"]}
  assert len(trunks) == 2 and len(rows) == 8
  expected = (straight / "results.csv").read_text()
  moments = {"during_a_trunk": ("jscale.train.metrics", "MetricsLog.append", 6),
             "as_a_branch_starts": ("jscale.train.loop", "Member._branch", 2)}
  for moment, (module, attribute, nth) in moments.items():
    workdir = tmp_path / moment
    killed = run([sys.executable, "-c", KILLER, module, attribute, str(nth), SMOKE,
                  f"--workdir={workdir}", f"--compilation_cache={XLA_CACHE}",
                  "--nofit", *WSD])
    assert killed.returncode == -signal.SIGKILL, (moment, killed.stderr[-2000:])
    resumed = run(sweep_command(workdir, "--nofit", *WSD))
    assert resumed.returncode == 0, (moment, resumed.stderr[-2000:])
    assert (workdir / "results.csv").read_text() == expected, moment
  # The same runs trained independently (no trunk): the same numbers.
  alone = tmp_path / "alone"
  for row in (r for r in rows if r["trunk"]):
    widths = f"--config.sweep.widths=({row['width']},)"
    tokens = f"--config.sweep.tokens=({row['tokens']},)"
    one = run(sweep_command(alone / row["run_id"], "--nofit", "--config.train.schedule=wsd",
                            widths, tokens, "--config.sweep.min_steps=1", "--batch_runs=never"))
    assert one.returncode == 0, one.stderr[-2000:]
    again = [r for r in csv.DictReader((alone / row["run_id"] / "results.csv").open())
             if r["trunk"]]
    assert again[0]["run_id"] == row["run_id"] and again[0]["val_loss"] == row["val_loss"]


def test_batching_is_decided_by_shapes_and_devices_and_a_resume_keeps_the_record():
  c = smoke_config()
  c.sweep.widths, c.sweep.seeds = (8,), (0, 1, 2)
  dataset = data_lib.load(config_lib.data_spec(c))
  runs = plan_lib.plan_runs(c, spec_lib.sweep_spec(c.sweep), dataset)
  cpu, h100 = {}, {}
  assert [len(u) for u in batching.training_units(runs, "auto", "cpu", 8, cpu)] == [1, 1, 1]
  assert [len(u) for u in batching.training_units(runs, "auto", "NVIDIA H100 80GB HBM3", 1,
                                                  h100)] == [3]  # latency-bound on a GPU
  assert list(cpu.values()) == [False] and list(h100.values()) == [True]
  # The same inputs decide the same way; a recorded decision wins over the rule.
  assert batching.training_units(runs, "auto", "cpu", 8, {}) == batching.training_units(
      runs, "auto", "cpu", 8, dict(cpu))
  assert [len(u) for u in batching.training_units(runs, "auto", "cpu", 8, h100)] == [3]
  assert [len(u) for u in batching.training_units(runs, "never", "cpu", 8, h100)] == [1, 1, 1]


def test_keys_added_later_keep_the_ids_of_existing_runs():
  # Ids of the smoke sweep as workdirs written before the wsd, muP and keep_steps keys
  # hold them: adding a key at its default must not retrain (or orphan) their runs.
  c = smoke_config()
  runs = plan_lib.plan_runs(c, spec_lib.sweep_spec(c.sweep), data_lib.load(
      config_lib.data_spec(c)))
  assert sorted(r.run_id for r in runs) == ["1b7bfb299dbf", "43bf8ee06dc9", "9c276441bb05"]
  c.train.cooldown_fraction = 0.3  # a real change of a later key: new runs
  changed = plan_lib.plan_runs(c, spec_lib.sweep_spec(c.sweep), data_lib.load(
      config_lib.data_spec(c)))
  assert not {r.run_id for r in changed} & {r.run_id for r in runs}
