"""Model-batched training: K same-shape runs as one compiled program.

Parameters and optimizer states of the runs are stacked on a leading run axis and the
single-run step is ``jax.vmap``-ed over it. What differs between runs travels as
arrays, so runs with different seeds, learning rates, schedules, warm-ups, weight
decays and step counts share one compilation:

* the learning rate as a per-run table ``lr[step]`` evaluated once on the host side
  from ``jscale.optim.learning_rate_schedule`` (any schedule kind, exactly the
  single-run values), indexed by the optimizer's own step counter;
* the weight decay as a per-run scalar;
* an ``active`` flag per run: a run that has reached its own step count (or diverged,
  or is a padding "ghost" slot) keeps its state unchanged (``jnp.where``), so its
  result is taken at its own step.

Each run keeps its own folder exactly as ``jscale.train.loop.train`` writes it:
``metrics.jsonl``, orbax checkpoints of the single-run ``TrainState`` (so a run
started batched can be resumed alone, and the other way round) and the same result
record. Runs are resumed from their own newest checkpoints; runs at different steps
simply train side by side, each on its own batch ``train_batch(step_r, seed_r)``.
A run's throughput (``tokens_per_second``, ``mfu``) is its share of the group's: its own
FLOPs over the group's training time while it trained, a clock that stops during every
run's final evaluation and last checkpoint.

Shapes: R = run slots (runs + ghosts), B = global batch, S = longest run's steps.
"""

import contextlib
import dataclasses
import functools
import math
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from jscale import compress
from jscale.checkpoint import Checkpointer, abstract_like
from jscale.config import RunSpec, TrainSpec
from jscale.metrics import MetricsLog
from jscale.optim import learning_rate_schedule, make_optimizer
from jscale.sharding import DataParallel
from jscale.train import grouping
from jscale.train.loop import (Progress, eval_record, evaluate, final_evaluation,
                               log_final_eval, print_progress, result_record,
                               throughput_values, unit_name)
from jscale.train.step import (TrainState, init_state, make_eval_step, make_train_step,
                               train_step_fn)

MIN_SPEEDUP = 1.1  # batching must beat sequential by this much to be chosen (noise margin)


def enable_compilation_cache(path: epath.PathLike) -> None:
  """Persists every compiled program under ``path`` so later processes skip compiling."""
  epath.Path(path).mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def check_group(runs: Sequence[RunSpec]) -> None:
  if not runs:
    raise ValueError("runs must hold at least one run, got none")
  passes = next((r.compress.passes for r in runs if r.compress.passes), ())
  if passes:
    raise ValueError(f"compress.passes must be empty for batched training, got {passes!r}; "
                     "train compressed runs one at a time")
  keys = {grouping.shape_key(r) for r in runs}
  if len(keys) > 1:
    raise ValueError(f"runs must share one shape key (see grouping.shape_key), got "
                     f"{len(keys)} different ones; split them with group_runs")


def make_group_step(run: RunSpec, layout: grouping.RunLayout) -> Callable:
  """Jitted ``step(state_R, batch_R, lr_RxS, weight_decay_R, active_R) -> (state_R,
  metrics_R)`` for ``run``'s group. Cached: each shape compiles once per process."""
  return _group_step(run.model, _template(run.train), layout)


@functools.lru_cache(maxsize=None)
def _group_step(model, template: TrainSpec, layout: grouping.RunLayout) -> Callable:
  module = model.make_module()

  def one_run(state: TrainState, batch, lr_S, weight_decay, active):
    schedule = lambda count: lr_S[count]  # noqa: E731
    tx = make_optimizer(template, learning_rate=schedule, weight_decay=weight_decay)
    stepped, metrics = train_step_fn(module, tx, schedule, template.grad_accum)(state, batch)
    return jax.tree.map(lambda n, o: jnp.where(active, n, o), stepped, state), metrics

  s = layout.stacked
  return jax.jit(jax.vmap(one_run), in_shardings=(s, layout.batch, s, s, s),
                 out_shardings=(s, s), donate_argnums=0)


def _template(t: TrainSpec) -> TrainSpec:
  """``t`` with every per-run field neutralised: the cache key of a group's step."""
  return dataclasses.replace(t, seed=0, steps=1, learning_rate=1.0, schedule="constant",
                             warmup_steps=0, final_lr_fraction=0.0, weight_decay=0.0,
                             eval_every=1, log_every=1, peak_flops=0.0)


def learning_rate_table(t: TrainSpec, length: int) -> np.ndarray:
  """float32 [length]: the run's learning rate at steps 0..length-1 (held after its end)."""
  steps = jnp.minimum(jnp.arange(length), t.steps)  # op by op: no compilation per run
  return np.asarray(jax.vmap(learning_rate_schedule(t))(steps), np.float32)


@dataclasses.dataclass
class _Member:
  """Bookkeeping of one run of a group: its folder, log, checkpoints and clock."""
  run: RunSpec
  dir: epath.Path
  ckpt: Checkpointer
  log: MetricsLog
  progress: Callable[[Progress], None]
  start: int = 0
  wall_before: float = 0.0
  clock: Callable[[], float] = time.perf_counter  # the group's training clock
  num_devices: int = 1  # devices the group trains on (for MFU)
  timed_from: tuple[int, float] | None = None  # (step, clock) of the first step read back
  timed_to: tuple[int, float] | None = None  # ... and of the latest
  result: dict | None = None

  @property
  def running(self) -> bool:
    return self.result is None

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
    self.ckpt.save(step, state, {"step": step, "data_position": step,
                                 "seed": self.run.train.seed,
                                 "wall_seconds": self.wall_before + elapsed})

  def finish(self, status: str, steps_done: int, final: dict, elapsed: float,
             dataset, dp: DataParallel, group_size: int) -> None:
    """The result record of ``jscale.train.loop.train``, plus the group size."""
    self.ckpt.wait()
    self.log.close()
    train_losses = [r["loss"] for r in self.log.records() if r["kind"] == "train"]
    timed_steps = self.timed_to[0] - self.timed_from[0] if self.timed_from else 0
    timed_seconds = self.timed_to[1] - self.timed_from[1] if self.timed_from else 0.0
    self.result = dict(
        result_record(self.run, dataset, dp, status=status,
                      diverged_step=steps_done if status == "diverged" else None,
                      final=final, train_losses=train_losses,
                      wall_seconds=self.wall_before + elapsed, timed_steps=timed_steps,
                      timed_seconds=timed_seconds),
        batched_runs=group_size)  # runs trained together in one program (1 = alone)


def _slot(state, r: int, dp: DataParallel):
  """Run ``r``'s single-run state, replicated as ``loop.train`` holds it."""
  return jax.device_put(jax.tree.map(lambda x: x[r], state), dp.replicated)


def _initial_state(members, layout, dp: DataParallel):
  """Stacked state: each member resumed from its newest checkpoint or freshly initialised
  from its seed; ghost slots get seed 0 and are never updated."""
  run = members[0].run
  module, tx = run.model.make_module(), make_optimizer(run.train)
  init = lambda seed: init_state(module, tx, run.model.dummy_inputs(1), seed)  # noqa: E731
  seeds = [m.run.train.seed for m in members] + [0] * (layout.slots - len(members))
  state = jax.jit(jax.vmap(init), out_shardings=layout.stacked)(jnp.asarray(seeds, jnp.int32))
  abstract = abstract_like(jax.eval_shape(init, 0), dp.replicated)
  restored = {}
  for r, m in enumerate(members):
    found = m.ckpt.restore_latest(abstract)
    if found is not None:
      restored[r], meta = found
      m.start, m.wall_before = int(meta["step"]), float(meta["wall_seconds"])
      print(f"{m.dir.name} resumed at step {m.start}", flush=True)
    m.log.truncate_after(m.start)
  if not restored:
    return state
  leaves, treedef = jax.tree.flatten(jax.device_get(state))
  leaves = [np.array(x) for x in leaves]
  for r, tree in restored.items():
    for leaf, value in zip(leaves, jax.tree.leaves(jax.device_get(tree))):
      leaf[r] = value
  return jax.device_put(jax.tree.unflatten(treedef, leaves), layout.stacked)


def _stacked_batch(dataset, steps: np.ndarray, members, active: np.ndarray, layout):
  """[R, B, ...] of each active member's own batch; zeros for the others."""
  batch_size = members[0].run.train.global_batch
  rows = {r: dataset.train_batch(int(steps[r]), batch_size, members[r].run.train.seed)
          for r in np.flatnonzero(active)}
  like = next(iter(rows.values()))
  stacked = {k: np.stack([rows[r][k] if r in rows else np.zeros_like(v)
                          for r in range(layout.slots)]) for k, v in like.items()}
  return jax.device_put(stacked, layout.batch)


def train_group(runs: Sequence[RunSpec], dataset, run_dirs: Sequence[epath.PathLike], *,
                dp: DataParallel, should_stop: Callable[[], bool] = lambda: False,
                progress: Sequence[Callable[[Progress], None]] | None = None,
                run_devices: int = 0) -> list[dict]:
  """Trains (or resumes) same-shape runs together; one result record per run, in order.

  Same contract as ``jscale.train.loop.train`` for each run (``progress`` holds one
  callback per run). On ``should_stop`` every unfinished run is checkpointed and
  reported ``{"status": "preempted", "step": s}``; runs that already ended keep their
  records. ``run_devices``: devices on the run axis (0 = ``grouping.default_run_devices``).
  """
  check_group(runs)
  if len(run_dirs) != len(runs):
    raise ValueError(f"run_dirs must hold one folder per run ({len(runs)}), got {len(run_dirs)}")
  if jax.process_count() > 1:
    raise ValueError("batched training is single-host; got process_count="
                     f"{jax.process_count()}: train runs one at a time instead")
  t0 = runs[0].train
  dp.check_batch(t0.global_batch)
  layout = grouping.make_layout(dp, len(runs), run_devices)
  dirs = [epath.Path(d) for d in run_dirs]
  for d in dirs:
    d.mkdir(parents=True, exist_ok=True)
  progress = progress or [print_progress(d.name) for d in dirs]
  step_fn = make_group_step(runs[0], layout)
  eval_step = make_eval_step(runs[0].model.make_module(), dp)
  eval_batches = dataset.eval_batches(t0.global_batch, t0.eval_batches)
  evaluate_slot = lambda state, r: eval_record(  # noqa: E731
      dataset, evaluate(eval_step, _slot(state, r, dp).params, eval_batches, dp))
  stopped = [0.0]  # seconds the training clock stood still (final evaluations)

  def clock() -> float:
    return time.perf_counter() - stopped[0]

  with contextlib.ExitStack() as stack:
    members = [_Member(run, d, stack.enter_context(Checkpointer(d / "checkpoints",
                                                                run.checkpoint)),
                       MetricsLog(d / "metrics.jsonl"), show, clock=clock,
                       num_devices=dp.num_devices)
               for run, d, show in zip(runs, dirs, progress)]
    state = _initial_state(members, layout, dp)
    ghosts = layout.slots - len(members)
    longest = max(r.train.steps for r in runs) + 1
    tables = jax.device_put(np.stack([learning_rate_table(m.run.train, longest)
                                      for m in members + members[:1] * ghosts]),
                            layout.stacked)
    decays = jax.device_put(np.asarray([m.run.train.weight_decay for m in members]
                                       + [0.0] * ghosts, np.float32), layout.stacked)
    steps = np.asarray([m.start for m in members] + [0] * ghosts)
    active = np.asarray([m.start < m.run.train.steps for m in members] + [False] * ghosts)
    t_start = time.perf_counter()
    elapsed = lambda: time.perf_counter() - t_start  # noqa: E731
    finish = lambda m, status, done, final: m.finish(  # noqa: E731
        status, done, final, elapsed(), dataset, dp, len(members))
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

    def complete(r):
      """Final evaluation, last checkpoint and result of a member at its last step; the
      training clock stops meanwhile, so no run's throughput counts them."""
      began = time.perf_counter()
      m, params, steps_r = members[r], _slot(state, r, dp), members[r].run.train.steps
      final = final_evaluation(m.run, compress.compose([]), params.params, dataset,
                               eval_batches, dp)
      log_final_eval(m.log, steps_r, final)
      if m.start < steps_r:  # else resumed from the checkpoint of its last step
        m.save(steps_r, params, elapsed())
      finish(m, "done", steps_r, final)
      active[r] = False
      stopped[0] += time.perf_counter() - began

    for r, m in enumerate(members):
      if not active[r]:  # resumed at its last step: only the final evaluation is missing
        complete(r)
    while active.any():
      batch = _stacked_batch(dataset, steps, members, active, layout)
      state, metrics = step_fn(state, batch, tables, decays, jax.device_put(active,
                                                                            layout.stacked))
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
        if m.ckpt.should_save(done) or stop:
          m.save(done, _slot(state, r, dp), elapsed())
        if done % m.run.train.eval_every == 0:
          m.log.append("eval", done, evaluate_slot(state, r))
      if stop:
        for r, m in enumerate(members):
          if m.running:
            m.ckpt.wait()
            m.log.close()
            m.result = {"status": "preempted", "step": int(steps[r])}
        break
    flush()
  return [m.result for m in members]


@dataclasses.dataclass(frozen=True)
class BatchingMeasurement:
  """Seconds per optimizer step of every run, trained one after another vs together."""
  runs: int
  run_devices: int
  sequential_seconds: float  # ``runs`` single-run steps (``make_train_step`` on dp)
  batched_seconds: float  # one batched step of all runs

  @property
  def speedup(self) -> float:
    return self.sequential_seconds / self.batched_seconds

  @property
  def pays(self) -> bool:
    return self.speedup >= MIN_SPEEDUP


def _seconds_per_call(call: Callable[[int], object], steps: int) -> float:
  jax.block_until_ready(call(0))  # compilation
  start = time.perf_counter()
  for i in range(steps):
    out = call(i + 1)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def measure_batching(runs: Sequence[RunSpec], dataset, dp: DataParallel, steps: int = 3,
                     run_devices: int = 0) -> BatchingMeasurement:
  """Times a few steps (after compilation, batch making included) of ``runs`` trained
  one after another and together; it trains nothing that is kept."""
  check_group(runs)
  run, t = runs[0], runs[0].train
  module, tx = run.model.make_module(), make_optimizer(t)
  single = make_train_step(module, tx, learning_rate_schedule(t), dp, t.grad_accum)
  state = [jax.jit(lambda: init_state(module, tx, run.model.dummy_inputs(1), t.seed),
                   out_shardings=dp.replicated)()]

  def single_step(i):
    state[0], metrics = single(state[0], dp.shard_batch(dataset.train_batch(i, t.global_batch,
                                                                            t.seed)))
    return metrics

  layout = grouping.make_layout(dp, len(runs), run_devices)
  group = make_group_step(run, layout)
  init = lambda seed: init_state(module, tx, run.model.dummy_inputs(1), seed)  # noqa: E731
  seeds = jnp.asarray([r.train.seed for r in runs] + [0] * (layout.slots - len(runs)))
  stacked = [jax.jit(jax.vmap(init), out_shardings=layout.stacked)(seeds)]
  tables = jax.device_put(np.full((layout.slots, steps + 2), t.learning_rate, np.float32),
                          layout.stacked)
  decays = jax.device_put(np.zeros(layout.slots, np.float32), layout.stacked)
  members = [_Member(r, epath.Path("."), None, None, None) for r in runs]
  active = np.arange(layout.slots) < len(runs)
  flags = jax.device_put(active, layout.stacked)

  def group_step(i):
    batch = _stacked_batch(dataset, np.full(layout.slots, i), members, active, layout)
    stacked[0], metrics = group(stacked[0], batch, tables, decays, flags)
    return metrics

  return BatchingMeasurement(
      runs=len(runs), run_devices=layout.run_devices,
      sequential_seconds=len(runs) * _seconds_per_call(single_step, steps),
      batched_seconds=_seconds_per_call(group_step, steps))


def batching_pays(runs: Sequence[RunSpec], dataset, dp: DataParallel) -> bool:
  """Whether training ``runs`` together beats training them one by one, measured."""
  return measure_batching(runs, dataset, dp).pays
