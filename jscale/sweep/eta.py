"""The sweep's ETA: how long the units still to train will take on this process.

A unit's wall time is modelled as ``a + b * steps + c * FLOPs``, the three costs fitted
(non-negative least squares) to the units this process has finished: ``a`` is what every
unit pays once (compiling its step, the evaluations, the checkpoint writes), ``b`` what
every step pays whatever its size (dispatch, the input batch), ``c`` the arithmetic. A single
FLOP rate (FLOPs done over time spent) misleads both ways on a sweep: its small first runs
reach a fraction of the big ones' FLOP/s, so it first overstates the rest tenfold or more, and
after the big trunks it understates the many short branches, each compiling its own step.
"""

import dataclasses

import numpy as np
from scipy.optimize import nnls

from jscale.sweep.plan import PlannedRun


def unit_costs(unit: list[PlannedRun]) -> np.ndarray:
  """(1, steps, FLOPs) of one unit: runs trained together share their steps; a branch
  counts only its steps after the branch point."""
  steps = max(r.own_steps for r in unit)
  return np.array([1.0, float(steps), sum(r.cost_flops for r in unit)])


@dataclasses.dataclass
class SweepEta:
  """The costs and wall seconds of the units finished so far."""
  costs: list[np.ndarray] = dataclasses.field(default_factory=list)
  seconds: list[float] = dataclasses.field(default_factory=list)

  def finished(self, unit: list[PlannedRun], seconds: float) -> None:
    self.costs.append(unit_costs(unit))
    self.seconds.append(seconds)

  def seconds_for(self, units: list[list[PlannedRun]]) -> float:
    """Predicted wall seconds of ``units``; NaN before any unit has finished (nothing
    measured on this machine yet), 0 for none."""
    if not units:
      return 0.0
    if not self.seconds:
      return float("nan")
    done = np.stack(self.costs)
    scale = done.max(axis=0)  # columns of similar size, so nnls weighs them alike
    weights, _ = nnls(done / scale, np.array(self.seconds))
    return float(sum(unit_costs(u) / scale @ weights for u in units))
