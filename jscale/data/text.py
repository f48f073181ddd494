"""Byte-level language-model data: documents -> split -> windows -> batches.

Tokens are bytes (vocabulary 256). Letters: B batch rows, L = seq_len tokens per
example, W = L + 1 tokens per window (inputs and targets are the window shifted
by one).

Split, by document: documents are sorted by the sha256 of their name, and the
first ceil(validation_fraction * n) (at least 1, at most n - 1) are validation.
No validation byte is ever in the training stream, and the split does not move
when documents are added elsewhere in the order.

Training: the training documents, in name order, form one byte stream. Epoch e
cuts it into non-overlapping windows of W tokens starting at a random offset in
[0, W) and visits them in a random order; both are drawn from (seed, e) (see
order.py), so no window repeats within an epoch and step t's batch depends on
nothing but (seed, t). Windows may span the join between two documents.

Evaluation: the validation documents form a second stream, read as consecutive
windows from offset 0, always the same.
"""

import hashlib
import math
from typing import NamedTuple, Sequence

import numpy as np

from jscale.data import order
from jscale.errors import BadInput

VOCAB_SIZE = 256

SPLIT_RULE = ("documents sorted by sha256(name); the first "
              "ceil(validation_fraction * n), clipped to [1, n - 1], are validation")


class Document(NamedTuple):
  name: str
  content: bytes


def split_documents(documents: Sequence[Document], validation_fraction: float
                    ) -> tuple[list[Document], list[Document]]:
  """(train, validation) documents, each list in name order; see SPLIT_RULE."""
  if len(documents) < 2:
    raise BadInput(f"a text corpus needs at least 2 documents to split into "
                     f"train and validation, got {len(documents)}")
  by_hash = sorted(documents,
                   key=lambda d: hashlib.sha256(d.name.encode()).hexdigest())
  num_validation = min(max(1, math.ceil(validation_fraction * len(documents))),
                       len(documents) - 1)
  validation = sorted(by_hash[:num_validation], key=lambda d: d.name)
  train = sorted(by_hash[num_validation:], key=lambda d: d.name)
  return train, validation


def content_sha256(documents: Sequence[Document]) -> str:
  """A digest of every (name, content) pair, independent of input order."""
  digest = hashlib.sha256()
  for document in sorted(documents, key=lambda d: d.name):
    for part in (document.name.encode(), document.content):
      digest.update(len(part).to_bytes(8, "little"))
      digest.update(part)
  return digest.hexdigest()


def _stream(documents: Sequence[Document]) -> np.ndarray:
  return np.frombuffer(b"".join(d.content for d in documents), dtype=np.uint8)


def _as_batch(windows_BxW: np.ndarray) -> dict[str, np.ndarray]:
  tokens_BxW = windows_BxW.astype(np.int32)
  return {"inputs": tokens_BxW[:, :-1], "targets": tokens_BxW[:, 1:]}


class TextDataset:
  """Batches of byte tokens from a document collection; see the module docstring."""

  kind = "text"
  vocab_size = VOCAB_SIZE
  bytes_per_token = 1.0  # byte tokens: val_bpb is nats per token / ln 2

  def __init__(self, name: str, documents: Sequence[Document], seq_len: int,
               validation_fraction: float, source: dict):
    self.name = name
    self.seq_len = seq_len
    self.units_per_example = seq_len
    self._source = source
    self._content_sha256 = content_sha256(documents)
    self._train_docs, self._validation_docs = split_documents(
        documents, validation_fraction)
    self._train = _stream(self._train_docs)
    self._validation = _stream(self._validation_docs)
    self._window = seq_len + 1
    # With any offset in [0, W), this many windows still fit in the stream.
    self._windows_per_epoch = (self._train.size - self._window + 1) // self._window
    if self._windows_per_epoch < 1:
      raise BadInput(f"data.seq_len={seq_len} is too long for corpus {name!r}, "
                       f"whose training split has {self._train.size} tokens")

  @property
  def num_train_units(self) -> int:
    return int(self._train.size)

  @property
  def windows_per_epoch(self) -> int:
    return self._windows_per_epoch

  def train_batch(self, step: int, batch_size: int, seed: int,
                  shard_index: int = 0, shard_count: int = 1
                  ) -> dict[str, np.ndarray]:
    """This shard's rows of global training batch `step`: int32 [B/k, L] inputs, targets."""
    epochs, windows = order.train_slots(step, seed, batch_size, shard_index,
                                        shard_count, self._windows_per_epoch)
    offsets = order.uniform_below(order.epoch_keys(seed, epochs), self._window)
    starts = offsets + windows * self._window
    return _as_batch(self._train[starts[:, None] + np.arange(self._window)])

  def eval_batches(self, batch_size: int, num_batches: int, shard_index: int = 0,
                   shard_count: int = 1) -> list[dict[str, np.ndarray]]:
    """The fixed validation batches: consecutive windows from the stream's start.

    Returns `num_batches` batches, or all the full batches that fit if fewer do.
    """
    rows = order.shard_rows(batch_size, shard_index, shard_count)
    if not isinstance(num_batches, int) or num_batches < 1:
      raise ValueError(f"num_batches must be a positive integer, got {num_batches!r}")
    available = self._validation.size // self._window // batch_size
    if available < 1:
      raise BadInput(
          f"validation split of {self.name!r} has {self._validation.size} tokens, "
          f"fewer than one batch of {batch_size} x {self._window}; lower "
          f"batch_size or data.seq_len, or raise data.validation_fraction")
    windows_NxBxW = self._validation[
        :available * batch_size * self._window].reshape(
            available, batch_size, self._window)
    return [_as_batch(windows_NxBxW[b, rows])
            for b in range(min(num_batches, available))]

  def metadata(self) -> dict:
    return {
        "name": self.name,
        "kind": self.kind,
        "content_sha256": self._content_sha256,
        "source": self._source,
        "vocab_size": self.vocab_size,
        "seq_len": self.seq_len,
        "split_rule": SPLIT_RULE,
        "documents": {"train": len(self._train_docs),
                      "validation": len(self._validation_docs)},
        "tokens": {"train": int(self._train.size),
                   "validation": int(self._validation.size)},
        "windows_per_epoch": self._windows_per_epoch,
    }
