"""orbax checkpoints of a run: periodic, keep-N, asynchronous, verified on restore.

A checkpoint holds two items: ``state`` (step, parameters, optimizer state: arrays) and
``meta`` (JSON: step, data position, seed, and a digest of every array saved). Data order
and initialisation are pure functions of (seed, step), so (state, data position) is
everything an exact resume needs.

There is one way in: :meth:`Checkpointer.restore_latest` resumes from the newest
checkpoint that restores and whose arrays match the digest recorded when it was saved.
Only real damage sets a checkpoint aside: files missing, unreadable or garbled, or arrays
that differ from their digest. Such a checkpoint is moved to ``<checkpoints>.damaged/``
with a warning naming it, where orbax no longer sees it, and the next older one is tried,
so the run retrains the lost steps and saves them again.

A checkpoint whose state does not match the code's (an upgrade renamed a module, the
optimizer state changed shape) is not damaged: :class:`CheckpointMismatch` stops with one
line naming the checkpoint and the first mismatched path, and nothing is moved or
retrained. A storage fault while reading (``jscale.errors.storage_fault``) propagates.

Restoring places arrays on the shardings of the abstract target, so a run trained on 8
devices restores onto 1 (or the reverse).
"""

import logging
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers

from jscale.errors import BadInput, storage_fault
from jscale.train import digest, hosts
from jscale.train.digest import state_digest
from jscale.train.spec import CheckpointSpec

_log = logging.getLogger(__name__)

_STATE, _META = "state", "meta"
_DIGEST = "state_sha256"
# Which digest _DIGEST holds: "weighted_sums" (jscale.train.digest: the same on any mesh
# and process count); absent in checkpoints saved before sharding, which hold the sha256
# of every array's bytes (digest.legacy_sha256).
_DIGEST_KIND, _WEIGHTED_SUMS = "state_digest_kind", "weighted_sums"
# A save that cannot finish (storage gone read-only, full, unreachable) must fail, not hang.
_SAVE_TIMEOUT_SECONDS = 120


class DamagedCheckpointError(Exception):
  """A checkpoint's arrays differ from the digest recorded when it was saved."""


class CheckpointMismatch(BadInput):
  """A checkpoint holds a state of another structure than the code builds: saved by
  another jscale version, not damaged. Nothing is moved."""


# What reading a damaged checkpoint raises (after its structure matched): missing or cut
# files (OSError), garbled data and metadata (tensorstore's and JSON's ValueError, and the
# KeyError/TypeError of a tree missing items), or a digest mismatch.
_DAMAGE = (OSError, ValueError, KeyError, TypeError, DamagedCheckpointError)


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                  for k in path)


def _leaves_by_path(tree) -> dict[str, tuple[tuple[int, ...], str]]:
  return {_path_name(path): (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def structure_difference(saved, expected) -> str | None:
  """The first path where two state trees (arrays, ShapeDtypeStructs or orbax's array
  metadata) differ in presence, shape or dtype, described; None when they agree."""
  have, want = _leaves_by_path(saved), _leaves_by_path(expected)
  for name in [*want, *(n for n in have if n not in want)]:  # the state's own order first
    if name not in have:
      return f"{name} is missing from the checkpoint"
    if name not in want:
      return f"{name} is in the checkpoint but not in this code's state"
    if have[name] != want[name]:
      return (f"{name} was saved as {have[name][1]}{list(have[name][0])}, this code builds "
              f"{want[name][1]}{list(want[name][0])}")
  return None


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
    # Handlers named up front: a fresh manager can then read a step's metadata before
    # anything is restored (the structure check of ``restore``).
    self._manager = ocp.CheckpointManager(
        self._directory, options=options,
        item_handlers={_STATE: ocp.StandardCheckpointHandler(),
                       _META: ocp.JsonCheckpointHandler()})

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    return step % self._spec.every == 0 or step in self._spec.keep_steps

  def save(self, step: int, state, meta: dict) -> None:
    meta = dict(meta, **{_DIGEST: state_digest(state), _DIGEST_KIND: _WEIGHTED_SUMS})
    self._manager.save(
        step,
        args=ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state),
                                   _META: ocp.args.JsonSave(meta)}),
        force=True)

  def _check_structure(self, step: int, abstract_state) -> None:
    """Raises CheckpointMismatch when the state saved at ``step`` has another structure
    than ``abstract_state`` (unreadable metadata is damage, found by the restore)."""
    try:
      saved = self._manager.item_metadata(step)[_STATE]
    except _DAMAGE:
      return
    if saved is None:
      return
    difference = structure_difference(saved, abstract_state)
    if difference is not None:
      raise CheckpointMismatch(
          f"checkpoint {self._directory / str(step)} does not match this jscale's state "
          f"({difference}); nothing was moved: resume it with the jscale version that "
          "saved it, or train in a new --workdir")

  def restore(self, step: int, abstract_state):
    """(state, meta) at ``step``; raises CheckpointMismatch when the saved state has
    another structure, DamagedCheckpointError when the arrays read back differ from the
    digest saved with them."""
    self._check_structure(step, abstract_state)
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract_state),
                                   _META: ocp.args.JsonRestore()}))
    state, meta = restored[_STATE], dict(restored[_META])
    expected, kind = meta.pop(_DIGEST, None), meta.pop(_DIGEST_KIND, None)
    found = None if expected is None else (
        state_digest(state) if kind == _WEIGHTED_SUMS else digest.legacy_sha256(state))
    if found is None:
      _log.warning("checkpoint %s has no digest this process can check (saved by an older "
                   "jscale): restored unverified", self._directory / str(step))
    elif found != expected:
      raise DamagedCheckpointError("its arrays differ from the digest recorded at save")
    return state, meta

  def restore_latest(self, abstract_state, max_step: int | None = None):
    """(state, meta) of the newest intact checkpoint (<= max_step), or None; damaged
    ones on the way are set aside (or only skipped when read-only). A mismatched
    structure or a storage fault stops here (see the module docstring)."""
    for step in reversed(self.steps()):
      if max_step is not None and step > max_step:
        continue
      try:
        return self.restore(step, abstract_state)
      except CheckpointMismatch:
        raise
      except _DAMAGE as e:
        fault = storage_fault(e, str(self._directory / str(step)))
        if fault is not None:
          raise fault from e
        self._set_aside(step, _reason(e))
    return None

  def _set_aside(self, step: int, why: str) -> None:
    damaged = self._directory / str(step)
    if self._read_only:
      _log.warning("checkpoint %s is damaged (%s); trying the previous one", damaged, why)
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
    _log.warning("checkpoint %s is damaged (%s); moved to %s, resuming from the previous "
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
