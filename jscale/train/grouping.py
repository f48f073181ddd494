"""Which runs can train together, and how a group of runs lies on the device mesh.

Runs share one compiled program when every array shape and every structural choice of
the step agree: the model spec (width, depth, heads, context, vocabulary, compute
dtype), the global batch, gradient accumulation, and the optimizer's static
constants (Adam betas and epsilon, the clipping threshold, which decides whether
clipping is in the graph at all). Seed, learning rate, schedule, warm-up, weight decay
and step count travel as per-run arrays, so they may differ inside a group.

A group is laid out on a 2-D mesh ``(runs, data)`` over the data-parallel devices:
the run axis splits the stacked runs over devices (no communication at all between
them), the data axis splits each run's batch as in ``jscale.train.sharding``. The group is
padded with inactive "ghost" slots to a multiple of the run-axis size.
"""

import dataclasses
import math
from typing import Sequence

import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jscale.errors import BadInput
from jscale.train.sharding import DataParallel
from jscale.train.spec import RunSpec

RUNS_AXIS, DATA_AXIS = "runs", "data"
MAX_GROUP_SIZE = 16  # more stacked runs add memory but little speed on small devices


def shape_key(run: RunSpec) -> tuple:
  """Runs with equal keys compile to the same batched program."""
  t = run.train
  return (run.model, run.data, run.compress, t.global_batch, t.grad_accum, t.b1, t.b2, t.eps,
          t.clip_norm, t.eval_batches)


def group_runs(runs: Sequence[RunSpec], max_size: int = MAX_GROUP_SIZE) -> list[list[int]]:
  """Indices of ``runs`` in groups of equal shape key, at most ``max_size`` each.

  Inside a shape, runs are sorted by step count before being cut into groups, so a
  group's members finish close together: a member that has finished still occupies
  its slot (its update is masked, not skipped) until the longest member ends.
  Groups come in the order of their first member in ``runs``.
  """
  if not isinstance(max_size, int) or max_size < 1:
    raise ValueError(f"max_size must be a positive integer, got {max_size!r}")
  by_key: dict[tuple, list[int]] = {}
  for i, run in enumerate(runs):
    by_key.setdefault(shape_key(run), []).append(i)
  groups = []
  for members in by_key.values():
    members = sorted(members, key=lambda i: (runs[i].train.steps, i))
    groups += [members[j:j + max_size] for j in range(0, len(members), max_size)]
  return sorted(groups, key=min)


@dataclasses.dataclass(frozen=True)
class RunLayout:
  """Placement of a stacked group: leading axis = run slot."""
  mesh: Mesh  # axes (RUNS_AXIS, DATA_AXIS)
  slots: int  # runs + ghost slots; a multiple of the run-axis size

  @property
  def run_devices(self) -> int:
    return self.mesh.shape[RUNS_AXIS]

  @property
  def stacked(self) -> NamedSharding:
    """Per-run state and hyperparameters: [slots, ...] split over the run axis."""
    return NamedSharding(self.mesh, PartitionSpec(RUNS_AXIS))

  @property
  def batch(self) -> NamedSharding:
    """Per-run batches [slots, B, ...]: runs over the run axis, rows over the data axis."""
    return NamedSharding(self.mesh, PartitionSpec(RUNS_AXIS, DATA_AXIS))


def default_run_devices(num_runs: int, num_devices: int) -> int:
  """Runs over devices first (measured faster than data parallelism for small
  models, and free of collectives): the largest divisor of the device count that
  does not exceed the number of runs, so no device holds only ghost slots."""
  return max(d for d in range(1, num_devices + 1) if num_devices % d == 0 and d <= num_runs)


def make_layout(dp: DataParallel, num_runs: int, run_devices: int = 0) -> RunLayout:
  """Lays ``num_runs`` runs over ``dp``'s devices; ``run_devices`` 0 = the default."""
  if not dp.is_data_parallel:  # a run that shards its model trains alone
    raise BadInput(f"model-batched training needs a data-parallel mesh (fsdp = tensor = 1), "
                   f"got {dp.describe()}; train these runs one at a time")
  n = dp.num_devices
  if num_runs < 1:
    raise ValueError(f"num_runs must be a positive integer, got {num_runs}")
  run_devices = run_devices or default_run_devices(num_runs, n)
  if run_devices < 1 or n % run_devices:
    raise ValueError(f"run_devices must be a divisor of the device count {n}, got {run_devices}")
  devices = np.asarray(dp.mesh.devices).reshape(run_devices, n // run_devices)
  slots = math.ceil(num_runs / run_devices) * run_devices
  return RunLayout(Mesh(devices, (RUNS_AXIS, DATA_AXIS)), slots)
