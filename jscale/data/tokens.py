"""Language-model batches from a token folder (``data.name="tokens"``, token_files.py).

Letters: B batch rows, L = seq_len, W = L + 1 tokens per window.

Training: each training shard, in manifest order, is cut into non-overlapping windows of W
tokens; the windows are numbered across all shards, and the (seed, step) order of
order.py picks them, exactly as text.py does for a byte stream: epoch e starts every
shard's windows at an offset in [0, W) drawn from (seed, e), no window repeats within an
epoch, and a batch depends only on (seed, step) and the manifest, never on how many
processes read it. Windows never span two shards, so a shard holds
(tokens - W + 1) // W windows whatever the offset. Each process reads only its rows of a
batch, with one positioned read per row: memory stays flat however large the corpus.

Evaluation: the validation shards' consecutive windows from offset 0, always the same.
"""

import numpy as np

from jscale.data import order, token_files
from jscale.errors import BadInput


def _as_batch(windows_BxW: np.ndarray) -> dict[str, np.ndarray]:
  tokens_BxW = windows_BxW.astype(np.int32)
  return {"inputs": tokens_BxW[:, :-1], "targets": tokens_BxW[:, 1:]}


class TokenDataset:
  """Batches of token windows read from a token folder; see the module docstring."""

  kind = "text"
  name = "tokens"

  def __init__(self, folder: str, seq_len: int):
    self._manifest, readers = token_files.open_folder(folder)
    self._folder = folder
    self.seq_len = seq_len
    self.units_per_example = seq_len
    self.vocab_size = self._manifest.vocab_size
    # val_bpb = nats per token / ln 2 / bytes per token (measured when tokenizing).
    self.bytes_per_token = self._manifest.bytes_per_token
    self._window = seq_len + 1
    self._train, self._validation = readers["train"], readers["validation"]
    per_shard = [max(0, (r.shard.tokens - self._window + 1) // self._window)
                 for r in self._train]
    self._first_window = np.cumsum([0] + per_shard)
    self._windows_per_epoch = int(self._first_window[-1])
    if self._windows_per_epoch < 1:
      raise BadInput(f"data.seq_len={seq_len} is too long for the token folder {folder}: no "
                     f"training shard holds {2 * self._window - 1} tokens")
    if not self._validation or not sum(r.shard.tokens for r in self._validation):
      raise BadInput(f"token folder {folder} has an empty validation split")

  @property
  def num_train_units(self) -> int:
    return sum(r.shard.tokens for r in self._train)

  @property
  def windows_per_epoch(self) -> int:
    return self._windows_per_epoch

  def _read(self, readers, first_window: np.ndarray, windows: np.ndarray,
            offsets: np.ndarray) -> np.ndarray:
    shards = np.searchsorted(first_window, windows, side="right") - 1
    starts = offsets + (windows - first_window[shards]) * self._window
    out_BxW = np.empty((windows.size, self._window), self._manifest.dtype)
    for row, (shard, start) in enumerate(zip(shards.tolist(), starts.tolist())):
      readers[shard].read_into(out_BxW[row], start)
    return out_BxW

  def train_batch(self, step: int, batch_size: int, seed: int,
                  shard_index: int = 0, shard_count: int = 1) -> dict[str, np.ndarray]:
    """This shard's rows of global training batch `step`: int32 [B/k, L] inputs, targets."""
    epochs, windows = order.train_slots(step, seed, batch_size, shard_index, shard_count,
                                        self._windows_per_epoch)
    offsets = order.uniform_below(order.epoch_keys(seed, epochs), self._window)
    return _as_batch(self._read(self._train, self._first_window, windows, offsets))

  def eval_batches(self, batch_size: int, num_batches: int, shard_index: int = 0,
                   shard_count: int = 1) -> list[dict[str, np.ndarray]]:
    """The fixed validation batches: consecutive windows from the validation shards' start.

    Returns `num_batches` batches, or all the full batches that fit if fewer do.
    """
    rows = order.shard_rows(batch_size, shard_index, shard_count)
    if not isinstance(num_batches, int) or num_batches < 1:
      raise ValueError(f"num_batches must be a positive integer, got {num_batches!r}")
    first_window = np.cumsum([0] + [r.shard.tokens // self._window for r in self._validation])
    available = int(first_window[-1]) // batch_size
    if available < 1:
      raise BadInput(
          f"the validation split of {self._folder} has {int(first_window[-1])} windows of "
          f"{self._window} tokens, fewer than one batch of {batch_size}; lower batch_size "
          "or data.seq_len, or tokenize with a larger --validation_fraction")
    count = min(num_batches, available)
    windows_NxB = np.arange(count * batch_size).reshape(count, batch_size)[:, rows]
    return [_as_batch(self._read(self._validation, first_window, w, np.zeros_like(w)))
            for w in windows_NxB]

  def metadata(self) -> dict:
    record = self._manifest.record
    totals = record.get("totals", {})
    return {
        "name": self.name,
        "kind": self.kind,
        # The manifest's fingerprint: every shard's sha256, tokenizer, vocabulary.
        "content_sha256": self._manifest.fingerprint,
        "source": {"tokens_dir": self._folder, "tokenizer": record.get("tokenizer"),
                   "format_version": record["version"]},
        "vocab_size": self.vocab_size,
        "seq_len": self.seq_len,
        "bytes_per_token": self.bytes_per_token,
        "split_rule": record.get("split_rule"),
        "documents": {split: totals.get(split, {}).get("documents")
                      for split in token_files.SPLITS},
        "tokens": {"train": self.num_train_units,
                   "validation": sum(r.shard.tokens for r in self._validation)},
        "windows_per_epoch": self._windows_per_epoch,
        "dropped": record.get("dropped"),
    }
