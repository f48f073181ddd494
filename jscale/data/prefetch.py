"""Loading the next batch while the current step runs: a transparent dataset wrapper.

``Prefetched(dataset)`` behaves as ``dataset``; its ``train_batch(step, ...)`` returns the
batch (from the background thread when it was loaded ahead, else read now) and queues
steps ``step + 1 .. step + depth`` with the same arguments on one background thread. Each
stream of calls (a run, or each run of a stacked group) gets its own look-ahead. Batches
are pure functions of their arguments, so nothing but the timing changes; an error while
loading ahead surfaces at the call that asks for that batch.
"""

import concurrent.futures
import time

DEPTH = 2  # batches loaded ahead of each stream
_MAX_PENDING = 16  # look-ahead kept at most (several streams), oldest dropped first


class Prefetched:
  """``dataset`` with training batches loaded ahead on a background thread."""

  def __init__(self, dataset, depth: int = DEPTH):
    self._dataset, self._depth = dataset, depth
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="jscale-data")
    self._pending: dict[tuple, concurrent.futures.Future] = {}
    self.wait_seconds = 0.0  # time train_batch spent blocked on loading

  def __getattr__(self, name):
    if name.startswith("_"):  # not delegated (and no recursion before __init__ ran)
      raise AttributeError(name)
    return getattr(self._dataset, name)

  def train_batch(self, step: int, batch_size: int, seed: int, shard_index: int = 0,
                  shard_count: int = 1) -> dict:
    began = time.perf_counter()
    key = (step, batch_size, seed, shard_index, shard_count)
    future = self._pending.pop(key, None)
    batch = future.result() if future is not None else self._dataset.train_batch(*key)
    self.wait_seconds += time.perf_counter() - began
    for stale in [k for k in self._pending if k[1:] == key[1:] and k[0] < step]:
      self._pending.pop(stale).cancel()  # this stream moved on (a resume, a restart)
    for ahead in range(step + 1, step + 1 + self._depth):
      later = (ahead,) + key[1:]
      if later not in self._pending:
        self._pending[later] = self._pool.submit(self._dataset.train_batch, *later)
    while len(self._pending) > _MAX_PENDING:
      self._pending.pop(next(iter(self._pending))).cancel()
    return batch


def prefetched(dataset):
  """``dataset`` wrapped in ``Prefetched`` (once: a wrapped dataset is returned as is)."""
  return dataset if isinstance(dataset, Prefetched) else Prefetched(dataset)
