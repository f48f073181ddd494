"""What ``--dry_run`` shows: each planned run with its size, tokens, FLOPs and an estimate
of its wall time from a few measured steps, and the plan's totals against its budget."""

import time

import jax

from jscale.sweep import plan as plan_lib
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
            worker: tuple[int, int], max_hours: float = 0.0) -> list[str]:
  """The plan table with rates measured on this machine (see ``plan_lines``), and the
  memory the largest run's compiled step needs on each device of the mesh."""
  ends = [runs[0], runs[-1]] if len(runs) > 1 else [runs[0]]
  measured = [measure_step(r, dataset, dp) for r in ends]
  used = measured[-1][1]
  return plan_lines(runs, [rate for rate, _ in measured], worker, max_hours) + [
      f"{ends[-1].label} on the mesh {dp.describe()}: XLA's compiled step holds "
      f"{used.peak / 1e9:.3g} GB per device at its peak ({used.arguments / 1e9:.3g} GB "
      f"state and batch, {used.temporaries / 1e9:.3g} GB temporaries)"]
