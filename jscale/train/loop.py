"""The training loop: one run, or a stacked group of same-shape runs, through one code path.

The loop drives an *engine* that owns the compiled step and the layout of the state (one
run's ``TrainState``, or K runs stacked on a leading axis, see ``jscale.train.batched``);
everything else — resuming each run from its newest checkpoint, logging, periodic
evaluation, checkpoints, divergence, preemption, the final evaluation and the result
record — is per-run bookkeeping (``Member``) shared by both.

The loop never stalls the device for bookkeeping: step t's metrics are read after step
t+1 has been dispatched. A non-finite loss ends that run as ``diverged``; ``should_stop``
(wired to SIGTERM by the entry points) checkpoints every unfinished run and ends it as
``preempted``.
"""

import contextlib
import dataclasses
import math
import time
from typing import Any, Callable, Protocol, Sequence

import jax
import numpy as np
from etils import epath

from jscale import compress
from jscale.data.prefetch import prefetched
from jscale.errors import BadInput
from jscale.train import batched, hosts
from jscale.train.checkpoint import Checkpointer, abstract_like
from jscale.train.evaluation import eval_record, evaluate, final_evaluation, log_final_eval
from jscale.train.metrics import MetricsLog, read_records
from jscale.train.record import (
  Progress,
  print_progress,
  result_record,
  throughput_values,
  unit_name,
)
from jscale.train.sharding import DataParallel, process_shard
from jscale.train.spec import RunSpec
from jscale.train.step import BuiltRun, TrainState, build_run, make_eval_step, make_train_step


class Engine(Protocol):
  """The compiled step of a training unit and the layout of its state."""
  slots: int  # run slots; metrics leaves are [slots]
  abstract_state: Any  # one run's TrainState as ShapeDtypeStructs, for restoring

  def initial_state(self, restored: dict[int, TrainState]) -> Any:
    """The unit's state: slot r from ``restored[r]`` where given, else fresh."""

  def step(self, state, steps: np.ndarray, active: np.ndarray) -> tuple[Any, dict]:
    """One update of the active slots, each on its own batch at ``steps[r]``."""

  def run_state(self, state, r: int) -> TrainState:
    """Slot r's state, laid out as one run's (replicated over the data mesh)."""


class SingleRun:
  """The engine of one run: its jitted step over the data mesh, on this process's rows of
  every batch (multi-host data parallelism)."""
  slots = 1

  def __init__(self, run: RunSpec, built: BuiltRun, dataset, dp: DataParallel):
    self._run, self._built, self._dataset, self._dp = run, built, dataset, dp
    self._step = make_train_step(built, dp)
    seed = run.train.seed
    self.abstract_state = abstract_like(jax.eval_shape(lambda: built.init(seed)), dp.replicated)

  def initial_state(self, restored):
    if 0 in restored:
      return restored[0]
    seed = self._run.train.seed
    return jax.jit(lambda: self._built.init(seed), out_shardings=self._dp.replicated)()

  def step(self, state, steps, active):
    t = self._run.train
    index, count = process_shard()
    batch = self._dataset.train_batch(int(steps[0]), t.global_batch, t.seed, shard_index=index,
                                      shard_count=count)
    state, metrics = self._step(state, self._dp.shard_batch(batch))
    return state, {k: v[None] for k, v in metrics.items()}

  def run_state(self, state, r):
    return state


@dataclasses.dataclass(frozen=True)
class StartPoint:
  """Where a branch starts: the folder of its trunk (a finished run) and the step of the
  trunk's kept checkpoint it continues from."""
  run_dir: epath.Path
  step: int


@dataclasses.dataclass
class Member:
  """Bookkeeping of one run: its folder, log, checkpoints, clock and result."""
  run: RunSpec
  dir: epath.Path
  ckpt: Checkpointer
  log: MetricsLog
  progress: Callable[[Progress], None]
  compression: compress.Composed
  clock: Callable[[], float]  # the unit's training clock (stops during final evaluations)
  num_devices: int  # devices the unit trains on (for MFU)
  start_point: StartPoint | None = None
  data_sha256: str = ""  # the dataset's content_sha256, kept in every checkpoint
  start: int = 0
  wall_before: float = 0.0
  timed_from: tuple[int, float] | None = None  # (step, clock) of the first step read back
  timed_to: tuple[int, float] | None = None  # ... and of the latest
  result: dict | None = None

  @property
  def running(self) -> bool:
    return self.result is None

  def resume(self, abstract_state) -> TrainState | None:
    """The newest restorable checkpoint's state (None = start fresh); the log is cut back
    to the step it holds, so steps are never logged twice."""
    found = self.ckpt.restore_latest(abstract_state)
    state = None
    if found is not None:
      state, meta = found
      if meta.get("data_sha256", self.data_sha256) != self.data_sha256:
        raise BadInput(f"{self.dir} was trained on other data (content sha256 "
                       f"{meta['data_sha256'][:12]}, now {self.data_sha256[:12]}): use a new "
                       "folder, or the data it was trained on")
      self.start, self.wall_before = int(meta["step"]), float(meta["wall_seconds"])
      print(f"{self.dir.name} resumed at step {self.start}", flush=True)
    self.log.truncate_after(self.start)
    if found is None and self.start_point is not None:
      state = self._branch(abstract_state)
    return state

  def _branch(self, abstract_state) -> TrainState:
    """The trunk's state at the branch point, and the trunk's records up to it: the
    branch's log then reads as the log of an independent run with its schedule."""
    point = self.start_point
    with Checkpointer(point.run_dir / "checkpoints", self.run.checkpoint,
                      read_only=True) as trunk:
      if point.step not in trunk.steps():
        raise ValueError(f"trunk {point.run_dir} has no checkpoint at step {point.step} "
                         f"(has {trunk.steps()}); rerun the trunk")
      state, _ = trunk.restore(point.step, abstract_state)
    every = self.run.train.eval_every
    for r in read_records(point.run_dir / "metrics.jsonl"):
      periodic = r["kind"] == "train" or (r["kind"] == "eval" and r["step"] % every == 0)
      if periodic and r["step"] <= point.step:
        self.log.append(r["kind"], r["step"],
                        {k: v for k, v in r.items() if k not in ("kind", "step")})
    self.start = point.step
    print(f"{self.dir.name} branches from {point.run_dir.name} at step {point.step}",
          flush=True)
    return state

  def consume(self, step: int, values: dict) -> bool:
    """Logs ``step``'s metrics (already computed); False when the loss is not finite."""
    t = self.run.train
    self.log.append("train", step, values)
    now = self.clock()
    self.timed_to = (step, now)
    if self.timed_from is None:
      self.timed_from = self.timed_to
    if step % t.log_every == 0 or step == t.steps:
      done, elapsed = step - self.timed_from[0], now - self.timed_from[1]
      units = t.global_batch * self.run.model.units_per_example
      rate = done * units / elapsed if done and elapsed > 0 else float("nan")
      eta = (t.steps - step) * elapsed / done if done else float("nan")
      self.progress(Progress(step, t.steps, values["loss"], rate, eta,
                             unit_name(self.run.model)))
      self.log.append("throughput", step, throughput_values(self.run, rate, self.num_devices))
    return math.isfinite(values["loss"])

  def save(self, step: int, state: TrainState, elapsed: float) -> None:
    self.log.flush()  # the log must hold every step a checkpoint holds
    self.ckpt.save(step, state, {"step": step, "data_position": step,
                                 "seed": self.run.train.seed, "data_sha256": self.data_sha256,
                                 "wall_seconds": self.wall_before + elapsed})

  def preempted(self, step: int) -> None:
    self.ckpt.wait()
    self.log.close()
    self.result = {"status": "preempted", "step": step}

  def finish(self, status: str, steps_done: int, final: dict, elapsed: float, dataset,
             dp: DataParallel, group_size: int) -> None:
    self.ckpt.wait()
    self.log.close()
    train_losses = [r["loss"] for r in self.log.records() if r["kind"] == "train"]
    timed_steps = self.timed_to[0] - self.timed_from[0] if self.timed_from else 0
    timed_seconds = self.timed_to[1] - self.timed_from[1] if self.timed_from else 0.0
    self.result = result_record(
        self.run, dataset, dp, status=status,
        diverged_step=steps_done if status == "diverged" else None, final=final,
        train_losses=train_losses, wall_seconds=self.wall_before + elapsed,
        timed_steps=timed_steps, timed_seconds=timed_seconds, batched_runs=group_size)


def _train_unit(engine: Engine, runs: Sequence[RunSpec], compression: compress.Composed,
                dataset, run_dirs: Sequence[epath.PathLike], dp: DataParallel,
                should_stop: Callable[[], bool],
                progress: Sequence[Callable[[Progress], None]] | None,
                start_points: Sequence[StartPoint | None] | None) -> list[dict]:
  """The loop: trains (or resumes) every run of ``engine``'s unit; one record per run."""
  t0 = runs[0].train
  dp.check_batch(t0.global_batch)
  dirs = [epath.Path(d) for d in run_dirs]
  for d in dirs:
    d.mkdir(parents=True, exist_ok=True)
  progress = progress or [print_progress(d.name) for d in dirs]
  start_points = start_points or [None] * len(runs)
  eval_step = make_eval_step(runs[0].model.make_module(), dp, compression)
  eval_batches = dataset.eval_batches(t0.global_batch, t0.eval_batches)
  data_sha256 = dataset.metadata()["content_sha256"]
  stopped = [0.0]  # seconds the training clock stood still (final evaluations)

  def clock() -> float:
    return time.perf_counter() - stopped[0]

  with contextlib.ExitStack() as stack:
    members = [Member(run, d, stack.enter_context(Checkpointer(d / "checkpoints",
                                                              run.checkpoint)),
                      MetricsLog(d / "metrics.jsonl"), show, compression, clock,
                      dp.num_devices, point, data_sha256=data_sha256)
               for run, d, show, point in zip(runs, dirs, progress, start_points)]
    restored = {r: s for r, m in enumerate(members)
                if (s := m.resume(engine.abstract_state)) is not None}
    state = engine.initial_state(restored)
    steps = np.zeros(engine.slots, np.int64)
    steps[:len(members)] = [m.start for m in members]
    active = np.zeros(engine.slots, bool)
    active[:len(members)] = [m.start < m.run.train.steps for m in members]
    t_start = time.perf_counter()

    def elapsed() -> float:
      return time.perf_counter() - t_start

    def finish(m: Member, status: str, steps_done: int, final: dict) -> None:
      m.finish(status, steps_done, final, elapsed(), dataset, dp, len(members))

    pending = None  # (slots, their step numbers, metrics) not yet logged

    def flush():
      nonlocal pending
      if pending is None:
        return
      slots, numbers, metrics = pending
      values = jax.device_get(metrics)
      for r, step in zip(slots, numbers):
        m = members[r]
        if m.running and not m.consume(step, {k: float(v[r]) for k, v in values.items()}):
          finish(m, "diverged", step, {})
          active[r] = False
      pending = None

    def complete(r: int) -> None:
      """Final evaluation, last checkpoint and result of a run at its last step; the
      training clock stops meanwhile, so no run's throughput counts them."""
      began = time.perf_counter()
      m = members[r]
      run_state, last = engine.run_state(state, r), m.run.train.steps
      final = final_evaluation(m.run, m.compression, run_state.params, dataset, eval_batches,
                               dp)
      log_final_eval(m.log, last, final)
      if m.start < last:  # else resumed from the checkpoint of its last step
        m.save(last, run_state, elapsed())
      finish(m, "done", last, final)
      active[r] = False
      stopped[0] += time.perf_counter() - began

    for r in range(len(members)):
      if not active[r]:  # resumed at its last step: only the final evaluation is missing
        complete(r)
    # Every process beats once per step: a peer that stops (killed, stuck) ends the job
    # with its name instead of a hang (free with one process).
    with hosts.watchdog("the start of training") as beat:
      while active.any():
        beat(f"step {int(steps.max())}")
        state, metrics = engine.step(state, steps, active)
        slots = np.flatnonzero(active)
        flush()  # the previous step's metrics, read while this step runs
        steps[slots] += 1
        pending = (slots, steps[slots].tolist(), metrics)
        stop = should_stop()
        ending = [r for r in slots if members[r].running and (
            members[r].ckpt.should_save(steps[r]) or steps[r] == members[r].run.train.steps)]
        if ending or stop:
          flush()  # the log must hold every step a checkpoint holds
        for r in slots:
          m, done = members[r], int(steps[r])
          if not m.running:
            continue
          if done == m.run.train.steps:
            complete(r)
            continue
          saving = m.ckpt.should_save(done) or stop
          evaluating = done % m.run.train.eval_every == 0
          if saving or evaluating:  # out of a stacked group this is a copy: take it once
            run_state = engine.run_state(state, r)
          if saving:
            m.save(done, run_state, elapsed())
          if evaluating:
            m.log.append("eval", done, eval_record(dataset, evaluate(
                eval_step, run_state.params, eval_batches, dp)))
        if stop:
          for r, m in enumerate(members):
            if m.running:
              m.preempted(int(steps[r]))
          break
    flush()
  return [m.result for m in members]


def train(run: RunSpec, dataset, run_dir: epath.PathLike, *, dp: DataParallel,
          compression: compress.Composed | None = None,
          should_stop: Callable[[], bool] = lambda: False,
          progress: Callable[[Progress], None] | None = None,
          start_point: StartPoint | None = None) -> dict:
  """Trains (or resumes) one run in ``run_dir``; returns its result record.

  ``compression`` is the run's composed passes, built by the caller (a distillation
  teacher restored): ``run.compress.compose()`` when None, which has no teacher.
  ``start_point``: a branch's trunk checkpoint, where the run starts unless it has
  checkpoints of its own.
  """
  if compression is None:
    if run.compress.distill is not None:
      raise ValueError("compress.passes holds distill: pass the composed compression with "
                       "its restored teacher (jscale.sweep.restore.compression_for)")
    compression = run.compress.compose()
  dataset = prefetched(dataset)  # the next batch loads while a step runs
  engine = SingleRun(run, build_run(run, compression), dataset, dp)
  return _train_unit(engine, [run], compression, dataset, [run_dir], dp, should_stop,
                     [progress] if progress else None, [start_point])[0]


def train_group(runs: Sequence[RunSpec], dataset, run_dirs: Sequence[epath.PathLike], *,
                dp: DataParallel, should_stop: Callable[[], bool] = lambda: False,
                progress: Sequence[Callable[[Progress], None]] | None = None,
                run_devices: int = 0,
                start_points: Sequence[StartPoint | None] | None = None) -> list[dict]:
  """Trains (or resumes) same-shape runs as one program; one record per run, in order.

  The same loop and records as ``train`` for each run (``progress`` holds one callback
  per run); runs that end before the others keep their slot, masked. ``run_devices``:
  devices on the run axis (0 = ``grouping.default_run_devices``).
  """
  if len(run_dirs) != len(runs):
    raise ValueError(f"run_dirs must hold one folder per run ({len(runs)}), got {len(run_dirs)}")
  dataset = prefetched(dataset)  # the next batch loads while a step runs
  engine = batched.StackedRuns(runs, dataset, dp, run_devices)
  return _train_unit(engine, runs, compress.compose([]), dataset, run_dirs, dp, should_stop,
                     progress, start_points)
