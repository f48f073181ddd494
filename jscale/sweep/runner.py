"""Runs a sweep in a workdir: plan, train what is missing, tabulate, fit and plot.

Running the same sweep again skips finished runs, resumes unfinished ones from their last
checkpoint and retries failed ones; ``worker=(i, K)`` lets K processes share one workdir,
each training runs i, i+K, ... of the plan, so every run is trained exactly once. Each run
writes its own folder (``jscale.train.folder``); the sweep composes runs and writes only
its own files (sweep.json, batching.json, results.csv, fit.json, plots/).

A run that raises a bug (any exception but ``BadInput`` and storage faults) is recorded as
``failed`` with its error, its traceback is logged, and the sweep goes on; the sweep then
ends with status "failed". Bad input and storage faults stop the sweep; with several
processes any error stops them all, since a run that failed on one process may have passed
on another.
"""

import dataclasses
import logging
import os
import time
from typing import Callable

import jax
from etils import epath

from jscale import data as data_lib
from jscale.errors import BadInput, storage_fault
from jscale.sweep import batching, preview, report
from jscale.sweep import plan as plan_lib
from jscale.sweep import spec as spec_lib
from jscale.sweep.eta import SweepEta
from jscale.sweep.results import read_comparable, run_dir, write_results_csv
from jscale.train import config as config_lib
from jscale.train import hosts
from jscale.train.folder import RunFolder, read_result
from jscale.train.loop import StartPoint, train, train_group
from jscale.train.metrics import format_eta, write_json_atomic
from jscale.train.record import Progress, progress_line
from jscale.train.restore import compression_for
from jscale.train.sharding import DataParallel, make_layout

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SweepOptions:
  workdir: str
  worker: tuple[int, int] = (0, 1)
  dry_run: bool = False
  num_devices: int = 0  # 0 = all devices
  fit: bool = True
  batch_runs: str = "auto"  # same-shape runs together: see jscale.sweep.batching


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
    if storage_fault(e) is None:
      raise
    raise BadInput(f"--workdir {workdir} is not writable ({e.strerror or e})") from None
  fields = plan_lib.comparable_fields(config, dataset)
  before = read_comparable(workdir)
  if before is not None:
    for key, value in fields.items():
      if key in before and before[key] != value:
        raise BadInput(
            f"{key} is {value!r} but the runs in {workdir} used {before[key]!r}; mixing them "
            "would make the results incomparable: use a new --workdir")
  write_json_atomic(workdir / "sweep.json", {"comparable": fields, "config": config.to_dict()})
  hosts.barrier("workdir")


def _progress(run: plan_lib.PlannedRun, rest_seconds: float) -> Callable[[Progress], None]:
  """Step lines with the run's ETA and the sweep's: this run's plus the units after it
  (``rest_seconds``, from the units finished so far: see ``eta``)."""
  def show(p: Progress) -> None:
    _log.info("  %s %s (sweep %s)", run.label, progress_line(p),
              format_eta(p.run_eta_seconds + rest_seconds))
  return show


def wait_for(workdir: epath.Path, run: plan_lib.PlannedRun, source: str | None, role: str,
             timeout: float, poll_seconds: float = 10.0,
             clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep) -> str | None:
  """Waits until ``source`` (``run``'s trunk or teacher, maybe another worker's run) has
  ended; None when it is done, else why ``run`` cannot start: the source did not end
  "done", or did not end within ``timeout`` seconds."""
  if source is None:
    return None
  deadline = clock() + timeout
  announced = False
  while (result := read_result(run_dir(workdir, source))) is None:
    if clock() >= deadline:
      return (f"its {role} {source} did not finish within sweep.wait_timeout={timeout:g} s "
              "(is the worker that trains it running?)")
    if not announced:
      _log.info("%s waits for its %s %s (another worker)", run.run_id, role, source)
      announced = True
    sleep(min(poll_seconds, max(deadline - clock(), 0.0)))
  if result.get("status") != "done":
    reason = f": {result['error']}" if result.get("error") else ""
    return f"its {role} {source} ended {result.get('status')}{reason}"
  return None


def _failed(e: Exception, folder: RunFolder, run: plan_lib.PlannedRun) -> dict:
  """A run's failure: a storage fault or bad input stops the sweep (as does any error
  with several processes); a bug fails the run, with its traceback logged."""
  fault = storage_fault(e, os.fspath(folder.path))
  if fault is not None:
    raise fault from e
  if isinstance(e, BadInput) or jax.process_count() > 1:
    raise e
  _log.error("%s failed", folder.name, exc_info=e)
  text = str(e).strip()
  return folder.write_failure(f"{type(e).__name__}: {text.splitlines()[0] if text else ''}",
                              run.spec.config_record)


@dataclasses.dataclass(frozen=True)
class _Context:
  """What training a unit needs besides the unit."""
  workdir: epath.Path
  dataset: object
  dp: DataParallel
  sweep: spec_lib.SweepSpec
  should_stop: Callable[[], bool]


def _folder(ctx: _Context, run: plan_lib.PlannedRun) -> RunFolder:
  return RunFolder(run_dir(ctx.workdir, run.run_id),
                   (("run_id", run.run_id), ("label", run.label), ("budget", run.budget),
                    ("trunk", run.trunk_id), ("branch_step", run.branch_step)))


def _start_point(ctx: _Context, run: plan_lib.PlannedRun) -> StartPoint | None:
  return None if run.trunk_id is None else StartPoint(run_dir(ctx.workdir, run.trunk_id),
                                                      run.branch_step)


def _train_unit(ctx: _Context, unit: list[plan_lib.PlannedRun], progress) -> list[dict]:
  """Trains one run, or several same-shape runs as one program, once the runs they start
  from have finished; a run whose trunk or teacher did not is failed, naming it."""
  folders = [_folder(ctx, r) for r in unit]
  blocked = {i: why for i, r in enumerate(unit)
             if (why := wait_for(ctx.workdir, r, r.teacher_id or r.trunk_id,
                                 "teacher" if r.teacher_id else "trunk",
                                 ctx.sweep.wait_timeout))}
  if blocked:
    ready = [i for i in range(len(unit)) if i not in blocked]
    trained = iter(_train_unit(ctx, [unit[i] for i in ready], [progress[i] for i in ready])
                   if ready else [])
    return [folders[i].write_failure(blocked[i], unit[i].spec.config_record) if i in blocked
            else next(trained) for i in range(len(unit))]
  try:
    if len(unit) > 1:
      return train_group([r.spec for r in unit], ctx.dataset, folders, dp=ctx.dp,
                         should_stop=ctx.should_stop, progress=progress,
                         start_points=[_start_point(ctx, r) for r in unit])
    run = unit[0]
    return [train(run.spec, ctx.dataset, folders[0], dp=ctx.dp,
                  compression=compression_for(run.spec, folders[0].path, ctx.dp),
                  should_stop=ctx.should_stop, progress=progress[0],
                  start_point=_start_point(ctx, run))]
  except Exception as e:  # a bug ends its runs only: see _failed
    return [_failed(e, f, r) for f, r in zip(folders, unit)]


def _still_to_train(workdir: epath.Path, runs: list[plan_lib.PlannedRun]
                    ) -> list[plan_lib.PlannedRun]:
  """Runs with no result, or a failed one (retried: its result is removed first)."""
  todo = []
  for run in runs:
    result = read_result(run_dir(workdir, run.run_id))
    if result is not None and result.get("status") == "failed" and hosts.is_writer():
      _log.info("%s failed before (%s): retrying", run.run_id, result.get("error"))
      RunFolder(run_dir(workdir, run.run_id)).forget_result()
    if result is None or result.get("status") == "failed":
      todo.append(run)
  hosts.barrier("retries")
  return todo


def _announce(n: int, total: int, run: plan_lib.PlannedRun, unit_size: int) -> None:
  _log.info("[%d/%d] start %s %s (%s non-embedding params, %.3g tokens, %.3g FLOPs)%s", n,
            total, run.run_id, run.label, f"{run.spec.model.param_counts().non_embedding:,}",
            run.tokens, run.flops,
            f" batched with {unit_size - 1} more" if unit_size > 1 else "")


def _report_end(run: plan_lib.PlannedRun, result: dict) -> None:
  loss = result.get("val_loss")
  _log.info("end %s %s%s%s", run.run_id, result["status"],
            f" val_loss {loss:.4f}" if loss is not None else "",
            f" in {result['wall_seconds']:.1f}s" if "wall_seconds" in result else "")


def _train_all(ctx: _Context, todo: list[plan_lib.PlannedRun],
               units: list[list[plan_lib.PlannedRun]]) -> tuple[bool, int]:
  """Trains the units in order; (preempted?, runs that failed)."""
  sweep_eta = SweepEta()
  n, failed = 0, 0
  for i, unit in enumerate(units):
    for run in unit:
      n += 1
      _announce(n, len(todo), run, len(unit))
    rest = sweep_eta.seconds_for(units[i + 1:])
    started = time.perf_counter()
    results = _train_unit(ctx, unit, [_progress(r, rest) for r in unit])
    preempted = False
    for run, result in zip(unit, results):
      if result["status"] == "preempted":
        preempted = True
        _log.info("preempted: %s checkpointed at step %d", run.run_id, result["step"])
        continue
      failed += result["status"] == "failed"
      _report_end(run, result)
    if all(result["status"] == "done" for result in results):  # a unit's whole cost
      sweep_eta.finished(unit, time.perf_counter() - started)
    write_results_csv(ctx.workdir, ctx.sweep.select)
    hosts.barrier("results")  # the others read the writer's result.json (branches, todo)
    if preempted:
      _log.info("rerun the same command to resume")
      return True, failed
  return False, failed


def run_sweep(config, options: SweepOptions,
              should_stop: Callable[[], bool] = lambda: False) -> str:
  """Runs this worker's share of the sweep; returns 'done', 'failed' (a run failed),
  'waiting' (other workers' runs unfinished) or 'preempted'."""
  workdir = epath.Path(options.workdir)
  dataset = data_lib.load(config_lib.data_spec(config))
  sweep = spec_lib.sweep_spec(config.sweep)
  runs = plan_lib.plan_runs(config, sweep, dataset, options.num_devices)
  dp = make_layout(config_lib.layout_spec(config), options.num_devices)
  dp.check_batch(config.train.global_batch)
  index, count = options.worker
  mine = [r for i, r in enumerate(runs) if i % count == index]
  # Batching: one host, and runs that hold whole parameters (a sharded model trains alone).
  mode = options.batch_runs if jax.process_count() == 1 and dp.is_data_parallel else "never"
  kind = jax.devices()[0].device_kind
  if options.dry_run:
    for line in preview.preview(runs, dataset, dp, options.worker, sweep.max_hours,
                                sweep.law_params):
      _log.info("%s", line)
    units = batching.training_units(mine, mode, kind, dp.num_devices, {})
    _log.info("training units: %d (%d batched groups)", len(units),
              sum(len(u) > 1 for u in units))
    return "done"
  prepare_workdir(workdir, config, dataset)
  todo = _still_to_train(workdir, mine)
  _log.info("sweep: %d runs planned, %d for worker %d/%d, %d finished already", len(runs),
            len(mine), index, count, len(mine) - len(todo))
  decisions = batching.read_decisions(workdir)
  units = batching.training_units(todo, mode, kind, dp.num_devices, decisions)
  batching.write_decisions(workdir, decisions)
  ctx = _Context(workdir, dataset, dp, sweep, should_stop)
  preempted, failed = _train_all(ctx, todo, units)
  if preempted:
    return "preempted"
  write_results_csv(workdir, sweep.select)
  missing = [r for r in runs if read_result(run_dir(workdir, r.run_id)) is None]
  if missing:
    _log.info("%d runs of other workers not finished yet; the last worker to finish writes "
              "the fit and plots", len(missing))
  elif options.fit and hosts.is_writer():
    report.write_report(workdir, sweep)
  if failed:
    _log.error("%d runs failed (tracebacks above, errors in their result.json); rerun the "
               "same command to retry them", failed)
    return "failed"
  return "waiting" if missing else "done"
