"""Sweeps: plan a grid of runs, train them resumably, tabulate, fit and plot."""

from jscale.sweep.plan import PlannedRun, parse_worker, plan_runs, sweep_section
from jscale.sweep.runner import SweepOptions, run_sweep
