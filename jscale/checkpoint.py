"""orbax checkpoints of a run: periodic, keep-N, asynchronous, corruption-tolerant.

A checkpoint holds two items: ``state`` (step, parameters, optimizer state: arrays) and
``meta`` (JSON: step, data position, seed). Data order and initialisation are pure
functions of (seed, step), so (state, data position) is everything an exact resume needs.

There is one way in: :meth:`Checkpointer.restore_latest` resumes from the newest
checkpoint that restores cleanly; a damaged one is skipped with a warning and the next
older one is tried. Restoring places arrays on the shardings of the abstract target, so a
run trained on 8 devices restores onto 1 (or the reverse).
"""

import logging

import jax
import orbax.checkpoint as ocp
from etils import epath

from jscale.config import CheckpointSpec

_STATE, _META = "state", "meta"


class Checkpointer:
  """One run's checkpoint folder."""

  def __init__(self, directory: epath.PathLike, spec: CheckpointSpec, *, read_only=False):
    self._spec = spec
    options = ocp.CheckpointManagerOptions(
        max_to_keep=spec.keep,
        enable_async_checkpointing=spec.async_save and not read_only,
        read_only=read_only,
        create=not read_only)
    self._manager = ocp.CheckpointManager(
        epath.Path(directory), item_names=(_STATE, _META), options=options)

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    return step % self._spec.every == 0

  def save(self, step: int, state, meta: dict) -> None:
    self._manager.save(
        step,
        args=ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state),
                                   _META: ocp.args.JsonSave(meta)}),
        force=True)

  def restore(self, step: int, abstract_state):
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract_state),
                                   _META: ocp.args.JsonRestore()}))
    return restored[_STATE], dict(restored[_META])

  def restore_latest(self, abstract_state, max_step: int | None = None):
    """(state, meta) of the newest restorable checkpoint (<= max_step), or None."""
    for step in reversed(self.steps()):
      if max_step is not None and step > max_step:
        continue
      try:
        return self.restore(step, abstract_state)
      except Exception as e:  # noqa: BLE001  (any damage: missing, truncated, garbled files)
        logging.warning("checkpoint at step %d could not be restored (%s: %s); "
                        "falling back to the previous one", step, type(e).__name__,
                        str(e).splitlines()[0] if str(e) else "")
    return None

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def abstract_like(tree, sharding):
  """ShapeDtypeStructs of ``tree`` placed on ``sharding`` (the restore target)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
