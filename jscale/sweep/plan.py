"""A sweep's run grid: the product of the axes in ``config.sweep``.

Each planned run is a full run config (the base config with one value per axis). Its id
is a hash of the fields that change what the run computes, so editing a sweep adds new
runs and keeps finished ones, and the same run is never trained twice.
"""

import dataclasses
import hashlib
import itertools
import json
import math

import ml_collections

from jscale import config as config_lib
from jscale import flops as flops_lib

# Fields that do not change a run's numbers, left out of its id.
_NOT_IN_ID = {("train", "log_every"), ("checkpoint", "every"), ("checkpoint", "keep"),
              ("checkpoint", "async_save")}
# Fields that must agree across one workdir: results measured under different values
# would be silently incomparable.
COMPARABLE_FIELDS = ("model.family", "data.name", "data.seq_len", "data.validation_fraction",
                     "data.files_glob", "train.eval_batches", "train.global_batch")


def sweep_section() -> ml_collections.ConfigDict:
  """The ``sweep`` section every sweep config declares (empty axis = keep the base value)."""
  s = ml_collections.ConfigDict()
  s.widths = (64,)  # model.width values
  s.depths = (2,)  # model.depth values
  s.learning_rates = ()  # train.learning_rate values
  s.seeds = ()  # train.seed values
  s.tokens = ()  # training tokens (or examples) per run; sets train.steps
  s.budgets = ()  # IsoFLOP: training FLOPs per run; each size trains D = C / flops_per_token
  s.sparsities = ()  # gradual magnitude pruning targets; 0 = dense (compress.prune settings)
  s.precisions = ()  # "float32", "bfloat16", "int8-qat", "int4-qat", "int8-ptq", "int4-ptq"
  s.distill_from_largest = False  # add a student of each smaller dense size, taught by the
  #                                 largest dense run of the sweep (compress.distill settings)
  s.min_steps = 20  # IsoFLOP/tokens: runs shorter than this are left out of the plan
  s.bootstrap = 100  # bootstrap resamples of the fit after the sweep (0 = none)
  s.max_flops = 0.0  # compute budget of the whole sweep; --dry_run warns above it (0 = none)
  s.max_hours = 0.0  # wall-time budget at the measured throughput; --dry_run warns (0 = none)
  return s


@dataclasses.dataclass(frozen=True)
class PlannedRun:
  run_id: str
  label: str
  config: ml_collections.ConfigDict  # a complete run config
  spec: config_lib.RunSpec
  budget: float | None = None  # the IsoFLOP budget this run belongs to
  teacher_id: str | None = None  # distilled students: the run that teaches them

  @property
  def flops(self) -> float:
    return flops_lib.train_flops_per_step(self.spec.model, self.spec.train.global_batch) * (
        self.spec.train.steps)

  @property
  def tokens(self) -> int:
    return (self.spec.train.global_batch * self.spec.model.units_per_example
            * self.spec.train.steps)


def run_config_dict(config: ml_collections.ConfigDict) -> dict:
  """The run part of a config (no sweep section) as plain JSON-able data."""
  return {k: v for k, v in config.to_dict().items() if k != "sweep"}


def run_id(config: ml_collections.ConfigDict) -> str:
  resolved = run_config_dict(config)
  for section, key in _NOT_IN_ID:
    resolved.get(section, {}).pop(key, None)
  text = json.dumps(resolved, sort_keys=True, separators=(",", ":"), default=list)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def comparable_fields(config: ml_collections.ConfigDict) -> dict:
  values = {}
  for dotted in COMPARABLE_FIELDS:
    section, key = dotted.split(".")
    values[dotted] = config[section][key]
  return values


def _axis(values, field: str, cast) -> list:
  try:
    return [cast(v) for v in values]
  except (TypeError, ValueError):
    raise ValueError(f"sweep.{field} must be a sequence of numbers, got {values!r}") from None


def _steps_for(units: float, run: config_lib.RunSpec) -> int:
  return max(1, round(units / (run.train.global_batch * run.model.units_per_example)))


PRECISIONS = ("float32", "bfloat16", "int8-qat", "int4-qat", "int8-ptq", "int4-ptq")


def _apply_compression(c: ml_collections.ConfigDict, sparsity: float | None,
                       precision: str | None) -> str:
  """Sets one compression variant on a run config; returns its label suffix."""
  label, passes = "", list(c.compress.passes)
  if sparsity:
    c.compress.prune.sparsity = sparsity
    passes.insert(0, "prune")
    label += f"-sparse{sparsity:g}"
  if precision is not None:
    if precision not in PRECISIONS:
      raise ValueError(f"sweep.precisions must hold values from {PRECISIONS}, got {precision!r}")
    if precision == "bfloat16":
      c.train.compute_dtype = "bfloat16"
    elif precision != "float32":
      bits, kind = precision.split("-")
      c.compress[kind].bits = int(bits[len("int"):])
      passes.append(kind)
    label += f"-{precision}"
  c.compress.passes = tuple(passes)
  return label


def _students(runs: list[PlannedRun], dataset) -> list[PlannedRun]:
  """A distilled twin of every dense run but the largest, which teaches them."""
  dense = [r for r in runs if not r.config.compress.passes
           and r.config.train.compute_dtype == "float32"]
  if len(dense) < 2:
    raise ValueError("sweep.distill_from_largest needs at least two dense sizes, "
                     f"got {len(dense)}")
  teacher = max(dense, key=lambda r: r.flops)
  students = []
  for r in dense:
    if r.spec.model.param_counts().total >= teacher.spec.model.param_counts().total:
      continue
    c = ml_collections.ConfigDict(r.config.to_dict())
    c.compress.passes = ("distill",)
    c.compress.distill.teacher = f"run:{teacher.run_id}"
    students.append(PlannedRun(run_id=run_id(c), label=f"{r.label}-distilled", config=c,
                               spec=config_lib.resolve(c, dataset), budget=r.budget,
                               teacher_id=teacher.run_id))
  return students


def plan_runs(config: ml_collections.ConfigDict, dataset) -> list[PlannedRun]:
  """Expands ``config.sweep`` into runs: smallest compute first, distilled students last
  (after their teacher)."""
  s = config.sweep
  if s.tokens and s.budgets:
    raise ValueError("sweep.tokens and sweep.budgets are exclusive: give one of them, "
                     f"got tokens={tuple(s.tokens)} and budgets={tuple(s.budgets)}")
  widths = _axis(s.widths, "widths", int) or [config.model.width]
  depths = _axis(s.depths, "depths", int) or [config.model.depth]
  rates = _axis(s.learning_rates, "learning_rates", float) or [config.train.learning_rate]
  seeds = _axis(s.seeds, "seeds", int) or [config.train.seed]
  amounts = (_axis(s.budgets, "budgets", float) or _axis(s.tokens, "tokens", float)
             or [None])
  sparsities = _axis(s.sparsities, "sparsities", float) or [None]
  precisions = list(s.precisions) or [None]
  runs = []
  for width, depth, rate, seed, amount, sparsity, precision in itertools.product(
      widths, depths, rates, seeds, amounts, sparsities, precisions):
    c = ml_collections.ConfigDict(run_config_dict(config))
    c.model.width, c.model.depth = width, depth
    c.train.learning_rate, c.train.seed = rate, seed
    label = f"w{width}-d{depth}-lr{rate:g}-s{seed}" + _apply_compression(c, sparsity,
                                                                         precision)
    if amount is not None:
      spec = config_lib.resolve(c, dataset)
      if s.budgets:
        flops_per_unit = flops_lib.train_flops_per_step(spec.model, 1) / (
            spec.model.units_per_example)
        steps, label = _steps_for(amount / flops_per_unit, spec), f"{label}-C{amount:.3g}"
      else:
        steps, label = _steps_for(amount, spec), f"{label}-D{amount:.3g}"
      if steps < s.min_steps:
        continue
      c.train.steps = steps
      c.train.warmup_steps = min(c.train.warmup_steps, steps)
      c.train.eval_every = min(c.train.eval_every, steps)
    spec = config_lib.resolve(c, dataset)
    runs.append(PlannedRun(run_id=run_id(c), label=label, config=c, spec=spec,
                           budget=amount if s.budgets else None))
  if not runs:
    raise ValueError(f"the sweep plans no runs (every run is below sweep.min_steps="
                     f"{s.min_steps}); raise sweep.tokens or sweep.budgets")
  if s.distill_from_largest:
    runs += _students(runs, dataset)
  ids = [r.run_id for r in runs]
  if len(set(ids)) != len(ids):
    raise ValueError("the sweep lists the same run twice; remove duplicate axis values")
  return sorted(runs, key=lambda r: (r.teacher_id is not None, r.flops, r.label))


def parse_worker(text: str) -> tuple[int, int]:
  """'i/K' -> (i, K): this process trains runs i, i+K, i+2K, ... of the plan."""
  try:
    index, count = (int(x) for x in text.split("/"))
  except ValueError:
    raise ValueError(f"--worker must look like i/K with 0 <= i < K, got {text!r}") from None
  if not 0 <= index < count:
    raise ValueError(f"--worker must look like i/K with 0 <= i < K, got {text!r}")
  return index, count


def estimated_seconds(run: PlannedRun, flops_per_second: float) -> float:
  return run.flops / flops_per_second if flops_per_second > 0 else math.nan
