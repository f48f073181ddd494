"""Per-run metrics log (``metrics.jsonl``) and atomic JSON files.

After a resume from step s the log is cut back to records with step <= s, so a resumed
run's log reads exactly like an uninterrupted one's.
"""

import json
import math
import os
import tempfile

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


class MetricsLog:
  """Append-only JSONL of {"step", "kind", ...} records.

  Object stores (``gs://``) cannot append: there records are buffered and the whole file
  is rewritten by :meth:`flush` (the loop flushes before each checkpoint and at the end).
  """

  def __init__(self, path: epath.PathLike):
    self._path = epath.Path(path)
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

  def truncate_after(self, step: int) -> None:
    kept = [r for r in self.records() if r["step"] <= step]
    if self._buffer is not None:
      self._buffer = kept
    write_text_atomic(self._path, "".join(_line(r) for r in kept))

  def append(self, kind: str, step: int, values: dict) -> None:
    record = {"kind": kind, "step": int(step)}
    record.update({k: _finite_or_none(v) if isinstance(v, float) else v
                   for k, v in values.items()})
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
