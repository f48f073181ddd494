"""Which example fills which batch row: a pure function of (seed, step).

Training reads an endless sequence of *slots*: epoch e holds slots
[e*n, (e+1)*n) and visits all n examples once, in an order drawn from
(seed, e). Step t of a global batch of size B is slots [t*B, (t+1)*B), and
shard i of k takes rows [i*B/k, (i+1)*B/k) of that, so the global batch never
depends on how many shards read it, and resuming at step t needs only t.

Epoch orders come from a keyed Feistel network over [0, n) (cycle walking trims
the power-of-two domain back to n), so one slot's example costs O(1) and a batch
O(B); no per-call O(n) permutation is ever built.
"""

import numpy as np

_ROUNDS = 6
_MASK64 = (1 << 64) - 1


# NumPy scalars made once: building one from a Python int costs more than the arithmetic
# on a batch's few values.
_SHIFTS = np.uint64(30), np.uint64(27), np.uint64(31)
_MULTIPLIERS = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_ROUND_OFFSETS = tuple(np.uint64((r + 1) * 0x9E3779B97F4A7C15 & _MASK64) for r in range(_ROUNDS))


def _mix(x: np.ndarray) -> np.ndarray:
  """SplitMix64's finaliser: a fast bijective scramble of uint64 values."""
  x = x ^ (x >> _SHIFTS[0])
  x *= _MULTIPLIERS[0]
  x ^= x >> _SHIFTS[1]
  x *= _MULTIPLIERS[1]
  return x ^ (x >> _SHIFTS[2])


def epoch_keys(seed: int, epochs: np.ndarray) -> np.ndarray:
  """One uint64 key per epoch, different for every (seed, epoch)."""
  seed_key = _mix(np.array([seed & _MASK64], np.uint64))
  return _mix(seed_key ^ _mix(epochs.astype(np.uint64) + np.uint64(1)))


def uniform_below(keys: np.ndarray, bound: int) -> np.ndarray:
  """A value in [0, bound) drawn from each key (independent of the permutation)."""
  salted = _mix(keys ^ np.uint64(0x5851F42D4C957F2D))
  return (salted % np.uint64(bound)).astype(np.int64)


def permute(indices: np.ndarray, n: int, keys: np.ndarray) -> np.ndarray:
  """Maps each index in [0, n) through the bijection of [0, n) chosen by its key."""
  half_bits = max(1, (int(n - 1).bit_length() + 1) // 2)
  half_mask = np.uint64((1 << half_bits) - 1)
  shift = np.uint64(half_bits)
  round_keys = [_mix(keys + offset) for offset in _ROUND_OFFSETS]

  def feistel(x, round_keys):
    left, right = x >> shift, x & half_mask
    for round_key in round_keys:
      left, right = right, left ^ (_mix(right ^ round_key) & half_mask)
    return (left << shift) | right

  # Cycle walking: re-encrypt values that land outside [0, n) until they don't.
  # The domain is under 4n, so this takes a few passes.
  bound = np.uint64(n)
  out = feistel(indices.astype(np.uint64), round_keys)
  outside = np.flatnonzero(out >= bound)
  while outside.size:
    out[outside] = feistel(out[outside], [k[outside] for k in round_keys])
    outside = outside[out[outside] >= bound]
  return out.astype(np.int64)


def check_batch_args(batch_size: int, shard_index: int, shard_count: int) -> None:
  """ValueError (one line) unless the shard is a well-formed slice of the batch."""
  for field, value in (("batch_size", batch_size), ("shard_count", shard_count)):
    if not _is_int(value) or value < 1:
      raise ValueError(f"{field} must be a positive integer, got {value!r}")
  if not _is_int(shard_index) or not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index must be an integer in [0, {shard_count}), "
                     f"got {shard_index!r}")
  if batch_size % shard_count:
    raise ValueError(f"batch_size must be divisible by shard_count={shard_count}, "
                     f"got {batch_size}")


def shard_rows(batch_size: int, shard_index: int, shard_count: int) -> np.ndarray:
  """Rows of the global batch that this shard reads."""
  check_batch_args(batch_size, shard_index, shard_count)
  rows = batch_size // shard_count
  return np.arange(shard_index * rows, (shard_index + 1) * rows, dtype=np.int64)


def train_slots(step: int, seed: int, batch_size: int, shard_index: int,
                shard_count: int, n: int) -> tuple[np.ndarray, np.ndarray]:
  """(epoch, example index in [0, n)) for this shard's rows of step `step`."""
  if not _is_int(step) or step < 0:
    raise ValueError(f"step must be a non-negative integer, got {step!r}")
  if not _is_int(seed):
    raise ValueError(f"seed must be an integer, got {seed!r}")
  slots = step * batch_size + shard_rows(batch_size, shard_index, shard_count)
  epochs, positions = np.divmod(slots, n)
  return epochs, permute(positions, n, epoch_keys(seed, epochs))


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
