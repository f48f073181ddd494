"""orbax checkpoints of a run: periodic, keep-N, asynchronous, verified on restore.

A checkpoint holds two items: ``state`` (step, parameters, optimizer state: arrays) and
``meta`` (JSON: step, data position, seed, and a digest of every array saved). Data order
and initialisation are pure functions of (seed, step), so (state, data position) is
everything an exact resume needs.

There is one way in: :meth:`Checkpointer.restore_latest` resumes from the newest
checkpoint that restores and whose arrays match the digest recorded when it was saved.
A checkpoint that fails either way is set aside — moved to ``<checkpoints>.damaged/`` with
a warning naming it, where orbax no longer sees it — and the next older one is tried, so
the run retrains the lost steps and saves them again. Restoring places arrays on the
shardings of the abstract target, so a run trained on 8 devices restores onto 1 (or the
reverse).
"""

import hashlib
import logging
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers

from jscale.train import hosts
from jscale.train.spec import CheckpointSpec

_STATE, _META = "state", "meta"
_DIGEST = "state_sha256"
# A save that cannot finish (storage gone read-only, full, unreachable) must fail, not hang.
_SAVE_TIMEOUT_SECONDS = 120


class DamagedCheckpointError(Exception):
  """A checkpoint's arrays differ from the digest recorded when it was saved."""


def state_digest(state) -> str:
  """sha256 over every array's path, dtype, shape and bytes, in tree order: the same for
  the same values whatever their sharding."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(state)):
    array = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|".encode())
    h.update(array.tobytes())
  return h.hexdigest()


def _reason(e: Exception, limit: int = 240) -> str:
  """The first line of an error, without tensorstore's spec dump."""
  text = str(e).splitlines()[0].split(" [tensorstore_spec")[0] if str(e) else ""
  text = f"{type(e).__name__}: {text}"
  return text if len(text) <= limit else text[:limit - 3] + "..."


class Checkpointer:
  """One run's checkpoint folder."""

  def __init__(self, directory: epath.PathLike, spec: CheckpointSpec, *, read_only=False):
    self._spec = spec
    self._directory = epath.Path(directory)
    self._read_only = read_only
    keep = [checkpoint_managers.LatestN(spec.keep)]
    if spec.keep_steps:
      keep.append(checkpoint_managers.CustomSteps(spec.keep_steps))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(keep),
        enable_async_checkpointing=spec.async_save and not read_only,
        read_only=read_only,
        create=not read_only,
        # Created in the foreground, a step folder that cannot be made raises at once.
        async_options=ocp.AsyncOptions(timeout_secs=_SAVE_TIMEOUT_SECONDS,
                                       create_directories_asynchronously=False))
    self._manager = ocp.CheckpointManager(
        self._directory, item_names=(_STATE, _META), options=options)

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    return step % self._spec.every == 0 or step in self._spec.keep_steps

  def save(self, step: int, state, meta: dict) -> None:
    meta = dict(meta, **{_DIGEST: state_digest(state)})
    self._manager.save(
        step,
        args=ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state),
                                   _META: ocp.args.JsonSave(meta)}),
        force=True)

  def restore(self, step: int, abstract_state):
    """(state, meta) at ``step``; raises DamagedCheckpointError when the arrays read back
    differ from the digest saved with them."""
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract_state),
                                   _META: ocp.args.JsonRestore()}))
    state, meta = restored[_STATE], dict(restored[_META])
    expected = meta.pop(_DIGEST, None)
    if expected is None:
      logging.warning("checkpoint %s has no digest (saved by an older jscale): restored "
                      "unverified", self._directory / str(step))
    elif state_digest(state) != expected:
      raise DamagedCheckpointError("its arrays differ from the digest recorded at save")
    return state, meta

  def restore_latest(self, abstract_state, max_step: int | None = None):
    """(state, meta) of the newest intact checkpoint (<= max_step), or None; damaged
    ones on the way are set aside (or only skipped when read-only)."""
    for step in reversed(self.steps()):
      if max_step is not None and step > max_step:
        continue
      try:
        return self.restore(step, abstract_state)
      except Exception as e:  # any damage: missing, truncated, garbled files
        self._set_aside(step, _reason(e))
    return None

  def _set_aside(self, step: int, why: str) -> None:
    damaged = self._directory / str(step)
    if self._read_only:
      logging.warning("checkpoint %s is damaged (%s); trying the previous one", damaged, why)
      return
    stamp = f"{step}-{time.strftime('%Y%m%dT%H%M%S')}"
    aside = self._directory.parent / f"{self._directory.name}.damaged" / stamp
    # The same step damaged twice within a second must not land on (and fail at) the first.
    n = 1
    while aside.exists():
      aside, n = aside.with_name(f"{stamp}.{n}"), n + 1
    if hosts.is_writer():  # one folder, shared by every process: one rename
      aside.parent.mkdir(parents=True, exist_ok=True)
      damaged.rename(aside)
    hosts.barrier("set-aside")  # every process then reloads the same steps
    self._manager.reload()
    logging.warning("checkpoint %s is damaged (%s); moved to %s, resuming from the previous "
                    "one", damaged, why, aside)

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
