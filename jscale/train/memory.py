"""Memory one device needs to train a run on a mesh: the planner's estimate, the meshes
that would hold a run, and XLA's own figure for a compiled step.

The estimate counts what is certain: the training state (parameters, Adam moments, a
pruning wrapper's masks) and one copy of the gradients, each split as the layout splits
its parameter (``jscale.train.sharding``), plus, per example of a device's micro-batch,
the float32 input and output of every layer (2 x depth x width per unit). Real
activations (MLP hidden units, attention scores) only add to it, so it is a lower bound;
XLA's compiled memory analysis (:func:`compiled_bytes`) is the figure to trust where a
compilation is affordable.
"""

import dataclasses

import jax
import jax.numpy as jnp

from jscale.train import sharding
from jscale.train.spec import RunSpec
from jscale.train.step import BuiltRun, TrainState, abstract_state, build_run, jit_train_step

# Float32 weights, gradients and two AdamW moments: the least a parameter costs.
BYTES_PER_PARAM = 16


def activation_bytes(run: RunSpec, sizes: dict[str, int]) -> int:
  """The activation lower bound of one device (module docstring)."""
  split = sizes[sharding.DATA_AXIS] * sizes[sharding.FSDP_AXIS]
  micro_batch = -(-run.train.global_batch // (run.train.grad_accum * split))
  per_unit = 4 * 2 * run.model.depth * run.model.width * run.model.units_per_example
  return per_unit * micro_batch


def meshes(device_count: int, per_host: int) -> list[tuple[int, int, int]]:
  """Every (data, fsdp, tensor) over ``device_count`` devices whose tensor axis divides
  ``per_host``, most data-parallel first (the least communication per step)."""
  found = [(d, f, device_count // (d * f)) for d in range(1, device_count + 1)
           for f in range(1, device_count // d + 1) if device_count % (d * f) == 0]
  return sorted((m for m in found if per_host % m[2] == 0), key=lambda m: (-m[0], m[2]))


class Estimator:
  """The per-device estimate of the module docstring for runs on meshes. Runs of one
  model, compression and clipping share their traced state shapes."""

  def __init__(self, shard_min_bytes: int):
    self.shard_min_bytes = shard_min_bytes
    self._shapes: dict[tuple, TrainState] = {}

  def _state_shapes(self, run: RunSpec) -> TrainState:
    key = (run.model, run.compress, run.train.clip_norm > 0)
    if key not in self._shapes:
      built = build_run(run)
      self._shapes[key] = jax.eval_shape(lambda: built.init(0))
    return self._shapes[key]

  def bytes_per_device(self, run: RunSpec, sizes: dict[str, int], limit: float) -> int:
    """At least this many bytes on each device of a mesh of ``sizes``: the exact split of
    the state where its perfectly split bound fits ``limit``, else that bound (a model
    too large to trace is refused without tracing it)."""
    model_split = sizes[sharding.FSDP_AXIS] * sizes[sharding.TENSOR_AXIS]
    bound = (BYTES_PER_PARAM * run.model.param_counts().total // model_split
             + activation_bytes(run, sizes))
    if bound > limit:
      return bound
    shapes, table = self._state_shapes(run), run.model.param_table
    state = sharding.bytes_per_device(shapes, table, sizes, self.shard_min_bytes)
    gradients = sharding.bytes_per_device(shapes.params, table, sizes, self.shard_min_bytes)
    return state + gradients + activation_bytes(run, sizes)

  def fitting_mesh(self, run: RunSpec, device_count: int, per_host: int,
                   limit: float) -> tuple[tuple[int, int, int], int] | None:
    """(mesh, bytes per device) of the most data-parallel mesh that splits ``run``'s
    batch and holds it in ``limit`` bytes per device; None when none does."""
    for mesh in meshes(device_count, per_host):
      if run.train.global_batch % (mesh[0] * mesh[1]):
        continue
      need = self.bytes_per_device(run, dict(zip(sharding.MESH_AXES, mesh)), limit)
      if need <= limit:
        return mesh, need
    return None


def per_host_devices() -> int:
  """The fewest devices any process holds (the tensor axis must fit in it)."""
  counts: dict[int, int] = {}
  for d in jax.devices():
    counts[d.process_index] = counts.get(d.process_index, 0) + 1
  return min(counts.values())


def abstract_batch(built: BuiltRun, layout: sharding.Layout, global_batch: int) -> dict:
  """The shapes of a global batch of ``built``'s model, on ``layout``: its inputs and
  one integer target per logit vector."""
  inputs = built.model.dummy_inputs(global_batch)
  logits = jax.eval_shape(built.module.init_with_output, jax.random.key(0), inputs)[0]
  return {"inputs": jax.ShapeDtypeStruct(inputs.shape, inputs.dtype, sharding=layout.batch),
          "targets": jax.ShapeDtypeStruct(logits.shape[:-1], jnp.int32,
                                          sharding=layout.batch)}


@dataclasses.dataclass(frozen=True)
class CompiledMemory:
  """XLA's memory analysis of a compiled train step, bytes per device."""
  arguments: int  # the state and the batch
  outputs: int
  temporaries: int  # activations and everything else the step holds meanwhile
  aliased: int  # outputs written over donated arguments (the state)

  @classmethod
  def of(cls, compiled) -> "CompiledMemory":
    analysis = compiled.memory_analysis()
    return cls(arguments=analysis.argument_size_in_bytes,
               outputs=analysis.output_size_in_bytes,
               temporaries=analysis.temp_size_in_bytes, aliased=analysis.alias_size_in_bytes)

  @property
  def peak(self) -> int:
    """Live at once at worst: arguments, the outputs not written in place, temporaries."""
    return self.arguments + self.outputs - self.aliased + self.temporaries


def compiled_bytes(run: RunSpec, layout: sharding.Layout) -> CompiledMemory:
  """Compiles (does not run) ``run``'s train step on ``layout``; XLA's memory figures."""
  built = build_run(run)
  step, frozen = jit_train_step(built, layout)
  return CompiledMemory.of(step.lower(
      abstract_state(built, layout), abstract_batch(built, layout, run.train.global_batch),
      frozen).compile())
