"""Which runs of a sweep train together as one program, decided from the plan alone.

Same-shape runs (``jscale.train.grouping``) may train as one vmapped program. Whether a
group does is a rule of its shapes, the device kind and the device count — never a
timing — so one config gives the same training units, and so the same numbers (batched
and alone agree to rtol 1e-5, not bit for bit), on every machine of a kind, loaded or
quiet. Each decision is recorded in ``DIR/batching.json`` and kept by a resumed or
extended sweep, whatever the machine it resumes on.

The rule (``--batch_runs=auto``): batch where the devices' peak FLOP/s is known
(accelerators) and one run's step would take less than ``LATENCY_BOUND_SECONDS`` at that
peak over the devices: such steps are bound by launch and collective latency, which the
runs of a group share. Where no peak is known (CPUs) train one by one: on the 2-core dev
box the vmapped step of 8 runs measured 0.4-0.9x the speed of their 8 sequential steps
(BUILD_NOTES.md, "Sharding and model batching").
"""

import hashlib
import json

from etils import epath

from jscale.models import flops as flops_lib
from jscale.sweep.plan import PlannedRun
from jscale.train import grouping
from jscale.train.metrics import write_json_atomic

MODES = ("auto", "always", "never")
LATENCY_BOUND_SECONDS = 1e-3
DECISIONS_FILE = "batching.json"


def pays(run: PlannedRun, device_kind: str, device_count: int) -> bool:
  """The rule of the module docstring for a group of runs shaped like ``run``."""
  spec = run.spec
  peak = flops_lib.peak_flops_per_device(device_kind, spec.train.compute_dtype)
  if not peak:
    return False
  step_flops = flops_lib.train_flops_per_step(spec.model, spec.train.global_batch)
  return step_flops / (peak * device_count) < LATENCY_BOUND_SECONDS


def _phase(run: PlannedRun) -> int:
  """Runs that start from another run's result come after it: trunks and independent runs
  first, then branches, then distilled students."""
  return 2 if run.teacher_id else 1 if run.trunk_id else 0


def shape_name(run: PlannedRun) -> str:
  return hashlib.sha256(repr(grouping.shape_key(run.spec)).encode()).hexdigest()[:12]


def _batchable(members: list[PlannedRun]) -> bool:
  return len(members) > 1 and not any(r.spec.compress.order or r.teacher_id for r in members)


def training_units(todo: list[PlannedRun], mode: str, device_kind: str, device_count: int,
                   decisions: dict[str, bool]) -> list[list[PlannedRun]]:
  """``todo`` in the order it is trained, as units: a list of one run, or of same-shape
  runs trained together. A unit never holds a run and one it starts from.

  ``decisions`` (shape name -> batched?) holds the choices recorded earlier; under
  "auto" a shape not in it is decided by :func:`pays` and added; "always" batches (and
  records it), "never" trains one by one (and records nothing).
  """
  if mode not in MODES:
    raise ValueError(f"batching mode must be one of {MODES}, got {mode!r}")
  units = []
  phases = [[r for r in todo if _phase(r) == phase] for phase in range(3)]
  for phase in phases:
    for group in grouping.group_runs([r.spec for r in phase]):
      members = [phase[i] for i in group]
      if mode == "never" or not _batchable(members):
        units += [[r] for r in members]
        continue
      key = shape_name(members[0])
      if mode == "always":
        decisions[key] = True
      elif key not in decisions:
        decisions[key] = pays(members[0], device_kind, device_count)
      units += [members] if decisions[key] else [[r] for r in members]
  return units


def read_decisions(workdir: epath.Path) -> dict[str, bool]:
  path = workdir / DECISIONS_FILE
  return json.loads(path.read_text()) if path.exists() else {}


def write_decisions(workdir: epath.Path, decisions: dict[str, bool]) -> None:
  if decisions:
    write_json_atomic(workdir / DECISIONS_FILE, decisions)
