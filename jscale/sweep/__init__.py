"""Sweeps: plan a grid of runs, train them resumably, tabulate, fit and plot."""

from jscale.sweep.plan import PlannedRun, parse_worker, plan_runs
from jscale.sweep.spec import SweepSpec, sweep_section, sweep_spec
from jscale.sweep.runner import SweepOptions, run_sweep
