"""What ``--dry_run`` shows: each planned run with its size, tokens, FLOPs and an estimate
of its wall time from a few measured steps, the plan's totals against its budget, and
its design: whether the law the sweep will fit can be identified from these points.

Design warnings (``design_warnings``; thresholds are module constants):

* ``tokens_range``: the plan varies D (it asks for L(N, D)) but its points take fewer than
  3 token counts or span at most 2x, so the fit falls back to L(N) (``analysis.choose_law``):
  Chinchilla's beta is not identified. A plan at one D asks for L(N) and gets no warning.
* ``params_decades``: N spans fewer than ``MIN_DECADES`` (1.5) decades: the issue's
  simulation and Epoch's Chinchilla refit (alpha +-8% over 2.45 decades) put a +-25%
  interval on alpha at about 2 decades with per-size scatter like ours.
* ``one_side_of_ridge`` (language models, Chinchilla law): fewer than
  ``diagnostics.RIDGE_MINORITY`` of the points on one side of ``RIDGE_TOKENS_PER_PARAM``
  (20, Hoffmann et al.'s compute-optimal ratio): the law's optimum is not bracketed.
* ``too_few_points``: fewer points than the law has parameters: it cannot be fitted.
"""

import dataclasses
import math
import time

import jax
import numpy as np

from jscale.fit import diagnostics, registry
from jscale.sweep import analysis
from jscale.sweep import plan as plan_lib
from jscale.sweep.spec import SweepSpec
from jscale.train import memory
from jscale.train.metrics import format_eta
from jscale.train.sharding import DataParallel
from jscale.train.step import build_run, fresh_state, jit_train_step


def measure_step(run: plan_lib.PlannedRun, dataset, dp: DataParallel,
                 steps: int = 3) -> tuple[float, memory.CompiledMemory]:
  """Training FLOP/s of ``run``'s shape, timed over a few steps after compilation, and
  XLA's memory analysis of the compiled step."""
  spec = run.spec
  built = build_run(spec)
  step, frozen = jit_train_step(built, dp)
  state = fresh_state(built, dp, 0)
  batch = dp.shard_batch(dataset.train_batch(0, spec.train.global_batch, 0))
  compiled = step.lower(state, batch, frozen).compile()
  state, metrics = compiled(state, batch, frozen)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch, frozen)
  jax.block_until_ready(metrics)
  per_step = (time.perf_counter() - start) / steps
  return run.flops / spec.train.steps / per_step, memory.CompiledMemory.of(compiled)


def hours_warning(total_seconds: float, max_hours: float) -> str | None:
  """A line saying how far a plan exceeds its wall-time budget (0 = no limit). The FLOP
  budget, sweep.max_flops, needs no measurement: the planner refuses plans over it."""
  if max_hours and total_seconds > max_hours * 3600:
    return (f"WARNING: the plan needs about {format_eta(total_seconds)} at the measured "
            f"throughput, over the budget sweep.max_hours={max_hours:g} "
            f"({total_seconds / (max_hours * 3600):.2f}x)")
  return None


def _role(run: plan_lib.PlannedRun) -> str:
  if run.trunk_id:
    return f"  branch of {run.trunk_id} at step {run.branch_step}"
  return "  trunk" if run.is_trunk else ""


MIN_DECADES = 1.5
RIDGE_TOKENS_PER_PARAM = 20.0


@dataclasses.dataclass(frozen=True)
class Design:
  """The points a sweep's main law is fitted to, as planned: N (sweep.law_params) and D
  of every dense run that is not a trunk, and the plan's training FLOPs."""
  n: np.ndarray
  d: np.ndarray
  flops: float
  law_params: str
  language: bool  # tokens of text (the ridge at ~20 tokens per parameter applies)

  @property
  def law(self) -> str:
    return analysis.choose_law(self.d)


def plan_design(runs: list[plan_lib.PlannedRun], law_params: str, language: bool) -> Design:
  points = [r for r in runs if not r.is_trunk and not r.spec.compress.order]
  return Design(n=np.array([plan_lib.law_size(r.spec.model, law_params) for r in points],
                           np.float64),
                d=np.array([r.tokens for r in points], np.float64),
                flops=sum(r.cost_flops for r in runs), law_params=law_params,
                language=language)


def _decades(values: np.ndarray) -> float:
  return math.log10(values.max() / values.min())


def design_warnings(design: Design) -> list[str]:
  """Why the planned points cannot identify the law they are planned for (module doc)."""
  n, d, law = design.n, design.d, design.law
  found = []
  if law != "chinchilla" and np.unique(d).size > 1:
    found.append(f"warning [tokens_range]: tokens take {np.unique(d).size} value(s) spanning "
                 f"{d.max() / d.min():.2g}x: the fit will be L(N) ({law}), Chinchilla's beta "
                 f"is not identified; give sweep.tokens {analysis.CHINCHILLA_TOKEN_COUNTS} or "
                 f"more values spanning over {analysis.CHINCHILLA_TOKEN_RATIO:g}x")
  if _decades(n) < MIN_DECADES:
    found.append(f"warning [params_decades]: N spans {_decades(n):.2f} decades (under "
                 f"{MIN_DECADES:g}): alpha will not be identified to +-25%; widen sweep.widths")
  ratio = d / n
  above = int(np.sum(ratio > RIDGE_TOKENS_PER_PARAM))
  if design.language and law == "chinchilla" and min(above, ratio.size - above) < (
      diagnostics.RIDGE_MINORITY * ratio.size):
    side = "above" if above > ratio.size / 2 else "below"
    found.append(f"warning [one_side_of_ridge]: {max(above, ratio.size - above)} of "
                 f"{ratio.size} points are {side} {RIDGE_TOKENS_PER_PARAM:g} tokens per "
                 f"parameter ({ratio.min():.3g} .. {ratio.max():.3g}): the compute-optimal "
                 "ridge is not bracketed; train smaller models longer or larger ones shorter")
  n_params = registry.get(law).n_params
  if n.size < n_params:
    found.append(f"warning [too_few_points]: {n.size} points for the {n_params} parameters "
                 f"of {law}: it cannot be fitted")
  return found


def design_lines(design: Design) -> list[str]:
  """The plan's design (ranges of N, D, tokens per parameter, FLOPs) and its warnings."""
  if design.n.size == 0:
    return ["design: no dense run to fit a law to"]
  n, d = design.n, design.d
  ratio = d / n
  unit = "tokens" if design.language else "examples"
  return [f"design: {n.size} law points ({design.law}); N ({design.law_params}) "
          f"{n.min():.3g} .. {n.max():.3g} ({_decades(n):.2f} decades), D {d.min():.3g} .. "
          f"{d.max():.3g} {unit} ({_decades(d):.2f} decades), {unit} per parameter "
          f"{ratio.min():.3g} .. {ratio.max():.3g}; {design.flops:.3g} training FLOPs"
          ] + design_warnings(design)


def plan_lines(runs: list[plan_lib.PlannedRun], rates: list[float],
               worker: tuple[int, int], max_hours: float = 0.0) -> list[str]:
  """The plan table. ``rates`` are the measured FLOP/s of the smallest and the largest
  run (one value for a one-run plan); a run's rate is interpolated between them in
  log-compute, since small models reach a lower FLOP/s."""
  lines = [f"{len(runs)} runs; measured {rates[0] / 1e9:.2f} GFLOP/s (smallest)"
           + (f", {rates[-1] / 1e9:.2f} GFLOP/s (largest)" if len(rates) > 1 else ""),
           f"{'id':12}  {'label':28} {'params':>10} {'non-emb':>10} {'tokens':>10} "
           f"{'FLOPs':>9} {'est.':>7}"]
  total = 0.0
  mine = [i % worker[1] == worker[0] for i in range(len(runs))]
  for i, r in enumerate(runs):
    frac = 0.0 if len(runs) == 1 else i / (len(runs) - 1)
    seconds = plan_lib.estimated_seconds(r, rates[0] ** (1 - frac) * rates[-1] ** frac)
    total += seconds if mine[i] else 0.0
    counts = r.spec.model.param_counts()
    lines.append(f"{r.run_id:12}  {r.label:28} {counts.total:>10,} {counts.non_embedding:>10,} "
                 f"{r.tokens:>10.3g} {r.cost_flops:>9.2e} {format_eta(seconds):>7}"
                 + ("" if mine[i] else "  (other worker)") + _role(r))
  if any(r.trunk_id for r in runs):
    cost = sum(r.cost_flops for r in runs)
    independent = sum(r.flops for r in runs if not r.is_trunk)
    lines.append(f"trunks and branches: {cost:.3g} training FLOPs, against {independent:.3g} "
                 f"as independent runs ({independent / cost:.2f}x)")
  total_flops = sum(r.cost_flops for r, m in zip(runs, mine) if m)
  lines.append(f"this worker: {total_flops:.3g} training FLOPs, estimated training time "
               f"{format_eta(total)} (plus compilation, about a second per run)")
  warning = hours_warning(total, max_hours)
  return lines + ([warning] if warning else [])


def preview(runs: list[plan_lib.PlannedRun], dataset, dp: DataParallel,
            worker: tuple[int, int], max_hours: float = 0.0,
            law_params: str = SweepSpec.law_params) -> list[str]:
  """The plan table with rates measured on this machine (see ``plan_lines``), the
  memory the largest run's compiled step needs on each device of the mesh, and the
  plan's design (``design_lines``, N counted as ``law_params``)."""
  ends = [runs[0], runs[-1]] if len(runs) > 1 else [runs[0]]
  measured = [measure_step(r, dataset, dp) for r in ends]
  used = measured[-1][1]
  return plan_lines(runs, [rate for rate, _ in measured], worker, max_hours) + [
      f"{ends[-1].label} on the mesh {dp.describe()}: XLA's compiled step holds "
      f"{used.peak / 1e9:.3g} GB per device at its peak ({used.arguments / 1e9:.3g} GB "
      f"state and batch, {used.temporaries / 1e9:.3g} GB temporaries)"] + design_lines(
          plan_design(runs, law_params, dataset.kind == "text"))
