"""Token data throughput: the loader warm and cold, tokenizing, memory, and data stalls.

    python benchmarks/data_throughput.py [--smoke] [--file_gb=2.0] [--seq_len=1024]
        [--batch=32] [--seconds=5] [--workdir=/tmp]

Everything runs in one process, side by side:

* loader, warm: ``train_batch`` of ``data.name="tokens"`` (positioned reads, one per row)
  on a ``--file_gb`` file of random uint16 tokens already in the page cache; tokens/s per
  process. The same windows read through ``np.memmap`` for comparison.
* loader, cold: the same after ``posix_fadvise(DONTNEED)`` evicts the file from the page
  cache (other windows, so nothing read warm is reused).
* memory: RSS growth while reading every window of the file once (one epoch), for the
  loader and for ``np.memmap`` (whose touched pages stay resident in the process).
* tokenize: ``experiments.tokenize``'s pipeline with gpt2 on Shakespeare (from the data
  cache; 5 numbered copies as JSONL, 1 with --smoke) with one worker: tokens/s per core,
  tokenizer loading, scan, hashing and writes included.
* stalls: ``jscale.train.train`` on the token folder (a small LM, word-level vocabulary
  of 4,096) with the loop's prefetching: time ``train_batch`` blocked / training step time;
  and the time one batch takes to load without prefetching, for comparison.

The token file is deleted at the end. Ends with one line:
``loader_tokens_per_s=... loader_cold_tokens_per_s=... tokenize_tokens_per_s=...
rss_growth_mb=... stall_fraction=...``.
"""

import argparse
import json
import os
import shutil
import tempfile
import time

import jax
import numpy as np
import tokenizers

from jscale import data as data_lib
from jscale.data import cache as cache_lib
from jscale.data import corpora, token_build, tokens
from jscale.data import tokenize_corpus as corpus_lib
from jscale.data import tokenizer as tokenizer_lib
from jscale.data.prefetch import Prefetched
from jscale.train import config as config_lib
from jscale.train import train
from jscale.train.sharding import data_parallel

VOCAB = 4096


def _rss_mb() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  raise RuntimeError("no VmRSS in /proc/self/status")


def _word_tokenizer(folder: str) -> str:
  vocab = {"[UNK]": 0, "<|endoftext|>": 1, **{f"t{i}": i for i in range(2, VOCAB)}}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  path = os.path.join(folder, "tokenizer.json")
  tok.save(path)
  return f"hf:{path}"


def _token_folder(folder: str, file_bytes: int) -> str:
  """A folder with one random-token training file of ``file_bytes`` and a small
  validation file, indexed (``--index``)."""
  rng = np.random.default_rng(0)
  block = 1 << 24
  with open(os.path.join(folder, "train.u16"), "wb") as f:
    for start in range(0, file_bytes // 2, block):
      rng.integers(1, VOCAB, min(block, file_bytes // 2 - start), dtype=np.uint16).tofile(f)
  rng.integers(1, VOCAB, 1 << 20, dtype=np.uint16).tofile(os.path.join(folder, "val.u16"))
  token_build.index(token_build.IndexOptions(
      os.path.join(folder, "train.u16"), os.path.join(folder, "val.u16"), folder,
      tokenizer_lib.TokenizerSpec(_word_tokenizer(folder)), workers=1),
      progress=lambda line: None)
  return folder


def _evict(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  os.fsync(fd)
  os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
  os.close(fd)


def _warm(path: str) -> None:
  with open(path, "rb") as f:
    while f.read(1 << 24):
      pass


def _loader_rate(ds, batch: int, seed: int, seconds: float) -> tuple[float, int]:
  """Tokens/s of train_batch over ``seconds``, and the steps it took."""
  step, began = 0, time.perf_counter()
  while time.perf_counter() - began < seconds:
    ds.train_batch(step, batch, seed)
    step += 1
  return step * batch * ds.seq_len / (time.perf_counter() - began), step


def _memmap_rate(path: str, ds, batch: int, seed: int, steps: int) -> float:
  """Tokens/s of the same windows read through np.memmap (row slices, int32 out)."""
  array, window = np.memmap(path, np.uint16, mode="r"), ds.seq_len + 1
  began = time.perf_counter()
  for step in range(steps):
    _, windows = _slots(ds, step, batch, seed)
    out = np.empty((batch, window), np.int32)
    for row, start in enumerate((windows * window).tolist()):
      out[row] = array[start:start + window]
  return steps * batch * ds.seq_len / (time.perf_counter() - began)


def _slots(ds, step, batch, seed):
  return data_lib.order.train_slots(step, seed, batch, 0, 1, ds.windows_per_epoch)


def _epoch_rss(read_batch, steps: int) -> float:
  """Largest RSS growth (MB) while ``read_batch(step)`` runs for ``steps`` steps."""
  before = peak = _rss_mb()
  for step in range(steps):
    read_batch(step)
    if step % 256 == 0:
      peak = max(peak, _rss_mb())
  return max(peak, _rss_mb()) - before


def _memmap_reader(path, ds, batch):
  array, window = np.memmap(path, np.uint16, mode="r"), ds.seq_len + 1

  def read(step):
    _, windows = _slots(ds, step, batch, 5)
    for start in (windows * window).tolist():
      np.asarray(array[start:start + window], np.int32)
  return read


def _tokenize_rate(workdir: str, copies: int) -> tuple[float, int]:
  """Tokens/s of the whole tokenize step (scan, tokenize, hash, write) with one worker, on
  ``copies`` copies of Shakespeare's 42 texts (each copy headed by its number, so none is
  an exact duplicate), as JSONL."""
  documents = corpora.shakespeare(cache_lib.cache_dir())[0]
  source = os.path.join(workdir, "shakespeare.jsonl")
  with open(source, "w") as f:
    for copy in range(copies):
      for d in documents:
        f.write(json.dumps({"text": f"copy {copy}\n" + d.content.decode()}) + "\n")
  out = os.path.join(workdir, "shakespeare-gpt2")
  options = corpus_lib.Options(input=source, out=out, validation_fraction=0.1, workers=1,
                               tokenizer=tokenizer_lib.TokenizerSpec("gpt2"))
  began = time.perf_counter()
  token_build.tokenize(options, progress=lambda line: None)
  seconds = time.perf_counter() - began
  with open(os.path.join(out, "manifest.json")) as f:
    totals = json.load(f)["totals"]
  count = totals["train"]["tokens"] + totals["validation"]["tokens"]
  shutil.rmtree(out)
  os.remove(source)
  return count / seconds, count


def _stall(folder: str, smoke: bool) -> dict:
  c = config_lib.base_config()
  c.data.name, c.data.tokens_dir, c.data.seq_len = "tokens", folder, 128
  c.model.width, c.model.depth, c.model.num_heads = 64, 2, 2
  c.train.steps, c.train.global_batch, c.train.warmup_steps = (6 if smoke else 40), 16, 2
  c.train.eval_every, c.train.eval_batches, c.train.log_every = 1000, 1, 1000
  c.checkpoint.every = 10**6
  ds = data_lib.load(config_lib.data_spec(c))
  run = config_lib.resolve(c, ds)
  ahead = Prefetched(ds)
  with tempfile.TemporaryDirectory() as run_dir:
    result = train(run, ahead, run_dir, dp=data_parallel(1), progress=lambda p: None)
  step_seconds = c.train.global_batch * c.data.seq_len / result["tokens_per_second"]
  began = time.perf_counter()
  for step in range(20):
    ds.train_batch(10_000 + step, c.train.global_batch, 1)
  load_seconds = (time.perf_counter() - began) / 20
  return {"stall_fraction": ahead.wait_seconds / (c.train.steps * step_seconds),
          "step_seconds": step_seconds, "load_seconds": load_seconds}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
  parser.add_argument("--file_gb", type=float, default=2.0)
  parser.add_argument("--seq_len", type=int, default=1024)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--seconds", type=float, default=5.0, help="per loader measurement")
  parser.add_argument("--workdir", default=tempfile.gettempdir())
  args = parser.parse_args()
  file_bytes = (16 << 20) if args.smoke else int(args.file_gb * 2**30)
  seconds = 0.5 if args.smoke else args.seconds
  print(f"device {jax.devices()[0].device_kind}, {os.cpu_count()} cpus, "
        f"load average {os.getloadavg()}")
  folder = tempfile.mkdtemp(prefix="jscale-data-bench-", dir=args.workdir)
  try:
    began = time.perf_counter()
    _token_folder(folder, file_bytes)
    path = os.path.join(folder, "train.u16")
    print(f"wrote and indexed {file_bytes / 2**30:.2f} GiB of tokens in "
          f"{time.perf_counter() - began:.1f}s")
    ds = tokens.TokenDataset(folder, args.seq_len)

    _warm(path)
    warm, steps = _loader_rate(ds, args.batch, 1, seconds)
    memmap_warm = _memmap_rate(path, ds, args.batch, 1, steps)
    print(f"loader warm: {warm / 1e6:.1f}M tokens/s (np.memmap, same windows: "
          f"{memmap_warm / 1e6:.1f}M), batch {args.batch} x {args.seq_len}")
    _evict(path)
    cold, _ = _loader_rate(ds, args.batch, 2, seconds)
    _evict(path)
    memmap_cold = _memmap_rate(path, ds, args.batch, 3, max(1, steps // 20))
    print(f"loader cold (page cache dropped): {cold / 1e6:.1f}M tokens/s (np.memmap: "
          f"{memmap_cold / 1e6:.1f}M)")

    _warm(path)
    epoch_steps = ds.windows_per_epoch // args.batch
    growth = _epoch_rss(lambda step: ds.train_batch(step, args.batch, 4), epoch_steps)
    memmap_growth = _epoch_rss(_memmap_reader(path, ds, args.batch), epoch_steps)
    print(f"one epoch ({epoch_steps} batches, {file_bytes / 2**20:.0f} MiB file): RSS grew "
          f"{growth:.1f} MB (np.memmap: {memmap_growth:.1f} MB)")

    rate, count = _tokenize_rate(folder, copies=1 if args.smoke else 5)
    print(f"tokenize gpt2, 1 worker: {rate / 1e6:.2f}M tokens/s ({count:,} tokens of "
          f"Shakespeare, scan, hashing and writes included)")

    stall = _stall(folder, args.smoke)
    unhidden = stall["load_seconds"] / stall["step_seconds"]
    print(f"training on tokens: step {stall['step_seconds'] * 1e3:.1f} ms, one batch loads in "
          f"{stall['load_seconds'] * 1e3:.3f} ms ({unhidden:.2%} of a step without "
          f"prefetching); blocked on data {stall['stall_fraction']:.3%} of step time with it")
  finally:
    shutil.rmtree(folder)
  print(f"loader_tokens_per_s={warm:.0f} loader_cold_tokens_per_s={cold:.0f} "
        f"tokenize_tokens_per_s={rate:.0f} rss_growth_mb={growth:.1f} "
        f"stall_fraction={stall['stall_fraction']:.5f}")


if __name__ == "__main__":
  main()
