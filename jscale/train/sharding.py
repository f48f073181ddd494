"""Where arrays live: a ``(data, fsdp, tensor)`` device mesh and the layout of a run on it.

* ``data``: data parallelism. Each device of the axis holds whole parameters and optimizer
  state and its rows of every batch; XLA inserts the gradient all-reduce.
* ``fsdp``: fully sharded data parallelism. The batch also splits over it, and every
  weight is split along its model dimension ("embed") over it, with its gradients and
  Adam moments, so a device holds 1/fsdp of the training state; XLA gathers each weight
  where a layer needs it and reduce-scatters its gradient (nanodo's and MaxText's FSDP).
* ``tensor``: tensor (Megatron-style) parallelism inside a layer: the MLP's hidden units,
  the attention heads and the vocabulary are split over it. Its collectives run once per
  layer, so the axis stays on the devices of one host.

What each parameter dimension is comes from its family's parameter table
(``jscale.models.params``); one rules table, :data:`RULES`, maps those logical axes to
mesh axes. A dimension the mesh axis does not divide, an axis of size 1, and any tensor
under ``shard_min_bytes`` (all-gathering it costs more in latency than its memory saves)
stay replicated. Optimizer state follows its parameter: every copy of a parameter inside
the state (Adam's moments, a pruning mask) is found by its path and laid out like it;
counts are replicated. The parameter tree itself is plain (no boxed flax metadata), so
weight-decay masks, muP multipliers, pruning and quantization see the same tree on every
mesh.

All of it is ``jax.jit`` shardings (GSPMD): the step is written as if for one device,
which is why a run on any mesh equals its one-device run to float rounding. Each process
builds only its own rows of the global batch and ``make_array_from_process_local_data``
stitches them, so the same code runs on a TPU VM slice or several GPU nodes after
``jax.distributed.initialize()``.
"""

import dataclasses
import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jscale.errors import BadInput
from jscale.models.params import ParamTable, param_name

DATA_AXIS, FSDP_AXIS, TENSOR_AXIS = "data", "fsdp", "tensor"
MESH_AXES = (DATA_AXIS, FSDP_AXIS, TENSOR_AXIS)
# Logical axis of a parameter dimension -> the mesh axis that splits it. Any other logical
# axis (head_dim, qkv, position, window, classes) is never split.
RULES = {"embed": FSDP_AXIS, "mlp": TENSOR_AXIS, "heads": TENSOR_AXIS, "vocab": TENSOR_AXIS}
PARAM_BYTES = 4  # parameters are float32; shard_min_bytes counts an array's elements so
#                  that a pruning mask (bool) follows its parameter's decision


@dataclasses.dataclass(frozen=True)
class LayoutSpec:
  """The layout keys of a run config (``train.mesh``, ``train.shard_min_bytes``): where a
  run trains, never what it computes, so they are no part of a run's id."""
  mesh: tuple[int, int, int] = (-1, 1, 1)  # (data, fsdp, tensor); one may be -1 = the rest
  shard_min_bytes: int = 2**20

  def __post_init__(self):
    check_mesh(self.mesh, "train.mesh")
    object.__setattr__(self, "mesh", tuple(self.mesh))
    if isinstance(self.shard_min_bytes, bool) or not isinstance(self.shard_min_bytes, int) \
        or self.shard_min_bytes < 0:
      raise BadInput(f"train.shard_min_bytes must be an integer >= 0, got "
                     f"{self.shard_min_bytes!r}")


def check_mesh(mesh, field: str) -> None:
  """Three integer sizes, each positive or -1 (at most one -1)."""
  ok = (isinstance(mesh, (tuple, list)) and len(mesh) == 3
        and all(isinstance(n, int) and not isinstance(n, bool) and (n > 0 or n == -1)
                for n in mesh)
        and list(mesh).count(-1) <= 1)
  if not ok:
    raise BadInput(f"{field} must be three sizes (data, fsdp, tensor), each a positive "
                   f"integer or one of them -1 (= the remaining devices), got {mesh!r}")


def mesh_sizes(mesh, device_count: int, field: str = "train.mesh") -> dict[str, int]:
  """``mesh`` with its -1 resolved for ``device_count`` devices, by axis name."""
  check_mesh(mesh, field)
  known = math.prod(n for n in mesh if n != -1)
  sizes = [device_count // known if n == -1 else n for n in mesh]
  if -1 in mesh and device_count % known or math.prod(sizes) != device_count:
    raise BadInput(f"{field}={tuple(mesh)} must multiply to the device count {device_count} "
                   "(one size may be -1 = the remaining devices)")
  return dict(zip(MESH_AXES, sizes))


def partition_spec(shape: tuple[int, ...], axes, sizes: dict[str, int],
                   min_bytes: int) -> PartitionSpec:
  """How an array of ``shape`` whose dimensions carry the logical ``axes`` (None: not a
  parameter) splits over a mesh of ``sizes``: each dimension over its rule's mesh axis
  where that axis has several devices, divides the dimension and is not used already."""
  if axes is None or math.prod(shape) * PARAM_BYTES < min_bytes:
    return PartitionSpec()
  names, used = [], set()
  for size, logical in zip(shape, axes):
    axis = RULES.get(logical)
    split = axis is not None and axis not in used and sizes[axis] > 1 and size % sizes[axis] == 0
    names.append(axis if split else None)
    if split:
      used.add(axis)
  while names and names[-1] is None:
    names.pop()
  return PartitionSpec(*names)


def leaf_specs(tree, table: ParamTable, sizes: dict[str, int], min_bytes: int):
  """The PartitionSpec of every leaf of ``tree`` (parameters, a TrainState, an optimizer
  state: arrays or ShapeDtypeStructs): a parameter's, or a copy's of one, by the
  table; replicated for everything else."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: partition_spec(np.shape(leaf),
                                        table.axes(param_name(path), np.ndim(leaf)),
                                        sizes, min_bytes), tree)


def bytes_per_device(tree, table: ParamTable, sizes: dict[str, int], min_bytes: int) -> int:
  """Bytes of ``tree``'s arrays that one device holds when laid out by the table."""
  specs = jax.tree.leaves(leaf_specs(tree, table, sizes, min_bytes),
                          is_leaf=lambda x: isinstance(x, PartitionSpec))
  total = 0
  for leaf, spec in zip(jax.tree.leaves(tree), specs):
    split = math.prod(sizes[axis] for axis in spec if axis is not None)
    total += math.prod(np.shape(leaf)) * np.dtype(leaf.dtype).itemsize // split
  return total


@dataclasses.dataclass(frozen=True)
class Layout:
  """A mesh and how a run's arrays lie on it."""
  mesh: Mesh  # axes MESH_AXES
  shard_min_bytes: int = LayoutSpec.shard_min_bytes

  @property
  def num_devices(self) -> int:
    return self.mesh.size

  @property
  def sizes(self) -> dict[str, int]:
    return dict(self.mesh.shape)

  @property
  def batch_split(self) -> int:
    """Devices each global batch splits over: data x fsdp."""
    return self.sizes[DATA_AXIS] * self.sizes[FSDP_AXIS]

  @property
  def is_data_parallel(self) -> bool:
    """True when every device holds whole parameters (fsdp = tensor = 1)."""
    return self.sizes[DATA_AXIS] == self.num_devices

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  @property
  def batch(self) -> NamedSharding:
    """Batches: rows split over (data, fsdp), the same rows on every tensor device."""
    return NamedSharding(self.mesh, PartitionSpec((DATA_AXIS, FSDP_AXIS)))

  def shardings(self, tree, table: ParamTable):
    """NamedShardings of ``tree``'s leaves (see ``leaf_specs``)."""
    return jax.tree.map(lambda spec: NamedSharding(self.mesh, spec),
                        leaf_specs(tree, table, self.sizes, self.shard_min_bytes),
                        is_leaf=lambda x: isinstance(x, PartitionSpec))

  def abstract(self, tree, table: ParamTable):
    """ShapeDtypeStructs of ``tree`` placed as ``shardings`` places them: a restore target
    (orbax reads each device's part onto this layout, whatever layout saved it)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, self.shardings(tree, table))

  def bytes_per_device(self, tree, table: ParamTable) -> int:
    return bytes_per_device(tree, table, self.sizes, self.shard_min_bytes)

  def check_batch(self, global_batch: int, field: str = "train.global_batch") -> None:
    n = self.batch_split
    if global_batch % n:
      where = (f"the device count {n}" if n == self.num_devices
               else f"data x fsdp = {n} of the mesh {self.describe()} (the batch splits "
                    "over them)")
      raise BadInput(f"{field} must be divisible by {where}, got {global_batch}")

  def shard_batch(self, local_batch: dict) -> dict:
    """Process-local rows (this host's slice of the global batch) -> global arrays."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.batch, np.asarray(x)),
        local_batch)

  def describe(self) -> str:
    return "(" + ", ".join(f"{axis}={n}" for axis, n in self.sizes.items()) + ")"


# The name call sites used while the mesh had only a data axis.
DataParallel = Layout


def device_grid(devices, mesh, field: str = "train.mesh") -> np.ndarray:
  """``devices`` as a [data, fsdp, tensor] array for ``mesh`` (its -1 resolved), ordered
  process by process so that the innermost axis, tensor, is one host's devices."""
  devices = sorted(devices, key=lambda d: (d.process_index, d.id))
  sizes = mesh_sizes(mesh, len(devices), field)
  per_host = min(sum(d.process_index == p for d in devices)
                 for p in {d.process_index for d in devices})
  tensor = sizes[TENSOR_AXIS]
  if per_host % tensor:
    raise BadInput(f"{field} tensor={tensor} must divide the {per_host} devices of one "
                   "host: the tensor axis stays within a host")
  return np.asarray(devices).reshape([sizes[axis] for axis in MESH_AXES])


def make_layout(spec: LayoutSpec = LayoutSpec(), num_devices: int = 0,
                field: str = "train.mesh") -> Layout:
  """``spec``'s mesh over the first ``num_devices`` devices (0 = all devices of all
  hosts); ``field`` names the mesh in errors."""
  devices = jax.devices()
  if num_devices < 0 or num_devices > len(devices):
    raise BadInput(
        f"num_devices must be in [0, {len(devices)}] (0 = all), got {num_devices}")
  grid = device_grid(devices[:num_devices or len(devices)], spec.mesh, field)
  return Layout(Mesh(grid, MESH_AXES), spec.shard_min_bytes)


def data_parallel(num_devices: int = 0) -> Layout:
  """Data parallelism over the first ``num_devices`` devices (0 = all): the mesh
  (-1, 1, 1), every array replicated but the batch."""
  return make_layout(LayoutSpec(), num_devices)


def process_shard() -> tuple[int, int]:
  """(index, count) of this host's slice of every global batch: its devices hold a
  contiguous block of the batch rows (``make_layout`` orders them process by process)."""
  return jax.process_index(), jax.process_count()
