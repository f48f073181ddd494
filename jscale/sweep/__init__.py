"""Sweeps: plan a grid of runs, train them resumably, tabulate, fit and plot."""

from jscale.sweep.plan import PlannedRun, parse_worker, plan_runs
from jscale.sweep.runner import SweepOptions, run_sweep
from jscale.sweep.spec import SweepSpec, sweep_section, sweep_spec

__all__ = ["PlannedRun", "SweepOptions", "SweepSpec", "parse_worker", "plan_runs", "run_sweep",
           "sweep_section", "sweep_spec"]
