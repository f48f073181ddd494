"""How a sweep (``jscale.sweep.run_sweep``, in-process) treats its runs: a run that raises
a bug fails alone, a failed trunk fails its branches, a branch waits for another worker's
trunk at most ``sweep.wait_timeout``, a rerun retries failed runs and reproduces the
uninterrupted table, folders written before later config keys are kept, and batching
follows a rule of the plan, not a stopwatch."""

import json
import logging
import shutil

import pytest
from helpers import listing, smoke_config

from jscale import data as data_lib
from jscale.models import flops as flops_lib
from jscale.sweep import batching
from jscale.sweep import plan as plan_lib
from jscale.sweep import spec as spec_lib
from jscale.sweep.runner import SweepOptions, run_sweep, wait_for
from jscale.train import config as config_lib
from jscale.train import loop
from jscale.train.folder import RunFolder, read_result
from jscale.train.restore import evaluate_run, load_run_spec
from jscale.train.sharding import data_parallel


def _sweep(workdir, config, **options) -> str:
  return run_sweep(config, SweepOptions(str(workdir), num_devices=1, fit=False, **options))


def _trunk_config(seeds=(0, 1)):
  """Per seed, a wsd trunk (12 constant-rate steps) and two branches cooling down from
  steps 8 and 12 (10 and 15 steps in all)."""
  c = smoke_config()
  c.train.schedule = "wsd"
  c.sweep.widths, c.sweep.seeds = (8,), seeds
  c.sweep.tokens, c.sweep.min_steps = (2560, 3840), 1
  return c


def _results(workdir) -> dict[str, dict]:
  return {folder.name: read_result(folder) for folder in (workdir / "runs").iterdir()}


def _plan(config) -> list[plan_lib.PlannedRun]:
  return plan_lib.plan_runs(config, spec_lib.sweep_spec(config.sweep),
                            data_lib.load(config_lib.data_spec(config)))


def _bug_in_training(monkeypatch, when, error: Exception) -> None:
  """Training step 5 of the runs ``when(run_spec)`` selects raises ``error``, a bug deep in
  training (after the run wrote its config.json)."""
  step = loop.SingleRun.step

  def step_with_a_bug(self, state, steps, active):
    if when(self._run) and steps[0] == 5:
      raise error
    return step(self, state, steps, active)

  monkeypatch.setattr(loop.SingleRun, "step", step_with_a_bug)


def _failing_sweep(workdir, config, caplog) -> str:
  with caplog.at_level(logging.ERROR, logger="jscale"):
    return _sweep(workdir, config)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The trunk sweep run through once: its workdir."""
  workdir = tmp_path_factory.mktemp("uninterrupted") / "w"
  assert _sweep(workdir, _trunk_config()) == "done"
  return workdir


def test_a_failed_trunk_fails_its_branches_and_a_rerun_retries_them(uninterrupted, tmp_path,
                                                                    monkeypatch, caplog):
  """A bug (a ValueError: library code's ValueError is no user error) in one trunk's
  training fails that trunk and its branches; the other seed's runs finish."""
  config = _trunk_config()
  runs = _plan(config)
  (trunk,) = [r for r in runs if r.is_trunk and r.spec.train.seed == 0]
  branches = {r.run_id for r in runs if r.trunk_id == trunk.run_id}
  _bug_in_training(monkeypatch, lambda run: run.train.schedule == "constant"
                   and run.train.seed == 0, ValueError("a bug in the trunk's code"))
  workdir = tmp_path / "w"
  assert _failing_sweep(workdir, config, caplog) == "failed"
  results = _results(workdir)
  assert results[trunk.run_id]["status"] == "failed"
  assert results[trunk.run_id]["error"] == "ValueError: a bug in the trunk's code"
  for run_id in branches:
    assert results[run_id]["status"] == "failed"
    assert results[run_id]["error"] == (f"its trunk {trunk.run_id} ended failed: "
                                        "ValueError: a bug in the trunk's code")
  others = set(results) - branches - {trunk.run_id}
  assert len(others) == 3 and all(results[r]["status"] == "done" for r in others)
  bug = [r for r in caplog.records if r.exc_info and "a bug in the trunk" in str(r.exc_info[1])]
  assert len(bug) == 1  # its traceback is logged once, with the run's name
  monkeypatch.undo()
  assert _sweep(workdir, config) == "done"
  assert all(r["status"] == "done" for r in _results(workdir).values())
  assert (workdir / "results.csv").read_bytes() == (uninterrupted / "results.csv").read_bytes()


def test_wait_for_gives_up_at_the_timeout_on_a_fake_clock(tmp_path):
  """No real time passes: the clock advances by what the runner sleeps."""
  run = next(r for r in _plan(_trunk_config(seeds=(0,))) if r.trunk_id)
  now, slept = [100.0], []

  def sleep(seconds):
    slept.append(seconds)
    now[0] += seconds

  why = wait_for(tmp_path, run, run.trunk_id, "trunk", timeout=25.0, poll_seconds=10.0,
                 clock=lambda: now[0], sleep=sleep)
  assert why == (f"its trunk {run.trunk_id} did not finish within sweep.wait_timeout=25 s "
                 "(is the worker that trains it running?)")
  assert slept == [10.0, 10.0, 5.0]
  trunk = RunFolder(tmp_path / "runs" / run.trunk_id)
  trunk.path.mkdir(parents=True)
  trunk.write_result({"status": "done"})
  assert wait_for(tmp_path, run, run.trunk_id, "trunk", timeout=1.0, clock=lambda: now[0],
                  sleep=sleep) is None
  trunk.write_result({"status": "failed", "error": "ValueError: boom"})
  assert wait_for(tmp_path, run, run.trunk_id, "teacher", timeout=1.0, clock=lambda: now[0],
                  sleep=sleep) == f"its teacher {run.trunk_id} ended failed: ValueError: boom"
  assert slept == [10.0, 10.0, 5.0]  # a source that has ended is not waited for


def _orphaned_branch(workdir):
  """Worker 1 of 2 runs alone with a short wait: its branch's trunk is worker 0's.
  (status, trunk, branch)."""
  config = _trunk_config(seeds=(0,))
  config.sweep.wait_timeout = 0.2
  runs = _plan(config)
  assert [r.is_trunk for r in runs] == [True, False, False]  # runs 0 and 2 are worker 0's
  return _sweep(workdir, config, worker=(1, 2)), runs[0], runs[1]


def test_a_branch_whose_trunk_never_comes_fails_naming_it(tmp_path):
  _, trunk, branch = _orphaned_branch(tmp_path / "w")
  assert _results(tmp_path / "w") == {branch.run_id: {
      "status": "failed", "run_id": branch.run_id, "label": branch.label, "budget": None,
      "trunk": trunk.run_id, "branch_step": branch.branch_step,
      "error": (f"its trunk {trunk.run_id} did not finish within sweep.wait_timeout=0.2 s "
                "(is the worker that trains it running?)")}}


def test_a_worker_whose_run_failed_says_so_while_others_are_unfinished(tmp_path):
  assert _orphaned_branch(tmp_path / "w")[0] == "failed"


# --- run folders written before later keys -------------------------------------------------

# Keys added to base_config with the muP and wsd schedules: a folder written before them
# holds none of them.
LATER_KEYS = (("model", "parametrization"), ("model", "mup_base_width"),
              ("train", "cooldown_fraction"), ("train", "cooldown_shape"))


def _as_before_the_later_keys(folder) -> dict:
  stored = json.loads((folder / "config.json").read_text())
  for section, key in LATER_KEYS:
    del stored[section][key]
  (folder / "config.json").write_text(json.dumps(stored))
  return stored


def _old_folder(uninterrupted, tmp_path):
  """A copy of the trunk sweep and the folder in it of a run (seed 1's constant-rate trunk)
  as a jscale before the later keys would have written it."""
  workdir = tmp_path / "w"
  shutil.copytree(uninterrupted, workdir)
  (trunk,) = [r for r in _plan(_trunk_config()) if r.is_trunk and r.spec.train.seed == 1]
  return workdir, workdir / "runs" / trunk.run_id


def test_a_config_json_from_before_mup_and_wsd_still_restores_and_evaluates(uninterrupted,
                                                                            tmp_path):
  _, folder = _old_folder(uninterrupted, tmp_path)
  old = _as_before_the_later_keys(folder)
  run, _ = load_run_spec(folder)
  assert (run.model.parametrization, run.train.cooldown_shape) == ("sp", "1-sqrt")
  record = evaluate_run(folder, data_parallel(1))
  assert record["val_loss"] == pytest.approx(read_result(folder)["val_loss"], rel=1e-6)
  (planned,) = [r for r in _plan(_trunk_config()) if r.run_id == folder.name]
  RunFolder(folder).write_config(planned.config_json)  # the same run: accepted, kept
  assert json.loads((folder / "config.json").read_text()) == old


def test_a_sweep_keeps_an_old_finished_run_and_resumes_an_old_unfinished_one(uninterrupted,
                                                                             tmp_path):
  reference, config = uninterrupted, _trunk_config()
  workdir, folder = _old_folder(uninterrupted, tmp_path)
  _as_before_the_later_keys(folder)
  before = listing(folder)
  assert _sweep(workdir, config) == "done"
  assert listing(folder) == before  # its id is the planned one: nothing retrained
  assert (workdir / "results.csv").read_bytes() == (reference / "results.csv").read_bytes()
  (folder / "result.json").unlink()
  assert _sweep(workdir, config) == "done"  # resumes at its last checkpoint: evaluates only
  assert (workdir / "results.csv").read_bytes() == (reference / "results.csv").read_bytes()
  assert (folder / "metrics.jsonl").read_bytes() == (
      reference / "runs" / folder.name / "metrics.jsonl").read_bytes()


# --- batching ------------------------------------------------------------------------------

@pytest.mark.slow
def test_auto_batching_gives_the_same_table_twice(tmp_path, monkeypatch):
  """A device with a known peak (as an accelerator has): the rule batches the three
  same-shape runs. Two sweeps of the config decide alike and write the same bytes."""
  peak = flops_lib.peak_flops_per_device
  monkeypatch.setattr(flops_lib, "peak_flops_per_device",
                      lambda kind, dtype: 1e15 if kind == "cpu" else peak(kind, dtype))
  config = smoke_config()
  config.sweep.widths, config.sweep.seeds = (8,), (0, 1, 2)
  for name in ("a", "b"):
    assert _sweep(tmp_path / name, config, batch_runs="auto") == "done"
  runs = _plan(config)
  decided = {batching.shape_name(runs[0]): True}
  assert [batching.read_decisions(tmp_path / n) for n in "ab"] == [decided, decided]
  assert all(r["batched_runs"] == 3 for r in _results(tmp_path / "a").values())
  assert (tmp_path / "a" / "results.csv").read_bytes() == (
      tmp_path / "b" / "results.csv").read_bytes()
