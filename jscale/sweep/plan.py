"""A sweep's run grid: the product of the axes in ``config.sweep``.

Each planned run is a full run config (the base config with one value per axis). Its id
is a hash of the fields that change what the run computes, so editing a sweep adds new
runs and keeps finished ones, and the same run is never trained twice.

Trunks and branches: under ``train.schedule = "wsd"`` the runs of a ``tokens`` (or
``budgets``) axis that differ only in length share everything before their cooldowns.
Each such family gets one constant-rate *trunk*, as long as the latest cooldown start,
which keeps a checkpoint at every branch point; each run is then a *branch* that starts
from the trunk's checkpoint at its own cooldown start and trains only its cooldown. A
branch computes exactly what the independent run would (same config, same id), for a
fraction of the FLOPs.
"""

import dataclasses
import hashlib
import itertools
import json
import math
import os

import jax
import ml_collections

from jscale.errors import BadInput
from jscale.models import flops as flops_lib
from jscale.sweep.spec import AXIS_KEYS, SweepSpec
from jscale.train import config as config_lib
from jscale.train import folder as folder_lib
from jscale.train import memory, sharding
from jscale.train.optim import cooldown_start
from jscale.train.spec import RunSpec

# Keys added after run ids were first defined: left out of the id while they hold their
# default (base_config's), so the runs of existing workdirs keep their ids.
_LATER_KEYS = (("train", "cooldown_fraction"), ("train", "cooldown_shape"),
               ("model", "parametrization"), ("model", "mup_base_width"))
# Fields that must agree across one workdir: results measured under different values
# would be silently incomparable.
COMPARABLE_FIELDS = ("model.family", "model.parametrization", "data.name", "data.seq_len",
                     "data.validation_fraction", "data.files_glob", "train.eval_batches",
                     "train.global_batch")


@dataclasses.dataclass(frozen=True)
class PlannedRun:
  run_id: str
  label: str
  spec: RunSpec
  config_json: str  # the run's config as its config.json holds it (its id hashes this)
  budget: float | None = None  # the IsoFLOP budget this run belongs to
  teacher_id: str | None = None  # distilled students: the run that teaches them
  trunk_id: str | None = None  # branches: the trunk they start from ...
  branch_step: int | None = None  # ... at this step (their cooldown start)
  is_trunk: bool = False

  @property
  def flops(self) -> float:
    return flops_lib.train_flops_per_step(self.spec.model, self.spec.train.global_batch) * (
        self.spec.train.steps)

  @property
  def own_steps(self) -> int:
    """Steps this run trains itself: a branch only those after the branch point."""
    return self.spec.train.steps - (self.branch_step or 0)

  @property
  def cost_flops(self) -> float:
    """FLOPs of the steps this run trains itself (``own_steps``)."""
    return self.flops * self.own_steps / self.spec.train.steps

  @property
  def tokens(self) -> int:
    return (self.spec.train.global_batch * self.spec.model.units_per_example
            * self.spec.train.steps)


def run_id(config: ml_collections.ConfigDict) -> str:
  """A hash of what the run computes (``config.identity``)."""
  resolved = config_lib.identity(config_lib.run_config_dict(config))
  defaults = config_lib.base_config()
  for section, key in _LATER_KEYS:
    if resolved.get(section, {}).get(key, defaults[section][key]) == defaults[section][key]:
      resolved.get(section, {}).pop(key, None)
  text = json.dumps(resolved, sort_keys=True, separators=(",", ":"), default=list)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def _planned(config: ml_collections.ConfigDict, label: str, dataset, **fields) -> PlannedRun:
  return PlannedRun(run_id=run_id(config), label=label, spec=config_lib.resolve(config, dataset),
                    config_json=config_lib.record(config), **fields)


def comparable_fields(config: ml_collections.ConfigDict, dataset) -> dict:
  values = {}
  for dotted in COMPARABLE_FIELDS:
    section, key = dotted.split(".")
    values[dotted] = config[section][key]
  # The data's content (a token folder's manifest fingerprint): a changed corpus is
  # another experiment even under the same name or folder.
  values["data.content_sha256"] = dataset.metadata()["content_sha256"]
  return values


def _keys_set_by(axis: str, values) -> tuple[str, ...]:
  """The run keys a non-empty ``axis`` sets (precisions set a pass's bits only when
  they list that pass)."""
  if axis != "precisions":
    return AXIS_KEYS[axis]
  return ("train.compute_dtype",) + tuple(
      f"compress.{kind}.bits" for kind in ("qat", "ptq")
      if any(str(p).endswith(f"-{kind}") for p in values))


def _check_pinned(config: ml_collections.ConfigDict, s: SweepSpec) -> None:
  """A pinned run key that an axis would set per run is an error naming both."""
  for axis in AXIS_KEYS:
    values = getattr(s, axis)
    clash = [k for k in (_keys_set_by(axis, values) if values else ()) if k in s.pinned]
    if not clash:
      continue
    key, value = clash[0], config_lib.lookup(config, clash[0])
    if axis in ("widths", "depths", "learning_rates", "seeds", "sparsities"):
      fix = f"to sweep only {value!r} give --config.sweep.{axis}='({value!r},)' instead"
    elif axis == "distill_from_largest":
      fix = "or turn the students off with --config.sweep.distill_from_largest=False"
    else:
      fix = f"to use {key} unswept give --config.sweep.{axis}='()' as well"
    raise BadInput(f"{key}={value!r} is set for the whole sweep but sweep.{axis}="
                     f"{values!r} sets {key} for each run; {fix}")


def _clamp_to_steps(c: ml_collections.ConfigDict, steps: int, pinned, axis: str,
                    label: str) -> None:
  """Warm-up and eval cadence longer than a tokens/budgets run shrink to its length,
  unless the user fixed them (pinned): then it is an error naming both keys."""
  for key in ("warmup_steps", "eval_every"):
    if c.train[key] <= steps:
      continue
    if f"train.{key}" in pinned:
      raise BadInput(f"train.{key}={c.train[key]} is longer than run {label}, whose "
                       f"train.steps={steps} comes from sweep.{axis}; give at most {steps} "
                       "or raise sweep.min_steps")
    c.train[key] = steps


def _steps_for(units: float, run: RunSpec) -> int:
  return max(1, round(units / (run.train.global_batch * run.model.units_per_example)))


def law_size(model, law_params: str) -> int:
  """A model's N as the law counts it (sweep.law_params): every parameter, or the
  non-embedding ones."""
  counts = model.param_counts()
  return counts.total if law_params == "total" else counts.non_embedding


def _outside_token_bounds(run: RunSpec, steps: int, s: SweepSpec) -> bool:
  """Whether ``steps`` of ``run`` train fewer tokens per parameter than
  sweep.min_tokens_per_param, or more than sweep.max_tokens_per_param (when > 0)."""
  tokens = steps * run.train.global_batch * run.model.units_per_example
  ratio = tokens / law_size(run.model, s.law_params)
  return ratio < s.min_tokens_per_param or 0 < s.max_tokens_per_param < ratio


def _apply_compression(c: ml_collections.ConfigDict, sparsity: float | None,
                       precision: str | None) -> str:
  """Sets one compression variant on a run config; returns its label suffix."""
  label, passes = "", list(c.compress.passes)
  if sparsity:
    c.compress.prune.sparsity = sparsity
    passes.insert(0, "prune")
    label += f"-sparse{sparsity:g}"
  if precision is not None:
    if precision == "bfloat16":
      c.train.compute_dtype = "bfloat16"
    elif precision != "float32":
      bits, kind = precision.split("-")
      c.compress[kind].bits = int(bits[len("int"):])
      passes.append(kind)
    label += f"-{precision}"
  c.compress.passes = tuple(passes)
  return label


def _branch(runs: list[PlannedRun], members: list[int], dataset) -> list[PlannedRun]:
  """Turns the wsd runs ``runs[members]`` (one family: equal but for their length) into
  branches of one new trunk, which it returns (none when nothing branches)."""
  points = {}
  for i in members:
    spec = runs[i].spec
    if spec.train.schedule != "wsd" or spec.compress.order:
      return []  # pruning schedules and distillation depend on the run's length
    start = cooldown_start(spec.train)
    if start >= max(1, spec.train.warmup_steps):
      points[i] = start
  if not points:
    return []
  c = ml_collections.ConfigDict(json.loads(runs[min(points)].config_json))
  c.train.schedule, c.train.steps = "constant", max(points.values())
  c.train.eval_every = min(c.train.eval_every, c.train.steps)
  c.checkpoint.keep_steps = tuple(sorted(set(points.values())))
  label = runs[min(points)].label.rsplit("-", 1)[0] + "-trunk"
  trunk = _planned(c, label, dataset, is_trunk=True)
  for i, step in points.items():
    runs[i] = dataclasses.replace(runs[i], trunk_id=trunk.run_id, branch_step=step)
  return [trunk]


def _students(runs: list[PlannedRun], dataset) -> list[PlannedRun]:
  """A distilled twin of every dense run but the largest, which teaches them."""
  dense = [r for r in runs if not r.spec.compress.order and not r.is_trunk
           and r.spec.train.compute_dtype == "float32"]
  if len(dense) < 2:
    raise BadInput("sweep.distill_from_largest needs at least two dense sizes, "
                     f"got {len(dense)}")
  teacher = max(dense, key=lambda r: r.flops)
  students = []
  for r in dense:
    if r.spec.model.param_counts().total >= teacher.spec.model.param_counts().total:
      continue
    c = ml_collections.ConfigDict(json.loads(r.config_json))
    c.compress.passes = ("distill",)
    c.compress.distill.teacher = f"run:{teacher.run_id}"
    students.append(_planned(c, f"{r.label}-distilled", dataset, budget=r.budget,
                             teacher_id=teacher.run_id))
  return students


def plan_runs(config: ml_collections.ConfigDict, s: SweepSpec, dataset,
              device_count: int = 0) -> list[PlannedRun]:
  """Expands the sweep ``s`` over the run config ``config`` into runs: smallest compute
  first, distilled students last (after their teacher). ``device_count`` (0 = all) is
  what the memory check splits the runs over."""
  _check_pinned(config, s)
  widths = s.widths or [config.model.width]
  depths = s.depths or [config.model.depth]
  rates = s.learning_rates or [config.train.learning_rate]
  seeds = s.seeds or [config.train.seed]
  amounts = s.budgets or s.tokens or [None]
  sparsities = s.sparsities or [None]
  precisions = s.precisions or [None]
  runs, families = [], {}
  for width, depth, rate, seed, amount, sparsity, precision in itertools.product(
      widths, depths, rates, seeds, amounts, sparsities, precisions):
    if s.seed_widths and seed != seeds[0] and width not in s.seed_widths:
      continue
    c = ml_collections.ConfigDict(config_lib.run_config_dict(config))
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
      if steps < s.min_steps or _outside_token_bounds(spec, steps, s):
        continue
      c.train.steps = steps
      _clamp_to_steps(c, steps, s.pinned, "budgets" if s.budgets else "tokens", label)
    runs.append(_planned(c, label, dataset, budget=amount if s.budgets else None))
    if amount is not None:
      family = (width, depth, rate, seed, sparsity, precision)
      families.setdefault(family, []).append(len(runs) - 1)
  if not runs:
    raise BadInput(f"the sweep plans no runs (every run is below sweep.min_steps="
                     f"{s.min_steps}); raise sweep.tokens or sweep.budgets")
  for members in families.values():
    runs += _branch(runs, members, dataset)
  if s.distill_from_largest:
    runs += _students(runs, dataset)
  ids = [r.run_id for r in runs]
  if len(set(ids)) != len(ids):
    raise BadInput("the sweep lists the same run twice; remove duplicate axis values")
  check_fits(runs, s, config_lib.layout_spec(config), device_count)
  _check_teachers(runs)
  return sorted(runs, key=lambda r: (r.teacher_id is not None, r.trunk_id is not None,
                                     r.flops, r.label))


def _check_teachers(runs: list[PlannedRun]) -> None:
  """A teacher given as a folder must be a trained run before anything starts (students
  of this sweep's own runs, "run:<id>", are checked when they start)."""
  for r in runs:
    p = r.spec.compress.distill
    if p is not None and not p.teacher.startswith("run:"):
      if not folder_lib.is_trained_run(p.teacher):
        raise BadInput(f"compress.distill.teacher {p.teacher} is not a trained run "
                       f"(no {folder_lib.CONFIG} and {folder_lib.CHECKPOINTS}/ there)")


# Where the devices' peak is unknown (CPUs), sweep.max_flops=0 admits this much: about a
# day at the ~1e11 FLOP/s a 2-core CPU sustains on these models.
_UNKNOWN_PEAK_MAX_FLOPS = 1e16
_WEEK_SECONDS = 7 * 24 * 3600


def default_max_flops(compute_dtype: str) -> float:
  """The FLOPs all devices deliver in a week at their peak (sweep.max_flops=0)."""
  devices = jax.devices()
  peak = flops_lib.peak_flops_per_device(devices[0].device_kind, compute_dtype)
  return peak * len(devices) * _WEEK_SECONDS if peak else _UNKNOWN_PEAK_MAX_FLOPS


def device_memory_bytes() -> int:
  """Memory of one local device: its allocator limit, or the host's memory on CPU."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(runs: list[PlannedRun], s: SweepSpec,
               layout: sharding.LayoutSpec = sharding.LayoutSpec(),
               device_count: int = 0) -> None:
  """Refuses a plan this machine cannot finish (sweep.max_flops) or hold
  (sweep.max_memory_gb: bytes per device on the run's mesh, ``jscale.train.memory``),
  stating the estimate, a mesh that would hold it, and the key that raises the limit."""
  max_flops = s.max_flops
  limit = max_flops or default_max_flops(runs[0].spec.train.compute_dtype)
  total = sum(r.cost_flops for r in runs)
  if total > limit:
    where = (f"sweep.max_flops={max_flops:.3g}" if max_flops
             else f"what these devices finish in a week (sweep.max_flops=0: {limit:.3g})")
    raise BadInput(f"the plan needs {total:.3g} training FLOPs ({len(runs)} runs), over "
                     f"{where}; to run it anyway raise the limit, "
                     f"e.g. --config.sweep.max_flops={_round_up(total):.2g}")
  limit_gb = s.max_memory_gb
  limit = limit_gb * 1e9 or device_memory_bytes()
  devices = device_count or jax.device_count()
  sizes = sharding.mesh_sizes(layout.mesh, devices)
  estimator = memory.Estimator(layout.shard_min_bytes)
  need, largest = max((estimator.bytes_per_device(r.spec, sizes, limit), i)
                      for i, r in enumerate(runs))
  if need > limit:
    run = runs[largest]
    where = (f"sweep.max_memory_gb={limit_gb:g}" if limit_gb
             else f"the {limit / 1e9:.3g} GB of one device (sweep.max_memory_gb=0)")
    fits = estimator.fitting_mesh(run.spec, devices, memory.per_host_devices(), limit)
    mesh = ",".join(str(n) for n in sizes.values())
    remedy = (f"train it on --config.train.mesh='({','.join(map(str, fits[0]))})' "
              f"({fits[1] / 1e9:.3g} GB per device), shrink it,"
              if fits else f"no mesh of these {devices} devices holds it: shrink it,")
    raise BadInput(f"run {run.label} needs at least {need / 1e9:.3g} GB per device on the "
                   f"mesh ({mesh}) (parameters, gradients and AdamW state plus activations), "
                   f"over {where}; {remedy} or if the estimate is wrong raise the limit, "
                   f"e.g. --config.sweep.max_memory_gb={_round_up(need / 1e9):.2g}")


def _round_up(x: float) -> float:
  """``x`` rounded up to two significant digits (a limit that admits ``x``)."""
  scale = 10 ** (math.floor(math.log10(x)) - 1) if x > 0 else 1
  return math.ceil(x / scale) * scale


def parse_worker(text: str) -> tuple[int, int]:
  """'i/K' -> (i, K): this process trains runs i, i+K, i+2K, ... of the plan."""
  try:
    index, count = (int(x) for x in text.split("/"))
  except ValueError:
    raise BadInput(f"--worker must look like i/K with 0 <= i < K, got {text!r}") from None
  if not 0 <= index < count:
    raise BadInput(f"--worker must look like i/K with 0 <= i < K, got {text!r}")
  return index, count


def estimated_seconds(run: PlannedRun, flops_per_second: float) -> float:
  return run.cost_flops / flops_per_second if flops_per_second > 0 else math.nan
