"""Making token folders: ``tokenize`` (text -> shards, see tokenize_corpus.py) and
``index`` (a manifest for token files made elsewhere), on a pool of worker processes
with a progress line (documents, tokens/s, ETA) after each unit of work.

``--out`` must be empty, or hold this same tokenize (finished: nothing to do; unfinished:
it resumes): a folder holding another corpus is refused before anything is written.
"""

import dataclasses
import functools
import glob
import json
import multiprocessing
import os
import shutil
import time
from typing import Callable

import numpy as np
from etils import epath

from jscale.data import token_files
from jscale.data import tokenize_corpus as corpus_lib
from jscale.data import tokenizer as tokenizer_lib
from jscale.errors import BadInput

Progress = Callable[[str], None]
# Validation tokens decoded to measure bytes per token of an indexed corpus.
BYTES_PER_TOKEN_SAMPLE = 1 << 22
_PROGRESS_SECONDS = 2.0


def _eta(seconds: float) -> str:
  minutes, secs = divmod(max(0, round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class _Workers:
  """A pool of spawned worker processes, started at the first call that needs more than
  one (spawned, not forked: the caller may hold threads, JAX's or a tokenizer's). Each
  worker imports the entry point's module, a few seconds once per pool."""

  def __init__(self, count: int):
    self._count, self._pool = count, None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    if self._pool is not None:
      self._pool.terminate()

  def run(self, task: Callable, items: list, on_result: Callable) -> None:
    """Calls ``task(item)`` for every item, and ``on_result(i, result)`` here as each
    finishes (in any order)."""
    if self._count <= 1 or len(items) <= 1:
      for i, item in enumerate(items):
        on_result(i, task(item))
      return
    if self._pool is None:
      self._pool = multiprocessing.get_context("spawn").Pool(self._count)
    for i, result in self._pool.imap_unordered(functools.partial(_indexed, task),
                                               list(enumerate(items))):
      on_result(i, result)


def _indexed(task: Callable, item: tuple):
  return item[0], task(item[1])


class _Meter:
  """Progress lines at most every few seconds: documents, tokens/s and ETA by bytes."""

  def __init__(self, label: str, total_bytes: int, progress: Progress):
    self.label, self.total, self.progress = label, total_bytes, progress
    self.documents = self.tokens = self.bytes = 0
    self.started = self.shown = time.perf_counter()

  def add(self, documents: int, tokens: int, data_bytes: int, final: bool = False) -> None:
    self.documents += documents
    self.tokens += tokens
    self.bytes += data_bytes
    now = time.perf_counter()
    if final or now - self.shown >= _PROGRESS_SECONDS:
      self.shown, elapsed = now, max(now - self.started, 1e-9)
      rate = self.bytes / elapsed
      eta = (self.total - self.bytes) / rate if rate else float("inf")
      tokens = f", {self.tokens:,} tokens, {self.tokens / elapsed:,.0f} tokens/s" if (
          self.tokens) else ""
      self.progress(f"{self.label}: {self.documents:,} documents{tokens}, "
                    f"{self.bytes / elapsed / 1e6:.1f} MB/s, "
                    + (f"done in {_eta(elapsed)}" if final else f"ETA {_eta(eta)}"))


def _workers(requested: int) -> int:
  return requested or len(os.sched_getaffinity(0))


def _plan_record(options: corpus_lib.Options, units, tokenizer) -> dict:
  """What a resumed run must share with the run it resumes (input files by size and
  modification time, tokenizer, options)."""
  files = sorted({p for u in units if u.kind != "corpus" for p in u.paths})
  return {"format": token_files.FORMAT, "version": token_files.VERSION,
          "input": options.input,
          "files": [[p, os.path.getsize(p), os.stat(p).st_mtime_ns] for p in files],
          "tokenizer": tokenizer.metadata(), "text_field": options.text_field,
          "min_chars": options.min_chars, "validation_fraction": options.validation_fraction,
          "units": len(units)}


def _check_out(out: str, plan_sha256: str) -> str:
  """'fresh', 'resume' or 'done' for ``out``; BadInput if it holds anything else."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise BadInput(f"--out={out} is a file, not a folder")
  manifest = os.path.join(out, token_files.MANIFEST)
  plan = os.path.join(out, corpus_lib.PARTIAL, "plan.json")
  if os.path.exists(manifest):
    source = _read_json(manifest).get("source", {})
    if source.get("plan_sha256") == plan_sha256:
      return "done"
    raise BadInput(f"--out={out} holds another corpus (its {token_files.MANIFEST} comes from "
                   "other input, tokenizer or options); choose a new --out")
  if os.path.exists(plan):
    if token_files.canonical_sha256(_read_json(plan)) == plan_sha256:
      return "resume"
    raise BadInput(f"--out={out} holds an unfinished tokenize of other input, tokenizer or "
                   "options; rerun that command, or choose a new --out")
  if os.path.isdir(out) and os.listdir(out):
    raise BadInput(f"--out={out} is not empty and holds no jscale token folder; choose an "
                   "empty or new folder")
  return "fresh"


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      record = json.load(f)
  except (UnicodeDecodeError, json.JSONDecodeError):
    record = None
  if not isinstance(record, dict):
    raise BadInput(f"{path} is damaged (not a JSON object); delete the folder and tokenize "
                   "again")
  return record


def tokenize(options: corpus_lib.Options, progress: Progress = print) -> str:
  """Tokenizes ``options.input`` into ``options.out``; returns a one-line summary."""
  _check_fraction(options.validation_fraction)
  tokenizer = tokenizer_lib.Tokenizer(options.tokenizer)
  units = corpus_lib.plan_units(options)
  plan = _plan_record(options, units, tokenizer)
  plan_sha256 = token_files.canonical_sha256(plan)
  state = _check_out(options.out, plan_sha256)
  if state == "done":
    shutil.rmtree(os.path.join(options.out, corpus_lib.PARTIAL), ignore_errors=True)
    return f"{options.out}: already tokenized (same input, tokenizer and options)"
  with _Workers(_workers(options.workers)) as workers:
    return _tokenize(options, tokenizer, units, plan, workers, progress)


def _tokenize(options, tokenizer, units, plan, workers, progress) -> str:
  total = sum(u.size for u in units)
  scans = [None] * len(units)
  meter = _Meter("scan", total, progress)

  def scanned(i, result):
    scans[i] = result
    meter.add(result["counts"]["documents"], 0, units[i].size)

  workers.run(functools.partial(corpus_lib.scan_unit, options=options), units, scanned)
  meter.add(0, 0, 0, final=True)
  keeps, counts = _deduplicate(scans)
  _check_splits(scans, keeps, options)

  partial = os.path.join(options.out, corpus_lib.PARTIAL)
  os.makedirs(partial, exist_ok=True)
  token_files.write_json_atomic(epath.Path(partial) / "plan.json", plan)
  for name in os.listdir(options.out):  # what a killed run was writing
    if name.startswith(".tmp-"):
      os.remove(os.path.join(options.out, name))
  records = [json.loads(corpus_lib.unit_record_path(options.out, u).read_text())
             if corpus_lib.unit_record_path(options.out, u).exists() else None for u in units]
  todo = [u for u, r in zip(units, records) if r is None]
  kept_bytes = sum(s["counts"]["bytes"] for s in scans)
  meter = _Meter("tokenize", kept_bytes, progress)

  def written(i, record):
    records[todo[i].index] = record
    shards = record["shards"]
    meter.add(sum(s["documents"] for s in shards), sum(s["tokens"] for s in shards),
              sum(s["bytes"] for s in shards))

  workers.run(functools.partial(_write_one, options=options),
              [(u, keeps[u.index]) for u in todo], written)
  meter.add(0, 0, 0, final=True)
  manifest = _manifest(options, tokenizer, records, counts, token_files.canonical_sha256(plan))
  token_files.write_json_atomic(epath.Path(options.out) / token_files.MANIFEST, manifest)
  shutil.rmtree(partial)
  totals = manifest["totals"]
  return (f"{options.out}: {totals['train']['tokens']:,} train and "
          f"{totals['validation']['tokens']:,} validation tokens in {len(manifest['shards'])} "
          f"shards, {manifest['bytes_per_token']:.3f} bytes/token; dropped "
          f"{manifest['dropped']}")


def _write_one(item, options):
  unit, keep = item
  return corpus_lib.write_unit(unit, keep, options)


def _check_fraction(fraction: float) -> None:
  if not 0 < fraction < 1:
    raise BadInput(f"--validation_fraction must be in (0, 1), got {fraction!r}")


def _deduplicate(scans: list[dict]) -> tuple[list[np.ndarray], dict]:
  """Per unit, which candidates are kept (first copy in input order), and drop counts."""
  digests = np.frombuffer(b"".join(s["digests"] for s in scans), "V16")
  _, first = np.unique(digests, return_index=True)
  keep = np.zeros(digests.size, bool)
  keep[first] = True
  sizes = np.cumsum([0] + [len(s["digests"]) // 16 for s in scans])
  counts = {key: sum(s["counts"][key] for s in scans)
            for key in ("documents", "empty", "too_short", "repaired")}
  counts["duplicate"] = int(digests.size - first.size)
  return [keep[a:b] for a, b in zip(sizes[:-1], sizes[1:])], counts


def _check_splits(scans: list[dict], keeps: list[np.ndarray],
                  options: corpus_lib.Options) -> None:
  digests = np.frombuffer(b"".join(s["digests"] for s in scans), ">u8")[::2]
  kept = digests[np.concatenate(keeps)] if digests.size else digests
  validation = int(np.count_nonzero(
      kept < np.uint64(corpus_lib.validation_threshold(options.validation_fraction))))
  for split, count in (("train", kept.size - validation), ("validation", validation)):
    if count == 0:
      raise BadInput(f"--input={options.input!r} leaves no {split} documents ({kept.size} "
                     f"kept of {sum(s['counts']['documents'] for s in scans)}, "
                     f"--validation_fraction={options.validation_fraction}): an empty "
                     f"{split} split; add documents or change --validation_fraction")


def _totals(shards: list[dict]) -> dict:
  return {split: {key: sum(s[key] for s in shards if s["split"] == split)
                  for key in ("documents", "tokens", "bytes")}
          for split in token_files.SPLITS}


def _manifest(options, tokenizer, records, counts, plan_sha256) -> dict:
  shards = [s for r in records for s in r["shards"]]
  totals = _totals(shards)
  return {
      "format": token_files.FORMAT, "version": token_files.VERSION,
      "dtype": tokenizer.dtype.name, "vocab_size": tokenizer.vocab_size,
      "eos_id": tokenizer.eos_id,
      "tokenizer": {"name": tokenizer.name, "files": tokenizer.files},
      "bytes_per_token": totals["validation"]["bytes"] / totals["validation"]["tokens"],
      "shards": shards, "totals": totals,
      "dropped": {k: counts[k] for k in ("duplicate", "empty", "too_short")},
      "repaired_undecodable": counts["repaired"], "documents_read": counts["documents"],
      "cleaning": corpus_lib.CLEANING_RULE, "split_rule": corpus_lib.SPLIT_RULE,
      "validation_fraction": options.validation_fraction, "min_chars": options.min_chars,
      "source": {"input": options.input, "text_field": options.text_field,
                 "plan_sha256": plan_sha256},
  }


# --- index: a manifest for token files made elsewhere ----------------------------------------

@dataclasses.dataclass(frozen=True)
class IndexOptions:
  input: str  # glob of training token files
  validation_input: str  # glob of validation token files (whole files)
  out: str  # the folder holding them all, where manifest.json goes
  tokenizer: tokenizer_lib.TokenizerSpec
  workers: int = 0


def _match(flag: str, pattern: str) -> list[str]:
  paths = sorted(os.path.abspath(p) for p in glob.glob(os.path.expanduser(pattern),
                                                       recursive=True) if os.path.isfile(p))
  if not paths:
    raise BadInput(f"{flag}={pattern!r} matches no files"
                   + (": an empty validation split" if "validation" in flag else ""))
  return paths


def _layout(path: str, dtype: np.dtype) -> tuple[str, int, int]:
  """(layout, header bytes, tokens) of a foreign token file whose tokens are ``dtype``."""
  size = os.path.getsize(path)
  if path.endswith(".npy"):
    offset, tokens, found = token_files.npy_header(path)
    if found != dtype:
      raise BadInput(f"{path} holds {found} tokens; the tokenizer's vocabulary needs {dtype}")
    return "npy", offset, tokens
  with open(path, "rb") as f:
    magic = np.frombuffer(f.read(4).ljust(4, b"\0"), "<i4")[0]
  if magic == token_files.LLMC_MAGIC:
    tokens = token_files.llmc_header(path)
    if dtype != np.uint16 or size != token_files.LLMC_HEADER_BYTES + 2 * tokens:
      raise BadInput(f"{path}: an llm.c file of {tokens} uint16 tokens must have "
                     f"{token_files.LLMC_HEADER_BYTES + 2 * tokens} bytes and a vocabulary "
                     f"under 65537, got {size} bytes and dtype {dtype}")
    return "llmc", token_files.LLMC_HEADER_BYTES, tokens
  if size % dtype.itemsize:
    raise BadInput(f"{path}: {size} bytes is not a whole number of {dtype} tokens")
  return "raw", 0, size // dtype.itemsize


def _index_one(item, dtype, eos_id, vocab_size, folder) -> dict:
  path, split = item
  layout, offset, tokens = _layout(path, dtype)
  scanned = token_files.scan_file(path, offset, dtype, eos_id)
  if scanned["largest"] >= vocab_size:
    raise BadInput(f"{path} holds token id {scanned['largest']} >= the tokenizer's "
                   f"vocabulary of {vocab_size}: made with another tokenizer?")
  shard = token_files.Shard(os.path.relpath(path, folder), split, layout, offset, tokens,
                            scanned["eos"], scanned["sha256"], "")
  probe, _ = token_files.probe_digest(
      token_files.ShardReader(epath.Path(path), shard, dtype))
  return dict(dataclasses.asdict(shard), probe_sha256=probe)


def index(options: IndexOptions, progress: Progress = print) -> str:
  """Writes ``out/manifest.json`` for existing token files; returns a one-line summary."""
  tokenizer = tokenizer_lib.Tokenizer(options.tokenizer)
  train = _match("--input", options.input)
  validation = _match("--validation_input", options.validation_input)
  folder = os.path.abspath(options.out)
  both = sorted(set(train) & set(validation))
  if both:
    raise BadInput(f"{both[0]} matches both --input and --validation_input")
  outside = [p for p in train + validation if os.path.relpath(p, folder).startswith("..")]
  if outside:
    raise BadInput(f"{outside[0]} is not inside --out={options.out}, where the manifest goes")
  if os.path.exists(os.path.join(folder, token_files.MANIFEST)):
    raise BadInput(f"--out={options.out} already has a {token_files.MANIFEST}; check it with "
                   "--verify, or delete it to index again")
  items = [(p, "train") for p in train] + [(p, "validation") for p in validation]
  shards = [None] * len(items)
  meter = _Meter("index", sum(os.path.getsize(p) for p, _ in items), progress)

  def done(i, shard):
    shards[i] = shard
    meter.add(shard["documents"], shard["tokens"], os.path.getsize(items[i][0]))

  task = functools.partial(_index_one, dtype=tokenizer.dtype, eos_id=tokenizer.eos_id,
                           vocab_size=tokenizer.vocab_size, folder=folder)
  with _Workers(_workers(options.workers)) as workers:
    workers.run(task, items, done)
  meter.add(0, 0, 0, final=True)
  sample = _validation_sample(folder, shards, tokenizer)
  text_bytes = len(tokenizer.decode_bytes(sample[sample != tokenizer.eos_id]))
  manifest = {
      "format": token_files.FORMAT, "version": token_files.VERSION,
      "dtype": tokenizer.dtype.name, "vocab_size": tokenizer.vocab_size,
      "eos_id": tokenizer.eos_id,
      "tokenizer": {"name": tokenizer.name, "files": tokenizer.files},
      "bytes_per_token": text_bytes / max(sample.size, 1),
      "bytes_per_token_from": f"the first {sample.size} validation tokens, decoded",
      "shards": shards,
      "totals": {split: {key: sum(s[key] for s in shards if s["split"] == split)
                         for key in ("documents", "tokens")} for split in token_files.SPLITS},
      "split_rule": "whole files: --validation_input names the validation files",
      "source": {"indexed": True, "input": options.input,
                 "validation_input": options.validation_input},
  }
  if manifest["totals"]["validation"]["tokens"] == 0:
    raise BadInput(f"--validation_input={options.validation_input!r} holds no tokens: an "
                   "empty validation split")
  token_files.write_json_atomic(epath.Path(folder) / token_files.MANIFEST, manifest)
  return (f"{options.out}: indexed {len(shards)} files, "
          f"{manifest['totals']['train']['tokens']:,} train and "
          f"{manifest['totals']['validation']['tokens']:,} validation tokens, "
          f"{manifest['bytes_per_token']:.3f} bytes/token")


def _validation_sample(folder: str, shards: list[dict], tokenizer) -> np.ndarray:
  parts, left = [], BYTES_PER_TOKEN_SAMPLE
  for entry in shards:
    if entry["split"] != "validation" or left == 0:
      continue
    shard = token_files.Shard(**{f.name: entry[f.name] for f in dataclasses.fields(
        token_files.Shard)})
    reader = token_files.ShardReader(epath.Path(folder) / shard.file, shard, tokenizer.dtype)
    parts.append(reader.read(0, min(shard.tokens, left)))
    left -= parts[-1].size
  return np.concatenate(parts) if parts else np.zeros(0, tokenizer.dtype)
