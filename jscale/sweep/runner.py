"""Runs a sweep in a workdir: plan, train what is missing, tabulate, fit, plot.

Running the same sweep again skips finished runs and resumes unfinished ones from their
last checkpoint; ``worker=(i, K)`` lets K processes share one workdir, each training
runs i, i+K, ... of the plan, so every run is trained exactly once.
"""

import dataclasses
import errno
import hashlib
import json
import math
import os
import re
import time
from typing import Callable

import jax
from etils import epath

from jscale import data as data_lib
from jscale.sweep import config as config_lib
from jscale.sweep import plan as plan_lib
from jscale.sweep import report, restore
from jscale.sweep import spec as spec_lib
from jscale.sweep.results import read_comparable, read_result, run_dir, write_results_csv
from jscale.train import batched, grouping, hosts
from jscale.train.loop import StartPoint, train, train_group
from jscale.train.metrics import format_eta, write_json_atomic, write_text_atomic
from jscale.train.record import Progress
from jscale.train.sharding import data_parallel
from jscale.train.step import build_run, make_train_step


@dataclasses.dataclass(frozen=True)
class SweepOptions:
  workdir: str
  worker: tuple[int, int] = (0, 1)
  dry_run: bool = False
  num_devices: int = 0  # 0 = all devices
  fit: bool = True
  batch_runs: str = "auto"  # same-shape runs together: "auto" (where measured to pay),
  #                           "always" or "never"


def prepare_workdir(workdir: epath.Path, config, dataset) -> None:
  """Creates the workdir and records the sweep, refusing incompatible edits (the writer
  process writes; the others wait until it has)."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    if hosts.is_writer():  # the only process of a multi-process job that writes files
      probe = workdir / f".write-probe-{os.getpid()}"  # workers share the workdir
      probe.write_text("")
      probe.unlink()
  except OSError as e:
    raise ValueError(f"--workdir {workdir} is not writable ({e.strerror or e})") from None
  fields = plan_lib.comparable_fields(config, dataset)
  before = read_comparable(workdir)
  if before is not None:
    for key, value in fields.items():
      if key in before and before[key] != value:
        raise ValueError(
            f"{key} is {value!r} but the runs in {workdir} used {before[key]!r}; mixing them "
            "would make the results incomparable: use a new --workdir")
  write_json_atomic(workdir / "sweep.json", {"comparable": fields, "config": config.to_dict()})
  hosts.barrier("workdir")


def measure_flops_per_second(run: plan_lib.PlannedRun, dataset, dp, steps: int = 3) -> float:
  """Training FLOP/s of ``run``'s shape, timed over a few steps after compilation."""
  spec = run.spec
  built = build_run(spec)
  step = make_train_step(built, dp)
  state = jax.jit(lambda: built.init(0), out_shardings=dp.replicated)()
  batch = dp.shard_batch(dataset.train_batch(0, spec.train.global_batch, 0))
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  per_step = (time.perf_counter() - start) / steps
  return run.flops / spec.train.steps / per_step


def hours_warning(total_seconds: float, max_hours: float) -> str | None:
  """A line saying how far a plan exceeds its wall-time budget (0 = no limit). The FLOP
  budget, sweep.max_flops, needs no measurement: the planner refuses plans over it."""
  if max_hours and total_seconds > max_hours * 3600:
    return (f"WARNING: the plan needs about {format_eta(total_seconds)} at the measured "
            f"throughput, over the budget sweep.max_hours={max_hours:g} "
            f"({total_seconds / (max_hours * 3600):.2f}x)")
  return None


def print_plan(runs, dataset, dp, worker, max_hours: float = 0.0) -> None:
  """Lists the runs with an estimate of their wall time from measured step times, and
  warns when the plan does not fit its budget."""
  ends = [runs[0], runs[-1]] if len(runs) > 1 else [runs[0]]
  rates = [measure_flops_per_second(r, dataset, dp) for r in ends]
  print(f"{len(runs)} runs; measured {rates[0] / 1e9:.2f} GFLOP/s (smallest)"
        + (f", {rates[-1] / 1e9:.2f} GFLOP/s (largest)" if len(rates) > 1 else ""))
  print(f"{'id':12}  {'label':28} {'params':>10} {'non-emb':>10} {'tokens':>10} "
        f"{'FLOPs':>9} {'est.':>7}")
  total = 0.0
  for i, r in enumerate(runs):
    # Small models reach a lower FLOP/s: interpolate the rate between the two ends in
    # log-compute.
    frac = 0.0 if len(runs) == 1 else i / (len(runs) - 1)
    rate = rates[0] ** (1 - frac) * rates[-1] ** frac
    seconds = plan_lib.estimated_seconds(r, rate)
    mine = i % worker[1] == worker[0]
    total += seconds if mine else 0.0
    counts = r.spec.model.param_counts()
    role = (f"  branch of {r.trunk_id} at step {r.branch_step}" if r.trunk_id
            else "  trunk" if r.is_trunk else "")
    print(f"{r.run_id:12}  {r.label:28} {counts.total:>10,} {counts.non_embedding:>10,} "
          f"{r.tokens:>10.3g} {r.cost_flops:>9.2e} {format_eta(seconds):>7}"
          + ("" if mine else "  (other worker)") + role)
  total_flops = sum(r.cost_flops for i, r in enumerate(runs) if i % worker[1] == worker[0])
  if any(r.trunk_id for r in runs):
    independent = sum(r.flops for r in runs if not r.is_trunk)
    print(f"trunks and branches: {sum(r.cost_flops for r in runs):.3g} training FLOPs, "
          f"against {independent:.3g} as independent runs "
          f"({independent / sum(r.cost_flops for r in runs):.2f}x)")
  print(f"this worker: {total_flops:.3g} training FLOPs, estimated training time "
        f"{format_eta(total)} (plus compilation, about a second per run)")
  warning = hours_warning(total, max_hours)
  if warning:
    print(warning)


def _sweep_progress(run: plan_lib.PlannedRun, flops_after_this_run: float, started: float,
                    flops_done: Callable[[], float]) -> Callable[[Progress], None]:
  """Step lines with the run's ETA and the sweep's (this run's plus the rest at the
  FLOP rate of the runs finished so far in this process, or this run's rate before any
  has finished)."""
  label, flops_per_unit = run.label, run.flops / run.tokens

  def show(p: Progress) -> None:
    rate = flops_done() / max(time.perf_counter() - started, 1e-9)
    if rate <= 0 and math.isfinite(p.units_per_second):
      rate = p.units_per_second * flops_per_unit
    sweep_eta = (p.run_eta_seconds + flops_after_this_run / rate) if rate > 0 else float("nan")
    print(f"  {label} step {p.step}/{p.steps} loss {p.loss:.4f} "
          f"{p.units_per_second:,.0f} {p.unit}/s eta {format_eta(p.run_eta_seconds)} "
          f"(sweep {format_eta(sweep_eta)})", flush=True)
  return show


def _wait_for(workdir: epath.Path, run: plan_lib.PlannedRun, source: str | None, role: str,
              poll_seconds: float = 10.0) -> None:
  """A student waits until its teacher, a branch until its trunk (maybe another worker's
  run) has finished; a source that did not finish "done" fails the run."""
  if source is None:
    return
  announced = False
  while (result := read_result(run_dir(workdir, source))) is None:
    if not announced:
      print(f"{run.run_id} waits for its {role} {source} (another worker)", flush=True)
      announced = True
    time.sleep(poll_seconds)
  if result.get("status") != "done":
    raise RuntimeError(f"{role} {source} ended {result.get('status')}")


def _start_point(workdir: epath.Path, run: plan_lib.PlannedRun) -> StartPoint | None:
  _wait_for(workdir, run, run.trunk_id, "trunk")
  if run.trunk_id is None:
    return None
  return StartPoint(run_dir(workdir, run.trunk_id), run.branch_step)


def _phase(run: plan_lib.PlannedRun) -> int:
  """Runs that start from another run's result come after it: trunks and independent runs
  first, then branches, then distilled students."""
  return 2 if run.teacher_id else 1 if run.trunk_id else 0


def _shape_name(run: plan_lib.PlannedRun) -> str:
  return hashlib.sha256(repr(grouping.shape_key(run.spec)).encode()).hexdigest()[:12]


def training_units(todo: list, dataset, dp, batch_runs: str,
                   decisions: dict[str, bool] | None = None) -> list[list]:
  """Runs in the order they are trained; runs that share a shape are trained together
  (one list) when ``batch_runs`` is "always", or "auto" and a quick measurement on this
  machine says batching pays. A unit never holds a run and one it starts from.

  ``decisions`` (shape -> batched?) holds the measured choices of earlier processes and
  receives the new ones: a resumed sweep decides as it did the first time, so its numbers
  are the same (batched and alone agree to rtol 1e-5, not bit for bit)."""
  if batch_runs == "never":
    return [[r] for r in todo]
  units, decisions = [], decisions if decisions is not None else {}
  phases = [[r for r in todo if _phase(r) == phase] for phase in range(3)]
  for phase, group in ((p, g) for p in phases for g in grouping.group_runs([r.spec for r in p])):
    members = [phase[i] for i in group]
    if len(members) < 2 or any(r.spec.compress.order or r.teacher_id for r in members):
      units += [[r] for r in members]
      continue
    key = _shape_name(members[0])
    if batch_runs == "always":
      decisions[key] = True
    if key not in decisions:
      m = batched.measure_batching([r.spec for r in members], dataset, dp)
      decisions[key] = m.pays
      print(f"batching {len(members)} runs of shape {members[0].label}: "
            f"{m.batched_seconds:.3f} s/step together vs {m.sequential_seconds:.3f} s one by one"
            f" ({m.speedup:.2f}x) -> {'batched' if m.pays else 'one by one'}", flush=True)
    units += [members] if decisions[key] else [[r] for r in members]
  return units


_STORAGE_FAULTS = {errno.EROFS: "read-only file system", errno.ENOSPC: "no space left",
                   errno.EDQUOT: "disk quota exceeded", errno.EACCES: "permission denied",
                   errno.EIO: "input/output error"}


def storage_fault(e: BaseException) -> OSError | None:
  """The OSError of a storage fault behind ``e`` (orbax and tensorstore wrap them), or
  None. Storage faults stop the sweep: every later run would fail the same way."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in _STORAGE_FAULTS:
      return e
    for code, words in _STORAGE_FAULTS.items():
      if words in str(e).lower() or os.strerror(code).lower() in str(e).lower():
        return OSError(code, os.strerror(code), _quoted_path(str(e)))
    e = e.__cause__ or e.__context__
  return None


def _quoted_path(text: str) -> str | None:
  match = re.search(r"['\"](/[^'\"]+)['\"]", text)
  return match.group(1) if match else None


def _failed(e: Exception, folder: epath.Path) -> dict:
  fault = storage_fault(e)
  if fault is not None:  # the run's folder when the error names no file
    raise OSError(fault.errno, fault.strerror, fault.filename or os.fspath(folder)) from None
  if isinstance(e, ValueError) or jax.process_count() > 1:
    # Bad input: stop the sweep with its one-line message. With several processes a run
    # that failed on one may have passed on another: only stopping them all keeps them
    # in step (the entry point names the error on every process).
    raise e
  return {"status": "failed", "error": f"{type(e).__name__}: {e}".splitlines()[0]}


def _train_unit(unit, dataset, workdir, dp, should_stop, progress) -> list[dict]:
  """Trains one run, or several same-shape runs as one program; a crash marks them failed
  and the sweep goes on (with several processes it stops the job: see ``_failed``)."""
  folders = [run_dir(workdir, r.run_id) for r in unit]
  if len(unit) > 1:
    try:
      return train_group([r.spec for r in unit], dataset, folders, dp=dp,
                         should_stop=should_stop, progress=progress,
                         start_points=[_start_point(workdir, r) for r in unit])
    except Exception as e:  # one broken group must not end the sweep
      return [_failed(e, folders[0].parent)] * len(unit)
  run = unit[0]
  try:
    _wait_for(workdir, run, run.teacher_id, "teacher")
    compression = restore.compression_for(run.spec, folders[0], dp)
    return [train(run.spec, dataset, folders[0], dp=dp, compression=compression,
                  should_stop=should_stop, progress=progress[0],
                  start_point=_start_point(workdir, run))]
  except Exception as e:  # one broken run must not end the sweep
    return [_failed(e, folders[0])]


def run_sweep(config, options: SweepOptions,
              should_stop: Callable[[], bool] = lambda: False) -> str:
  """Runs this worker's share of the sweep; returns 'done', 'waiting' or 'preempted'."""
  workdir = epath.Path(options.workdir)
  dataset = data_lib.load(config_lib.data_spec(config))
  sweep = spec_lib.sweep_spec(config.sweep)
  runs = plan_lib.plan_runs(config, sweep, dataset)
  dp = data_parallel(options.num_devices)
  dp.check_batch(config.train.global_batch)
  if options.dry_run:
    print_plan(runs, dataset, dp, options.worker, sweep.max_hours)
    mine = [r for i, r in enumerate(runs) if i % options.worker[1] == options.worker[0]]
    units = training_units(mine, dataset, dp, options.batch_runs)
    print(f"training units: {len(units)} ({sum(len(u) > 1 for u in units)} batched groups)")
    return "done"
  prepare_workdir(workdir, config, dataset)
  batch_runs = options.batch_runs
  if jax.process_count() > 1:  # batched training is single-host (jscale.train.batched)
    batch_runs = "never"
  index, count = options.worker
  mine = [r for i, r in enumerate(runs) if i % count == index]
  todo = [r for r in mine if read_result(run_dir(workdir, r.run_id)) is None]
  print(f"sweep: {len(runs)} runs planned, {len(mine)} for worker {index}/{count}, "
        f"{len(mine) - len(todo)} finished already", flush=True)

  decisions_path = workdir / "batching.json"
  decisions = json.loads(decisions_path.read_text()) if decisions_path.exists() else {}
  units = training_units(todo, dataset, dp, batch_runs, decisions)
  if batch_runs == "auto" and decisions:
    write_json_atomic(decisions_path, decisions)
  started, done_flops = time.perf_counter(), [0.0]
  remaining = [sum(r.cost_flops for r in todo)]
  n = 0
  for unit in units:
    for run in unit:
      n += 1
      write_text_atomic(run_dir(workdir, run.run_id) / "config.json", run.config_json)
      print(f"[{n}/{len(todo)}] start {run.run_id} {run.label} "
            f"({run.spec.model.param_counts().non_embedding:,} non-embedding params, "
            f"{run.tokens:.3g} tokens, {run.flops:.3g} FLOPs)"
            + (f" batched with {len(unit) - 1} more" if len(unit) > 1 else ""), flush=True)
    after = remaining[0] - sum(r.cost_flops for r in unit)
    progress = [_sweep_progress(r, after, started, lambda: done_flops[0]) for r in unit]
    results = _train_unit(unit, dataset, workdir, dp, should_stop, progress)
    preempted = False
    for run, result in zip(unit, results):
      if result["status"] == "preempted":
        preempted = True
        print(f"preempted: {run.run_id} checkpointed at step {result['step']}", flush=True)
        continue
      write_json_atomic(run_dir(workdir, run.run_id) / "result.json",
                        dict(result, run_id=run.run_id, label=run.label, budget=run.budget,
                             trunk=run.trunk_id, branch_step=run.branch_step))
      done_flops[0] += run.cost_flops
      remaining[0] -= run.cost_flops
      loss = result.get("val_loss")
      print(f"end {run.run_id} {result['status']}"
            + (f" val_loss {loss:.4f}" if loss is not None else "")
            + (f" in {result['wall_seconds']:.1f}s" if "wall_seconds" in result else ""),
            flush=True)
    write_results_csv(workdir, sweep.select)
    hosts.barrier("results")  # the others read the writer's result.json (branches, todo)
    if preempted:
      print("rerun the same command to resume", flush=True)
      return "preempted"

  write_results_csv(workdir, sweep.select)
  missing = [r for r in runs if read_result(run_dir(workdir, r.run_id)) is None]
  if missing:
    print(f"{len(missing)} runs of other workers not finished yet; the last worker to finish "
          "writes the fit and plots", flush=True)
    return "waiting"
  if options.fit and hosts.is_writer():
    report.write_report(workdir, runs, bootstrap=sweep.bootstrap)
  return "done"
