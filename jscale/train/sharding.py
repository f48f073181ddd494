"""Data parallelism: one mesh axis ``data`` over every device of every host.

Parameters and optimizer state are replicated; each batch is split along its leading
axis. Under ``jax.jit`` with these shardings XLA inserts the gradient all-reduce, so the
train step is written as if for one device (the GSPMD form of the classic pmapped
data-parallel step). Each process builds only its own rows of the global batch and
``make_array_from_process_local_data`` stitches them, which is what makes the same code
run on a TPU VM slice or several GPU nodes after ``jax.distributed.initialize()``.
"""

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jscale.errors import BadInput

DATA_AXIS = "data"


@dataclasses.dataclass(frozen=True)
class DataParallel:
  mesh: Mesh

  @property
  def num_devices(self) -> int:
    return self.mesh.size

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  @property
  def batch(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

  def check_batch(self, global_batch: int, field: str = "train.global_batch") -> None:
    if global_batch % self.num_devices:
      raise BadInput(
          f"{field} must be divisible by the device count {self.num_devices}, got {global_batch}")

  def shard_batch(self, local_batch: dict) -> dict:
    """Process-local rows (this host's slice of the global batch) -> global arrays."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.batch, np.asarray(x)),
        local_batch)


def data_parallel(num_devices: int = 0) -> DataParallel:
  """A mesh over the first ``num_devices`` devices (0 = all devices of all hosts)."""
  devices = jax.devices()
  if num_devices < 0 or num_devices > len(devices):
    raise BadInput(
        f"num_devices must be in [0, {len(devices)}] (0 = all), got {num_devices}")
  if num_devices:
    devices = devices[:num_devices]
  return DataParallel(Mesh(np.array(devices), (DATA_AXIS,)))


def process_shard() -> tuple[int, int]:
  """(index, count) of this host's slice of every global batch."""
  return jax.process_index(), jax.process_count()
