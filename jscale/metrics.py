"""Per-run metrics log (``metrics.jsonl``, TensorBoard event files) and atomic JSON files.

After a resume from step s the log is cut back to records with step <= s, so a resumed
run's log reads exactly like an uninterrupted one's.
"""

import json
import math
import os
import shutil
import tempfile

import tensorboardX
from etils import epath


def write_json_atomic(path: epath.PathLike, obj) -> None:
  """Writes JSON so readers see the old file or the new one, never half of one."""
  write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def write_text_atomic(path: epath.PathLike, text: str) -> None:
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if not _is_local(path):  # object stores write whole objects: already atomic
    path.write_text(text)
    return
  fd, tmp = tempfile.mkstemp(dir=os.fspath(path.parent), prefix=f".{path.name}.")
  with os.fdopen(fd, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, os.fspath(path))


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
  """TensorBoard event files mirroring a run's records (``<run>/tensorboard/``), so
  ``tensorboard --logdir WORKDIR`` shows every run of a sweep, one curve per run and tag
  ("train/loss", "eval/val_loss", "throughput/mfu", ...).

  They are derived data: :meth:`rebuild` rewrites them from the JSONL records a resumed run
  kept, so a resumed run's curves hold each step once. tensorboardX writes local files
  only, so a ``gs://`` run writes none (its metrics.jsonl holds the same numbers).
  """

  def __init__(self, folder: epath.PathLike):
    self._folder = epath.Path(folder)
    self._writer = None

  def rebuild(self, records: list[dict]) -> None:
    if not _is_local(self._folder):
      return
    self.close()
    if self._folder.exists():
      shutil.rmtree(os.fspath(self._folder))
    self._writer = tensorboardX.SummaryWriter(os.fspath(self._folder))
    for record in sorted(records, key=lambda r: r["step"]):
      self.write(record)

  def write(self, record: dict) -> None:
    if self._writer is None:
      return
    for key, value in record.items():
      if key not in ("kind", "step") and isinstance(value, (int, float)) and value is not None:
        self._writer.add_scalar(f"{record['kind']}/{key}", value, record["step"])

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


class MetricsLog:
  """A run's records: JSONL files of {"step", "kind", ...} and their TensorBoard mirror.

  ``metrics.jsonl`` holds what training computed (train and eval records: the same for
  the same config and seed); records of a wall-clock kind ("throughput") go to
  ``throughput.jsonl`` beside it, so metrics.jsonl stays deterministic. Both are mirrored
  into ``tensorboard/`` (see EventFiles). Object stores (``gs://``) cannot append: there
  records are buffered and whole files rewritten by :meth:`flush` (the loop flushes
  before each checkpoint and at the end).
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
    self._files["timing" if kind in WALL_CLOCK_KINDS else "metrics"].append(record)
    self._events.write(record)

  def flush(self) -> None:
    for f in self._files.values():
      f.flush()
    self._events.flush()

  def close(self) -> None:
    self.flush()
    self._events.close()


# Record kinds that depend on the machine's speed, kept out of metrics.jsonl.
WALL_CLOCK_KINDS = ("throughput",)


class _JsonLines:
  """One append-only JSONL file (buffered and rewritten whole on object stores)."""

  def __init__(self, path: epath.Path):
    self._path = path
    self._buffer = None
    if not _is_local(self._path):
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
    with self._path.open("a") as f:
      f.write(_line(record))

  def flush(self) -> None:
    if self._buffer is not None:
      write_text_atomic(self._path, "".join(_line(r) for r in self._buffer))


def _line(record: dict) -> str:
  return json.dumps(record, sort_keys=True, default=_jsonable) + "\n"


def format_eta(seconds: float) -> str:
  if not math.isfinite(seconds) or seconds < 0:
    return "?"
  minutes, secs = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
