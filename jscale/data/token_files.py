"""Token files on disk: the manifest, the shard layouts, and positioned reads of shards.

A token folder holds ``manifest.json`` and flat token shards, documents joined by (each
followed by) the end-of-document id. The manifest names its format and version, the
token dtype (uint16 when the vocabulary fits, else uint32), vocabulary size, EOS id, the
tokenizer and the sha256 of its files, the bytes of text per token, and for each shard
its file (relative to the folder), split, layout, header bytes, tokens, documents, the
sha256 of the whole file and ``probe_sha256``: the sha256 of three blocks of
``PROBE_TOKENS`` tokens at its start, middle and end. Shard layouts:

* ``npy``: a NumPy .npy file holding a 1-D array (what ``experiments.tokenize`` writes);
* ``raw``: headerless tokens (OLMo / dolma ``.npy``-less memmap files);
* ``llmc``: llm.c / modded-nanogpt ``.bin``: 256 int32 header (magic 20240520, version
  1, token count), then uint16 tokens.

Opening a folder (``open_folder``) reads the manifest, each shard's size and its probe
blocks: sizes catch truncation, probes catch swapped or rewritten shards and token ids
outside the vocabulary, without hashing the corpus. ``verify`` hashes everything.
Shards are read with positioned reads (``pread``) rather than a memory map: reading
random windows through a map keeps every touched page resident in the process, which
grows with the corpus (BUILD_NOTES.md, "Token data", has the measurements).
"""

import dataclasses
import hashlib
import json
import os
import threading
import weakref

import numpy as np
from etils import epath

from jscale.errors import BadInput

FORMAT = "jscale-tokens"
VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "validation")
LAYOUTS = ("npy", "raw", "llmc")
LLMC_MAGIC = 20240520
LLMC_HEADER_BYTES = 256 * 4
PROBE_TOKENS = 2048
DTYPES = ("uint16", "uint32")


@dataclasses.dataclass(frozen=True)
class Shard:
  file: str  # relative to the folder
  split: str  # "train" or "validation"
  layout: str  # one of LAYOUTS
  offset: int  # header bytes before the first token
  tokens: int
  documents: int
  sha256: str  # of the whole file
  probe_sha256: str  # of the probe blocks (see probe_ranges)


@dataclasses.dataclass(frozen=True)
class Manifest:
  folder: str
  dtype: np.dtype
  vocab_size: int
  eos_id: int
  bytes_per_token: float  # UTF-8 bytes of text per token of the validation split
  shards: tuple[Shard, ...]
  record: dict  # the manifest as stored
  fingerprint: str  # sha256 of the canonical manifest but "source": names these tokens

  def split(self, name: str) -> tuple[Shard, ...]:
    return tuple(s for s in self.shards if s.split == name)


def canonical_sha256(record: dict) -> str:
  text = json.dumps(record, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()


def write_json_atomic(path: epath.Path, record: dict) -> None:
  """Writes ``path`` through a temporary file in the same folder and a rename."""
  temporary = path.parent / f".tmp-{path.name}-{os.getpid()}"
  temporary.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
  temporary.replace(path)


def _field(record: dict, key: str, kind, where: str):
  value = record.get(key) if isinstance(record, dict) else None
  if not isinstance(value, kind) or isinstance(value, bool):
    raise BadInput(f"{where} has no valid {key!r} ({value!r}); rewrite it with "
                   "python -m experiments.tokenize")
  return value


def parse_manifest(folder: str, record) -> Manifest:
  """The manifest ``record`` read from ``folder``; BadInput (one line) if malformed."""
  where = f"{epath.Path(folder) / MANIFEST}"
  if not isinstance(record, dict) or record.get("format") != FORMAT:
    raise BadInput(f"{where} is not a jscale token manifest (format must be {FORMAT!r})")
  if record.get("version") != VERSION:
    raise BadInput(f"{where} has format version {record.get('version')!r}; this jscale "
                   f"reads version {VERSION}: re-run python -m experiments.tokenize")
  dtype = _field(record, "dtype", str, where)
  if dtype not in DTYPES:
    raise BadInput(f"{where} has dtype {dtype!r}, not one of {DTYPES}")
  vocab_size = _field(record, "vocab_size", int, where)
  if np.iinfo(dtype).max + 1 < vocab_size or vocab_size < 1:
    raise BadInput(f"{where}: vocab_size {vocab_size} does not fit dtype {dtype}")
  eos_id = _field(record, "eos_id", int, where)
  bytes_per_token = _field(record, "bytes_per_token", (int, float), where)
  shards = []
  for i, entry in enumerate(_field(record, "shards", list, where)):
    shard_where = f"{where} shard {i}"
    shard = Shard(**{f.name: _field(entry, f.name, int if f.type is int else str, shard_where)
                     for f in dataclasses.fields(Shard)})
    if shard.split not in SPLITS or shard.layout not in LAYOUTS or shard.tokens < 0:
      raise BadInput(f"{shard_where} ({shard.file}) has split {shard.split!r}, layout "
                     f"{shard.layout!r}, tokens {shard.tokens}: allowed splits {SPLITS}, "
                     f"layouts {LAYOUTS}, tokens >= 0")
    shards.append(shard)
  # Where the text came from ("source") does not change the tokens: left out, so a corpus
  # tokenized again from a copy elsewhere keeps its fingerprint.
  content = {k: v for k, v in record.items() if k != "source"}
  return Manifest(str(folder), np.dtype(dtype), vocab_size, eos_id, float(bytes_per_token),
                  tuple(shards), record, canonical_sha256(content))


def read_manifest(folder: str) -> Manifest:
  path = epath.Path(folder) / MANIFEST
  if not path.exists():
    raise BadInput(f"{folder} has no {MANIFEST}; make one with python -m experiments.tokenize "
                   "(--index for token files made elsewhere)")
  try:
    record = json.loads(path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise BadInput(f"{path} is not JSON ({e})") from None
  return parse_manifest(folder, record)


def expected_size(shard: Shard, dtype: np.dtype) -> int:
  return shard.offset + shard.tokens * dtype.itemsize


def probe_ranges(tokens: int) -> list[tuple[int, int]]:
  """(start, stop) token ranges of the probe blocks: start, middle and end of a shard."""
  if tokens <= 3 * PROBE_TOKENS:
    return [(0, tokens)]
  middle = (tokens - PROBE_TOKENS) // 2
  return [(0, PROBE_TOKENS), (middle, middle + PROBE_TOKENS), (tokens - PROBE_TOKENS, tokens)]


class ShardReader:
  """Positioned reads of one shard's tokens; thread-safe. Local files use ``pread``;
  URLs (gs://...) a file object, one read at a time."""

  def __init__(self, path: epath.Path, shard: Shard, dtype: np.dtype):
    self.path, self.shard, self.dtype = path, shard, dtype
    if "://" in str(path):
      self._file, self._lock = path.open("rb"), threading.Lock()
      self._fd = None
    else:
      self._fd = os.open(path, os.O_RDONLY)
      # Windows are read at random offsets: read-ahead would only waste I/O.
      os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_RANDOM)
      weakref.finalize(self, os.close, self._fd)

  def read_into(self, out: np.ndarray, start: int) -> None:
    """Fills ``out`` (1-D, this shard's dtype) with the tokens from ``start``."""
    offset = self.shard.offset + start * self.dtype.itemsize
    if self._fd is not None:
      got = os.preadv(self._fd, [out], offset)
    else:
      with self._lock:
        self._file.seek(offset)
        data = self._file.read(out.nbytes)
      got = len(data)
      out.view(np.uint8)[:got] = np.frombuffer(data, np.uint8)
    if got != out.nbytes:
      raise BadInput(f"token shard {self.path} ended early: {got} of {out.nbytes} bytes at "
                     f"byte {offset}; it was truncated after its manifest was written")

  def read(self, start: int, stop: int) -> np.ndarray:
    out = np.empty(stop - start, self.dtype)
    self.read_into(out, start)
    return out


def probe_digest(reader: ShardReader) -> tuple[str, int]:
  """(probe_sha256, largest token id in the probe blocks) of a shard."""
  digest, largest = hashlib.sha256(), -1
  for start, stop in probe_ranges(reader.shard.tokens):
    block = reader.read(start, stop)
    digest.update(block.tobytes())
    largest = max(largest, int(block.max(initial=0)))
  return digest.hexdigest(), largest


def open_folder(folder: str) -> tuple[Manifest, dict[str, list[ShardReader]]]:
  """The manifest and a reader per shard (by split), after the start-up checks: every
  shard's size and its probe blocks (ids below the vocabulary, digest as recorded)."""
  manifest = read_manifest(folder)
  readers = {split: [] for split in SPLITS}
  for shard in manifest.shards:
    path = epath.Path(folder) / shard.file
    if not path.exists():
      raise BadInput(f"token shard {path} named in {MANIFEST} is missing")
    size, expected = path.stat().length, expected_size(shard, manifest.dtype)
    if size != expected:
      raise BadInput(f"token shard {path} has {size} bytes, but its manifest entry "
                     f"({shard.tokens} {manifest.dtype.name} tokens after a {shard.offset}-byte "
                     f"header) needs {expected}: truncated or replaced")
    reader = ShardReader(path, shard, manifest.dtype)
    probe, largest = probe_digest(reader)
    if largest >= manifest.vocab_size:
      raise BadInput(f"token shard {path} holds token id {largest}, outside the vocabulary "
                     f"of {manifest.vocab_size} its manifest declares")
    if probe != shard.probe_sha256:
      raise BadInput(f"token shard {path} does not hold the tokens its manifest recorded "
                     "(probe sha256 differs): swapped or rewritten; run "
                     f"python -m experiments.tokenize --verify --out={folder}")
    readers[shard.split].append(reader)
  return manifest, readers


def scan_file(path: str, offset: int, dtype: np.dtype, eos_id: int,
              block_bytes: int = 1 << 24) -> dict:
  """sha256 of a whole file, and the largest id and EOS count of its tokens."""
  digest, largest, eos = hashlib.sha256(), -1, 0
  with open(path, "rb") as f:
    header = f.read(offset)
    digest.update(header)
    for block in iter(lambda: f.read(block_bytes), b""):
      digest.update(block)
      tokens = np.frombuffer(block, dtype)
      largest = max(largest, int(tokens.max(initial=0)))
      eos += int(np.count_nonzero(tokens == eos_id))
  return {"sha256": digest.hexdigest(), "largest": largest, "eos": eos}


def verify(folder: str) -> str:
  """Re-hashes every shard of a local folder against its manifest and checks every token
  id; a one-line report, or BadInput naming the first bad shard."""
  manifest = read_manifest(folder)
  problems = []
  for shard in manifest.shards:
    path = os.path.join(folder, shard.file)
    if not os.path.isfile(path):
      problems.append(f"{shard.file} is missing")
      continue
    size, expected = os.path.getsize(path), expected_size(shard, manifest.dtype)
    if size != expected:
      problems.append(f"{shard.file} has {size} bytes, expected {expected}")
      continue
    scanned = scan_file(path, shard.offset, manifest.dtype, manifest.eos_id)
    if scanned["sha256"] != shard.sha256:
      problems.append(f"{shard.file} has sha256 {scanned['sha256']}, expected {shard.sha256}")
    elif scanned["largest"] >= manifest.vocab_size:
      problems.append(f"{shard.file} holds token id {scanned['largest']} >= vocab_size "
                      f"{manifest.vocab_size}")
  if problems:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    raise BadInput(f"{folder}: {problems[0]}{more}")
  tokens = sum(s.tokens for s in manifest.shards)
  return (f"{folder}: {len(manifest.shards)} shards, {tokens:,} tokens match "
          f"{MANIFEST} (fingerprint {manifest.fingerprint[:12]})")


def npy_header(path: str) -> tuple[int, int, np.dtype]:
  """(header bytes, tokens, dtype) of a 1-D .npy file; BadInput otherwise."""
  try:  # a map reads the header only; its offset is where the tokens start
    array = np.load(path, mmap_mode="r")
  except ValueError as e:
    raise BadInput(f"{path} is not a .npy file ({e})") from None
  if (not isinstance(array, np.memmap) or array.ndim != 1 or array.dtype.name not in DTYPES
      or not array.dtype.isnative):
    raise BadInput(f"{path} holds a {array.dtype} array of shape {array.shape}; token files "
                   f"are 1-D {' or '.join(DTYPES)}")
  return array.offset, array.shape[0], array.dtype


def llmc_header(path: str) -> int:
  """Tokens of an llm.c .bin file; BadInput if its header is not llm.c's."""
  header = np.fromfile(path, dtype="<i4", count=256)
  if header.size < 256 or header[0] != LLMC_MAGIC or header[1] != 1:
    raise BadInput(f"{path} is not an llm.c token file (magic {LLMC_MAGIC}, version 1)")
  return int(header[2])
