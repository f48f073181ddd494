"""Model-batched training: K same-shape runs as one compiled program.

Parameters and optimizer states of the runs are stacked on a leading run axis and the
single-run step is ``jax.vmap``-ed over it. What differs between runs travels as
arrays, so runs with different seeds, learning rates, schedules, warm-ups, weight
decays and step counts share one compilation:

* the learning rate as a per-run table ``lr[step]`` evaluated once on the host side
  from ``jscale.train.optim.learning_rate_schedule`` (any schedule kind, exactly the
  single-run values), indexed by the optimizer's own step counter;
* the weight decay as a per-run scalar;
* an ``active`` flag per run: a run that has reached its own step count (or diverged,
  or is a padding "ghost" slot) keeps its state unchanged (``jnp.where``), so its
  result is taken at its own step.

``StackedRuns`` is the engine ``jscale.train.loop`` drives; each run keeps its own folder,
log, orbax checkpoints of the single-run ``TrainState`` (so a run started batched can be
resumed alone, and the other way round) and result record, exactly as when trained alone.

Shapes: R = run slots (runs + ghosts), B = global batch, S = longest run's steps.
"""

import dataclasses
import functools
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jscale.train import grouping
from jscale.train.checkpoint import abstract_like
from jscale.train.optim import learning_rate_schedule
from jscale.train.sharding import DataParallel
from jscale.train.spec import CheckpointSpec, RunSpec, TrainSpec
from jscale.train.step import TrainState, build_run, make_train_step


def check_group(runs: Sequence[RunSpec]) -> None:
  if not runs:
    raise ValueError("runs must hold at least one run, got none")
  order = next((r.compress.order for r in runs if r.compress.order), ())
  if order:
    raise ValueError(f"compress.passes must be empty for batched training, got {order!r}; "
                     "train compressed runs one at a time")
  keys = {grouping.shape_key(r) for r in runs}
  if len(keys) > 1:
    raise ValueError(f"runs must share one shape key (see grouping.shape_key), got "
                     f"{len(keys)} different ones; split them with group_runs")
  if jax.process_count() > 1:
    raise ValueError("batched training is single-host; got process_count="
                     f"{jax.process_count()}: train runs one at a time instead")


def make_group_step(run: RunSpec, layout: grouping.RunLayout) -> Callable:
  """Jitted ``step(state_R, batch_R, lr_RxS, weight_decay_R, active_R) -> (state_R,
  metrics_R)`` for ``run``'s group. Cached: each shape compiles once per process."""
  template = dataclasses.replace(run, train=_template(run.train), checkpoint=_NO_CHECKPOINT,
                                 config_record="")
  return _group_step(template, layout)


@functools.lru_cache(maxsize=None)
def _group_step(template: RunSpec, layout: grouping.RunLayout) -> Callable:
  def one_run(state: TrainState, batch_B, lr_S, weight_decay, active):
    built = build_run(template, schedule=lambda count: lr_S[count], weight_decay=weight_decay)
    stepped, metrics = built.step(state, batch_B)
    return jax.tree.map(lambda n, o: jnp.where(active, n, o), stepped, state), metrics

  s = layout.stacked
  return jax.jit(jax.vmap(one_run), in_shardings=(s, layout.batch, s, s, s),
                 out_shardings=(s, s), donate_argnums=0)


_NO_CHECKPOINT = CheckpointSpec(every=1, keep=1, async_save=False)  # the step never saves


def _template(t: TrainSpec) -> TrainSpec:
  """``t`` with every per-run field neutralised: the cache key of a group's step."""
  return dataclasses.replace(t, seed=0, steps=1, learning_rate=1.0, schedule="constant",
                             cooldown_fraction=0.0, cooldown_shape="linear",
                             warmup_steps=0, final_lr_fraction=0.0, weight_decay=0.0,
                             eval_every=1, log_every=1, peak_flops=0.0)


def learning_rate_table(t: TrainSpec, length: int) -> np.ndarray:
  """float32 [length]: the run's learning rate at steps 0..length-1 (held after its end)."""
  steps = jnp.minimum(jnp.arange(length), t.steps)  # op by op: no compilation per run
  return np.asarray(jax.vmap(learning_rate_schedule(t))(steps), np.float32)


class StackedRuns:
  """The engine of a group of same-shape runs (``jscale.train.loop.Engine``)."""

  def __init__(self, runs: Sequence[RunSpec], dataset, dp: DataParallel, run_devices: int = 0):
    check_group(runs)
    self._runs, self._dataset, self._dp = list(runs), dataset, dp
    self.layout = grouping.make_layout(dp, len(runs), run_devices)
    self.slots = self.layout.slots
    self._init = build_run(runs[0]).init
    self.abstract_state = abstract_like(jax.eval_shape(self._init, 0), dp.replicated)
    self._step = make_group_step(runs[0], self.layout)
    ghosts = [runs[0]] * (self.slots - len(runs))
    longest = max(r.train.steps for r in runs) + 1
    self._tables = jax.device_put(
        np.stack([learning_rate_table(r.train, longest) for r in self._runs + ghosts]),
        self.layout.stacked)
    self._decays = jax.device_put(
        np.asarray([r.train.weight_decay for r in runs] + [0.0] * len(ghosts), np.float32),
        self.layout.stacked)

  def initial_state(self, restored: dict[int, TrainState]):
    """Stacked state: slot r from ``restored[r]`` or freshly initialised from its seed;
    ghost slots get seed 0 and are never updated."""
    seeds = [r.train.seed for r in self._runs] + [0] * (self.slots - len(self._runs))
    state = jax.jit(jax.vmap(self._init), out_shardings=self.layout.stacked)(
        jnp.asarray(seeds, jnp.int32))
    if not restored:
      return state
    leaves, treedef = jax.tree.flatten(jax.device_get(state))
    leaves = [np.array(x) for x in leaves]
    for r, tree in restored.items():
      for leaf, value in zip(leaves, jax.tree.leaves(jax.device_get(tree))):
        leaf[r] = value
    return jax.device_put(jax.tree.unflatten(treedef, leaves), self.layout.stacked)

  def batch(self, steps: np.ndarray, active: np.ndarray):
    """[R, B, ...] of each active run's own batch at its own step; zeros for the others."""
    batch_size = self._runs[0].train.global_batch
    rows = {r: self._dataset.train_batch(int(steps[r]), batch_size, self._runs[r].train.seed)
            for r in np.flatnonzero(active)}
    like = next(iter(rows.values()))
    batch_RxB = {k: np.stack([rows[r][k] if r in rows else np.zeros_like(v)
                              for r in range(self.slots)]) for k, v in like.items()}
    return jax.device_put(batch_RxB, self.layout.batch)

  def step(self, state, steps: np.ndarray, active: np.ndarray):
    return self._step(state, self.batch(steps, active), self._tables, self._decays,
                      jax.device_put(active, self.layout.stacked))

  def run_state(self, state, r: int) -> TrainState:
    """Run r's single-run state, replicated as one run's training holds it."""
    return jax.device_put(jax.tree.map(lambda x: x[r], state), self._dp.replicated)


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
  run, t = runs[0], runs[0].train
  built = build_run(run)
  single = make_train_step(built, dp)
  state = [jax.jit(lambda: built.init(t.seed), out_shardings=dp.replicated)()]

  def single_step(i):
    batch = dp.shard_batch(dataset.train_batch(i, t.global_batch, t.seed))
    state[0], metrics = single(state[0], batch)
    return metrics

  group = StackedRuns(runs, dataset, dp, run_devices)
  stacked = [group.initial_state({})]
  active = np.arange(group.slots) < len(runs)

  def group_step(i):
    stacked[0], metrics = group.step(stacked[0], np.full(group.slots, i), active)
    return metrics

  return BatchingMeasurement(
      runs=len(runs), run_devices=group.layout.run_devices,
      sequential_seconds=len(runs) * _seconds_per_call(single_step, steps),
      batched_seconds=_seconds_per_call(group_step, steps))
