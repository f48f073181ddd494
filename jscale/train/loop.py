"""The training loop: one run, or a stacked group of same-shape runs, through one code path.

The loop (:class:`UnitTrainer`) drives an *engine* that owns the compiled step and the
layout of the state (one run's ``TrainState``, or K runs stacked on a leading axis, see
``jscale.train.batched``); everything else — resuming each run from its newest checkpoint,
logging, periodic evaluation, checkpoints, divergence, preemption, the final evaluation
and the result record — is per-run bookkeeping (:class:`Member`) shared by both. Each run
writes its whole folder (``jscale.train.folder``): config.json first, result.json last.

Invariants:
* the device never waits for bookkeeping: step t's metrics are read after step t+1 has
  been dispatched;
* a run's log holds every step its checkpoint holds: the pending metrics are read before
  any save;
* out of a stacked group a run's state is copied once per step, for its save and its
  evaluation together;
* a run resumed from the checkpoint of its last step only evaluates: it is neither
  retrained nor saved again.

A non-finite loss ends that run as ``diverged``; ``should_stop`` (wired to SIGTERM by the
entry points) checkpoints every unfinished run and ends it as ``preempted`` (no
result.json: rerunning resumes it).
"""

import contextlib
import dataclasses
import logging
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
from jscale.train import folder as folder_lib
from jscale.train.checkpoint import Checkpointer
from jscale.train.evaluation import eval_record, evaluate, final_evaluation, log_final_eval
from jscale.train.metrics import MetricsLog, read_records
from jscale.train.record import Progress, log_progress, result_record, throughput_values, unit_name
from jscale.train.sharding import DataParallel, process_shard
from jscale.train.spec import RunSpec
from jscale.train.step import (
  BuiltRun,
  TrainState,
  abstract_state,
  build_run,
  fresh_state,
  make_eval_step,
  make_train_step,
)

_log = logging.getLogger(__name__)

Clock = Callable[[], float]  # seconds, monotonic


class Engine(Protocol):
  """The compiled step of a training unit and the layout of its state."""
  slots: int  # run slots; metrics leaves are [slots]
  abstract_state: Any  # one run's TrainState as ShapeDtypeStructs, for restoring

  def initial_state(self, restored: dict[int, TrainState]) -> Any:
    """The unit's state: slot r from ``restored[r]`` where given, else fresh."""

  def step(self, state, steps: np.ndarray, active: np.ndarray) -> tuple[Any, dict]:
    """One update of the active slots, each on its own batch at ``steps[r]``."""

  def run_state(self, state, r: int) -> TrainState:
    """Slot r's state, laid out as one run's (``jscale.train.sharding``)."""


class SingleRun:
  """The engine of one run: its jitted step over the data mesh, on this process's rows of
  every batch (multi-host data parallelism)."""
  slots = 1

  def __init__(self, run: RunSpec, built: BuiltRun, dataset, dp: DataParallel):
    self._run, self._built, self._dataset, self._dp = run, built, dataset, dp
    self._step = make_train_step(built, dp)
    self.abstract_state = abstract_state(built, dp, run.train.seed)

  def initial_state(self, restored):
    if 0 in restored:
      return restored[0]
    return fresh_state(self._built, self._dp, self._run.train.seed)

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
  folder: folder_lib.RunFolder
  ckpt: Checkpointer
  log: MetricsLog
  progress: Callable[[Progress], None]
  compression: compress.Composed
  num_devices: int  # devices the unit trains on (for MFU)
  start_point: StartPoint | None = None
  data_sha256: str = ""  # the dataset's content_sha256, kept in every checkpoint
  clock: Clock | None = None  # the unit's training clock (its UnitTrainer sets it)
  start: int = 0
  wall_before: float = 0.0
  timed_from: tuple[int, float] | None = None  # (step, clock) of the first step read back
  timed_to: tuple[int, float] | None = None  # ... and of the latest
  result: dict | None = None

  @property
  def name(self) -> str:
    return self.folder.name

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
        raise BadInput(f"{self.folder.path} was trained on other data (content sha256 "
                       f"{meta['data_sha256'][:12]}, now {self.data_sha256[:12]}): use a new "
                       "folder, or the data it was trained on")
      self.start, self.wall_before = int(meta["step"]), float(meta["wall_seconds"])
      _log.info("%s resumed at step %d", self.name, self.start)
    self.log.truncate_after(self.start)
    if found is None and self.start_point is not None:
      state = self._branch(abstract_state)
    return state

  def _branch(self, abstract_state) -> TrainState:
    """The trunk's state at the branch point, and the trunk's records up to it: the
    branch's log then reads as the log of an independent run with its schedule."""
    point = self.start_point
    with Checkpointer(point.run_dir / folder_lib.CHECKPOINTS, self.run.checkpoint,
                      read_only=True) as trunk:
      if point.step not in trunk.steps():
        raise BadInput(f"trunk {point.run_dir} has no checkpoint at step {point.step} "
                       f"(has {trunk.steps()}); rerun the trunk")
      state, _ = trunk.restore(point.step, abstract_state)
    every = self.run.train.eval_every
    for r in read_records(point.run_dir / folder_lib.METRICS):
      periodic = r["kind"] == "train" or (r["kind"] == "eval" and r["step"] % every == 0)
      if periodic and r["step"] <= point.step:
        self.log.append(r["kind"], r["step"],
                        {k: v for k, v in r.items() if k not in ("kind", "step")})
    self.start = point.step
    _log.info("%s branches from %s at step %d", self.name, point.run_dir.name, point.step)
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
    self.folder.write_result(self.result)


@dataclasses.dataclass
class _Pending:
  """A dispatched step whose metrics have not been read: its slots, their step numbers."""
  slots: np.ndarray
  numbers: list[int]
  metrics: dict


class UnitTrainer:
  """Trains (or resumes) every run of one engine's unit until each has a result.

  Its state: the engine's ``state``, each slot's step count (``steps``) and whether it
  still trains (``active``), the metrics of the last dispatched step not yet read
  (``pending``), and the seconds the training clock stood still (``paused``: final
  evaluations, which no run's throughput counts).
  """

  def __init__(self, engine: Engine, members: Sequence[Member], dataset, dp: DataParallel,
               eval_step: Callable, eval_batches: list, should_stop: Callable[[], bool],
               clock: Clock):
    self.engine, self.members, self.dataset, self.dp = engine, list(members), dataset, dp
    self._eval_step, self._eval_batches = eval_step, eval_batches
    self._should_stop, self._clock = should_stop, clock
    self.state = None
    self.steps = np.zeros(engine.slots, np.int64)
    self.active = np.zeros(engine.slots, bool)
    self.pending: _Pending | None = None
    self.paused = 0.0
    self._started = clock()
    for m in self.members:
      m.clock = self.training_clock

  def training_clock(self) -> float:
    return self._clock() - self.paused

  def elapsed(self) -> float:
    return self._clock() - self._started

  def run(self) -> list[dict]:
    """The loop; one result record per member, in order."""
    self.start()
    # Every process beats once per step: a peer that stops (killed, stuck) ends the job
    # with its name instead of a hang (free with one process).
    with hosts.watchdog("the start of training") as beat:
      while self.active.any():
        beat(f"step {int(self.steps.max())}")
        if self.step():
          self.preempt()
          break
    self.drain()
    return [m.result for m in self.members]

  def start(self) -> None:
    """Each member resumed (or branched, or fresh); those resumed at their last step get
    only their final evaluation."""
    restored = {r: s for r, m in enumerate(self.members)
                if (s := m.resume(self.engine.abstract_state)) is not None}
    self.state = self.engine.initial_state(restored)
    self._started = self._clock()
    for r, m in enumerate(self.members):
      self.steps[r] = m.start
      self.active[r] = m.start < m.run.train.steps
    for r in range(len(self.members)):
      if not self.active[r]:
        self.complete(r)

  def step(self) -> bool:
    """Dispatches one step of the active slots, reads the previous step's metrics while
    it runs, then saves, evaluates or completes each slot; True when a stop was asked."""
    self.state, metrics = self.engine.step(self.state, self.steps, self.active)
    slots = np.flatnonzero(self.active)
    self.drain()
    self.steps[slots] += 1
    self.pending = _Pending(slots, self.steps[slots].tolist(), metrics)
    stop = self._should_stop()
    if stop or any(self._ends_or_saves(r) for r in slots):
      self.drain()  # the log must hold every step a checkpoint holds
    for r in slots:
      if self.members[r].running:
        self._after_step(r, stop)
    return stop

  def _ends_or_saves(self, r: int) -> bool:
    m, done = self.members[r], int(self.steps[r])
    return m.running and (m.ckpt.should_save(done) or done == m.run.train.steps)

  def drain(self) -> None:
    """Reads the pending metrics into the members' logs; a non-finite loss ends its run
    as diverged."""
    if self.pending is None:
      return
    pending, self.pending = self.pending, None
    values = jax.device_get(pending.metrics)
    for r, step in zip(pending.slots, pending.numbers):
      m = self.members[r]
      if m.running and not m.consume(step, {k: float(v[r]) for k, v in values.items()}):
        self._finish(r, "diverged", step, {})

  def _after_step(self, r: int, stop: bool) -> None:
    m, done = self.members[r], int(self.steps[r])
    if done == m.run.train.steps:
      self.complete(r)
      return
    saving = m.ckpt.should_save(done) or stop
    evaluating = done % m.run.train.eval_every == 0
    if not (saving or evaluating):
      return
    run_state = self.engine.run_state(self.state, r)  # out of a group a copy: take it once
    if saving:
      m.save(done, run_state, self.elapsed())
    if evaluating:
      m.log.append("eval", done, eval_record(self.dataset, evaluate(
          self._eval_step, run_state.params, self._eval_batches, self.dp)))

  def complete(self, r: int) -> None:
    """Final evaluation, last checkpoint and result of a run at its last step; the
    training clock stands still meanwhile."""
    began = self._clock()
    m = self.members[r]
    run_state, last = self.engine.run_state(self.state, r), m.run.train.steps
    final = final_evaluation(m.run, m.compression, run_state.params, self.dataset,
                             self._eval_batches, self.dp)
    log_final_eval(m.log, last, final)
    if m.start < last:  # else resumed from the checkpoint of its last step
      m.save(last, run_state, self.elapsed())
    self._finish(r, "done", last, final)
    self.paused += self._clock() - began

  def _finish(self, r: int, status: str, steps_done: int, final: dict) -> None:
    self.members[r].finish(status, steps_done, final, self.elapsed(), self.dataset, self.dp,
                           len(self.members))
    self.active[r] = False

  def preempt(self) -> None:
    """Every unfinished run checkpointed (this step's saves) and ended as preempted."""
    for r, m in enumerate(self.members):
      if m.running:
        m.preempted(int(self.steps[r]))


def _train_unit(engine: Engine, runs: Sequence[RunSpec], compression: compress.Composed,
                dataset, folders: Sequence[folder_lib.RunFolder], dp: DataParallel,
                should_stop: Callable[[], bool],
                progress: Sequence[Callable[[Progress], None]] | None,
                start_points: Sequence[StartPoint | None] | None, clock: Clock) -> list[dict]:
  """Sets up one unit's members (folders, logs, checkpointers) and runs its loop."""
  t0 = runs[0].train
  dp.check_batch(t0.global_batch)
  for run, folder in zip(runs, folders):
    if not run.config_record:
      raise ValueError("the RunSpec has no config_record: build it with "
                       "jscale.train.config.resolve")
    folder.path.mkdir(parents=True, exist_ok=True)
    folder.write_config(run.config_record)
  progress = progress or [log_progress(f.name) for f in folders]
  start_points = start_points or [None] * len(runs)
  eval_step = make_eval_step(runs[0].model.make_module(), dp, compression)
  eval_batches = dataset.eval_batches(t0.global_batch, t0.eval_batches)
  data_sha256 = dataset.metadata()["content_sha256"]
  with contextlib.ExitStack() as stack:
    members = [Member(run, folder,
                      stack.enter_context(Checkpointer(folder.path / folder_lib.CHECKPOINTS,
                                                       run.checkpoint)),
                      MetricsLog(folder.path / folder_lib.METRICS), show, compression,
                      dp.num_devices, point, data_sha256)
               for run, folder, show, point in zip(runs, folders, progress, start_points)]
    return UnitTrainer(engine, members, dataset, dp, eval_step, eval_batches, should_stop,
                       clock).run()


def train(run: RunSpec, dataset, folder: "epath.PathLike | folder_lib.RunFolder", *,
          dp: DataParallel, compression: compress.Composed | None = None,
          should_stop: Callable[[], bool] = lambda: False,
          progress: Callable[[Progress], None] | None = None,
          start_point: StartPoint | None = None, clock: Clock = time.perf_counter) -> dict:
  """Trains (or resumes) one run in ``folder`` (a path or a ``RunFolder``); returns its
  result record, which the folder's result.json also holds once the run ended.

  ``compression`` is the run's composed passes, built by the caller (a distillation
  teacher restored, ``jscale.train.restore.compression_for``): ``run.compress.compose()``
  when None, which has no teacher. ``start_point``: a branch's trunk checkpoint, where the
  run starts unless it has checkpoints of its own. ``clock`` times throughput.
  """
  if compression is None:
    if run.compress.distill is not None:
      raise ValueError("compress.passes holds distill: pass the composed compression with "
                       "its restored teacher (jscale.train.restore.compression_for)")
    compression = run.compress.compose()
  dataset = prefetched(dataset)  # the next batch loads while a step runs
  engine = SingleRun(run, build_run(run, compression), dataset, dp)
  return _train_unit(engine, [run], compression, dataset, [folder_lib.RunFolder.at(folder)], dp,
                     should_stop, [progress] if progress else None, [start_point], clock)[0]


def train_group(runs: Sequence[RunSpec], dataset,
                folders: Sequence["epath.PathLike | folder_lib.RunFolder"], *,
                dp: DataParallel, should_stop: Callable[[], bool] = lambda: False,
                progress: Sequence[Callable[[Progress], None]] | None = None,
                run_devices: int = 0,
                start_points: Sequence[StartPoint | None] | None = None,
                clock: Clock = time.perf_counter) -> list[dict]:
  """Trains (or resumes) same-shape runs as one program; one record per run, in order.

  The same loop and records as ``train`` for each run (``progress`` holds one callback
  per run); runs that end before the others keep their slot, masked. ``run_devices``:
  devices on the run axis (0 = ``grouping.default_run_devices``).
  """
  if len(folders) != len(runs):
    raise ValueError(f"folders must hold one folder per run ({len(runs)}), got {len(folders)}")
  dataset = prefetched(dataset)  # the next batch loads while a step runs
  engine = batched.StackedRuns(runs, dataset, dp, run_devices)
  return _train_unit(engine, runs, compress.compose([]), dataset,
                     [folder_lib.RunFolder.at(f) for f in folders], dp, should_stop, progress,
                     start_points, clock)
