"""The sweep's ETA (``jscale.sweep.eta``): fitted to the units finished so far, it predicts
the rest of a trunk-and-branch plan from its first units; it says nothing before one has
finished; and the sweep's progress lines carry it."""

import logging
import math

import numpy as np
import pytest
from helpers import smoke_config

from jscale import data as data_lib
from jscale.sweep import plan as plan_lib
from jscale.sweep import spec as spec_lib
from jscale.sweep.eta import SweepEta, unit_costs
from jscale.sweep.runner import SweepOptions, run_sweep
from jscale.train import config as config_lib


def _wsd_plan():
  """Trunks of widths 8-32 first, then their branches (short, many): the order a sweep
  trains, where one FLOP rate misleads."""
  c = smoke_config()
  c.train.schedule = "wsd"
  c.sweep.widths, c.sweep.tokens, c.sweep.min_steps = (8, 16, 32), (2560, 5120, 10240), 1
  runs = plan_lib.plan_runs(c, spec_lib.sweep_spec(c.sweep),
                            data_lib.load(config_lib.data_spec(c)))
  return sorted(runs, key=lambda r: (not r.is_trunk, r.spec.model.width))


def _wall_seconds(unit) -> float:
  """A machine where each unit pays 3 s, each step 20 ms and each GFLOP 0.5 s."""
  _, steps, flops = unit_costs(unit)
  return 3.0 + 0.02 * steps + 0.5e-9 * flops


def test_units_finished_so_far_predict_the_rest():
  units = [[run] for run in _wsd_plan()]
  assert any(run.trunk_id for (run,) in units) and len(units) >= 6
  eta, checked = SweepEta(), 0
  for done in range(len(units) - 1):
    eta.finished(units[done], _wall_seconds(units[done]))
    # The trunks share their steps: the first branch makes the three costs identifiable.
    if np.linalg.matrix_rank(np.stack([unit_costs(u) for u in units[:done + 1]])) == 3:
      rest = units[done + 1:]
      assert eta.seconds_for(rest) == pytest.approx(sum(map(_wall_seconds, rest)), rel=1e-6)
      checked += 1
  assert checked >= len(units) // 2


def test_nothing_is_claimed_before_a_unit_has_finished():
  units = [[run] for run in _wsd_plan()]
  eta = SweepEta()
  assert math.isnan(eta.seconds_for(units))
  assert eta.seconds_for([]) == 0.0
  eta.finished(units[0], 4.0)
  assert np.isfinite(eta.seconds_for(units[1:])) and eta.seconds_for(units[1:]) > 0


def test_a_branch_costs_its_own_steps_and_batched_runs_share_theirs():
  runs = _wsd_plan()
  branch = next(r for r in runs if r.trunk_id)
  assert unit_costs([branch])[1] == branch.spec.train.steps - branch.branch_step
  trunks = [r for r in runs if r.is_trunk][:2]
  together = unit_costs(trunks)
  assert together[0] == 1.0
  assert together[1] == max(r.spec.train.steps for r in trunks)
  assert together[2] == pytest.approx(sum(r.cost_flops for r in trunks))


def test_progress_lines_show_the_sweeps_eta_once_a_run_has_finished(tmp_path, caplog):
  c = smoke_config()
  c.sweep.widths, c.train.log_every = (8, 16), 4
  with caplog.at_level(logging.INFO, logger="jscale.sweep.runner"):
    run_sweep(c, SweepOptions(str(tmp_path), num_devices=1, fit=False, batch_runs="never"))
  lines = [m for m in caplog.messages if "(sweep " in m]
  first = [m for m in lines if "w8-" in m]
  second = [m for m in lines if "w16-" in m]
  assert first and second
  assert all(m.endswith("(sweep ?)") for m in first)
  assert not any(m.endswith("(sweep ?)") for m in second)
