"""Per-run metrics log (``metrics.jsonl``, TensorBoard event files) and atomic JSON files.

After a resume from step s the log is cut back to records with step <= s, so a resumed
run's log reads exactly like an uninterrupted one's.

Each run folder ``runs/<id>/`` holds ``metrics.jsonl`` (train and eval records),
``throughput.jsonl`` (tokens/s, FLOP/s, MFU at the log cadence) and ``tensorboard/``, the
same records as TensorBoard scalars ("train/loss", "train/learning_rate",
"train/grad_norm", "eval/val_loss", "eval/val_bpb" or "eval/val_accuracy",
"throughput/tok_per_second", "throughput/mfu", ...): ``tensorboard --logdir WORKDIR`` shows
every run of a sweep, named ``runs/<id>/tensorboard``. Event files are written for local
workdirs only (they are appended to, which object stores cannot do, and tensorboardX's own
writer would need google-cloud-storage, not a dependency): a ``gs://`` run writes none,
without error; its JSONL files hold the numbers.
"""

import contextlib
import json
import math
import os
import shutil
import socket
import struct
import tempfile
import time

from etils import epath
from tensorboardX.proto import event_pb2, summary_pb2
from tensorboardX.record_writer import masked_crc32c

from jscale.train import hosts


def write_json_atomic(path: epath.PathLike, obj) -> None:
  """Writes JSON so readers see the old file or the new one, never half of one."""
  write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def write_text_atomic(path: epath.PathLike, text: str) -> None:
  """Writes ``text`` on the writer process only: with several processes every one computes
  the same records, and one copy of each belongs on the shared filesystem."""
  if not hosts.is_writer():
    return
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if not _is_local(path):  # object stores write whole objects: already atomic
    path.write_text(text)
    return
  fd, tmp = tempfile.mkstemp(dir=os.fspath(path.parent), prefix=f".{path.name}.")
  try:
    with naming(path), os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, os.fspath(path))
  finally:
    if os.path.exists(tmp):  # the write failed (disk full): leave the old file alone
      os.unlink(tmp)


@contextlib.contextmanager
def naming(path: epath.PathLike):
  """Storage errors raised inside name ``path`` (a failed ``write`` names no file), so
  the entry point can say which file could not be written."""
  try:
    yield
  except OSError as e:
    if e.filename:
      raise
    raise OSError(e.errno, e.strerror, os.fspath(path)) from e


def _is_local(path: epath.Path) -> bool:
  return "://" not in os.fspath(path)


def _jsonable(x):
  try:
    return x.item()  # numpy / jax scalars
  except AttributeError:
    raise TypeError(f"not JSON serialisable: {type(x).__name__}") from None


def _finite_or_none(value):
  value = float(value)
  return value if math.isfinite(value) else None


class EventFiles:
  """TensorBoard event files mirroring a run's records (``<run>/tensorboard/``, tags
  "<kind>/<key>": see the module docstring).

  They are derived data: :meth:`rebuild` deletes them and rewrites every record a run's
  JSONL files hold, so after a resume (the files cut back to the checkpoint's step) each
  step is in them once, even a step a killed process had logged after its last
  checkpoint. Each record is one event (all its scalars, tensorboardX's protobufs and
  TFRecord checksum), kept in memory and appended by :meth:`flush` (at each throughput
  record, i.e. the log cadence, before each checkpoint and at the end), not by
  tensorboardX's SummaryWriter: that keeps a file open in a writer thread, which on a
  full disk dies and leaves the next flush waiting forever. Local files only: a ``gs://``
  run writes none (its JSONL files hold the same numbers). Rebuilt events carry the
  rebuild's wall time.
  """

  def __init__(self, folder: epath.PathLike):
    self._folder = epath.Path(folder)
    self._file = None  # set by rebuild
    self._pending: list[bytes] = []  # framed records not yet on disk

  @property
  def stale(self) -> bool:
    """True until :meth:`rebuild` names the file (always False on object stores and on
    processes other than the writer)."""
    return self._file is None and self._writes

  @property
  def _writes(self) -> bool:
    return _is_local(self._folder) and hosts.is_writer()

  def rebuild(self, records: list[dict]) -> None:
    if not self._writes:
      return
    self._pending = []
    if self._folder.exists():
      shutil.rmtree(os.fspath(self._folder))
    self._folder.mkdir(parents=True)
    self._file = self._folder / (
        f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.jscale")
    self._append(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
    for record in sorted(records, key=lambda r: r["step"]):
      self.write(record)
    self.flush()

  def write(self, record: dict) -> None:
    if self._file is None:
      return
    # None (a non-finite value in the JSONL) and non-numbers have no curve.
    values = [summary_pb2.Summary.Value(tag=f"{record['kind']}/{key}", simple_value=value)
              for key, value in record.items()
              if key not in ("kind", "step") and isinstance(value, (int, float))
              and not isinstance(value, bool)]
    if values:
      self._append(event_pb2.Event(
          wall_time=time.time(), step=record["step"], summary=summary_pb2.Summary(value=values)))

  def _append(self, event) -> None:
    data = event.SerializeToString()
    header = struct.pack("<Q", len(data))
    self._pending.append(header + struct.pack("<I", masked_crc32c(header)) + data
                         + struct.pack("<I", masked_crc32c(data)))

  def flush(self) -> None:
    """Appends the pending events and closes the file again: no descriptor stays open
    between flushes (an open one would keep the workdir from being remounted, and a
    writer thread that died on a full disk would hang the next flush)."""
    if self._file is None or not self._pending:
      return
    with naming(self._file), open(os.fspath(self._file), "ab") as f:
      f.write(b"".join(self._pending))
    self._pending = []

  def close(self) -> None:
    self.flush()


class MetricsLog:
  """A run's records: JSONL files of {"step", "kind", ...} and their TensorBoard mirror.

  ``metrics.jsonl`` holds what training computed (train and eval records: the same for
  the same config and seed); records of a wall-clock kind ("throughput") go to
  ``throughput.jsonl`` beside it, so metrics.jsonl stays deterministic. Both are mirrored
  into ``tensorboard/`` (see EventFiles): the first append or truncation of a process
  rewrites that mirror from the JSONL files, so it never holds a step twice. Object
  stores (``gs://``) cannot append: there records are buffered and whole files
  rewritten by :meth:`flush` (the loop flushes before each checkpoint and at the end).
  With several processes only the writer (process 0) writes files; the others keep their
  records in memory.
  """

  def __init__(self, path: epath.PathLike):
    path = epath.Path(path)
    self._files = {"metrics": _JsonLines(path),
                   "timing": _JsonLines(path.parent / "throughput.jsonl")}
    self._events = EventFiles(path.parent / "tensorboard")

  def records(self) -> list[dict]:
    """The deterministic records (metrics.jsonl)."""
    return self._files["metrics"].records()

  def truncate_after(self, step: int) -> None:
    """Cuts every file back to records with step <= ``step`` (a resume from ``step``)
    and rebuilds the event files from what is kept."""
    kept = [f.truncate_after(step) for f in self._files.values()]
    self._events.rebuild([r for records in kept for r in records])

  def append(self, kind: str, step: int, values: dict) -> None:
    record = {"kind": kind, "step": int(step)}
    record.update({k: _finite_or_none(v) if isinstance(v, float) else v
                   for k, v in values.items()})
    if self._events.stale:  # this process's first record: mirror what earlier ones logged
      self._events.rebuild([r for f in self._files.values() for r in f.records()])
    self._files["timing" if kind in WALL_CLOCK_KINDS else "metrics"].append(record)
    self._events.write(record)
    if kind in WALL_CLOCK_KINDS:  # the log cadence: a live TensorBoard follows the run
      self._events.flush()

  def flush(self) -> None:
    for f in self._files.values():
      f.flush()
    self._events.flush()

  def close(self) -> None:
    self.flush()
    self._events.close()


def read_records(path: epath.PathLike) -> list[dict]:
  """The records of a metrics.jsonl file (another run's, read only)."""
  return _JsonLines(epath.Path(path)).records()


# Record kinds that depend on the machine's speed, kept out of metrics.jsonl.
WALL_CLOCK_KINDS = ("throughput",)


class _JsonLines:
  """One append-only JSONL file (buffered and rewritten whole on object stores). A process
  other than the writer keeps its records in memory only (``write_text_atomic`` skips its
  rewrites), so its ``records()`` still read like the writer's."""

  def __init__(self, path: epath.Path):
    self._path = path
    self._buffer = None
    if not _is_local(self._path) or not hosts.is_writer():
      self._buffer = self.records()

  def records(self) -> list[dict]:
    if self._buffer is not None:
      return list(self._buffer)
    if not self._path.exists():
      return []
    text = self._path.read_text()
    if not text.endswith("\n"):
      # An append cut short (disk full, killed mid-write): the unfinished last record is
      # dropped; its step is retrained after the resume and logged again.
      text = text[:text.rfind("\n") + 1]
    return [json.loads(line) for line in text.splitlines() if line.strip()]

  def truncate_after(self, step: int) -> list[dict]:
    kept = [r for r in self.records() if r["step"] <= step]
    if self._buffer is not None:
      self._buffer = kept
    if kept or self._path.exists():
      write_text_atomic(self._path, "".join(_line(r) for r in kept))
    return kept

  def append(self, record: dict) -> None:
    if self._buffer is not None:
      self._buffer.append(record)
      return
    with naming(self._path), self._path.open("a") as f:
      f.write(_line(record))

  def flush(self) -> None:
    if self._buffer is not None:
      write_text_atomic(self._path, "".join(_line(r) for r in self._buffer))


def _line(record: dict) -> str:
  return json.dumps(record, sort_keys=True, default=_jsonable) + "\n"


def format_eta(seconds: float) -> str:
  if not math.isfinite(seconds) or seconds < 0:
    return "?"
  minutes, secs = divmod(round(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
