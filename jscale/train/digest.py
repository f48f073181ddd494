"""A checkpoint's integrity digest that no process needs every array for.

A sharded state is spread over devices and, with several processes, no process holds it
all, so the digest cannot hash the arrays' bytes in order. Instead every array gets two
position-weighted sums of its 32-bit words, modulo 2**32:

    s_k = sum_i  word_i * w_k(i)   with  w_k(i) = (i * A_k + C_k) mod 2**32, made odd,

where i is the element's flat index in the global array. Integer addition commutes, so
each process sums the shards it holds (one copy of each: ``replica_id == 0``), the
processes add their partial sums, and the result is the same whatever the mesh, the
sharding or the process count at save and at restore. An odd weight is invertible
modulo 2**32, so changing any single element always changes both sums; a random
corruption of many passes unseen with probability about 2**-64. The digest is sha256
over every array's path, dtype, shape and its two sums. It guards against damage
(truncated or garbled files), not against someone forging a checkpoint.
"""

import hashlib

import jax
import numpy as np
from jax.experimental import multihost_utils

_MULTIPLIERS = (np.uint32(0x9E3779B1), np.uint32(0x85EBCA77))
_OFFSETS = (np.uint32(0x7F4A7C15), np.uint32(0x165667B1))
_CHUNK = 1 << 22  # elements weighed at once: bounds the temporary arrays


def _words(values: np.ndarray) -> np.ndarray:
  """The array's elements as uint32 holding their bit patterns (bool as 0/1)."""
  values = np.ascontiguousarray(values)
  if values.dtype == np.bool_:
    return values.astype(np.uint32)
  return values.view(np.dtype(f"uint{values.dtype.itemsize * 8}")).astype(np.uint32,
                                                                          copy=False)


def _weighted_sums(values: np.ndarray, start: tuple[int, ...],
                   shape: tuple[int, ...]) -> np.ndarray:
  """(s_1, s_2) of a block of a global array of ``shape`` that begins at ``start``. All
  arithmetic is uint32, which wraps: modulo 2**32 by construction."""
  if not shape:
    values, start, shape = values.reshape(1), (0,), (1,)
  strides = [int(np.prod(shape[k + 1:], dtype=np.int64)) for k in range(len(shape))]
  # The flat global index of the block's first row, element by element, then per row.
  row = np.zeros(values.shape[1:], np.uint32)
  for k in range(1, len(shape)):
    along = (np.arange(values.shape[k], dtype=np.uint64) + start[k]) * strides[k]
    row = row + along.astype(np.uint32).reshape((-1,) + (1,) * (len(shape) - 1 - k))
  words = _words(values).reshape(values.shape[0], -1)
  row = row.reshape(1, -1)
  step = max(1, _CHUNK // max(row.size, 1))
  sums = np.zeros(2, np.uint32)
  for lo in range(0, values.shape[0], step):
    rows = ((np.arange(lo, min(lo + step, values.shape[0]), dtype=np.uint64) + start[0])
            * strides[0]).astype(np.uint32)
    flat = rows[:, None] + row
    weights = [(flat * m + c) | np.uint32(1) for m, c in zip(_MULTIPLIERS, _OFFSETS)]
    sums += np.array([np.sum(words[lo:lo + step] * w, dtype=np.uint32) for w in weights])
  return sums


def _local_sums(leaf) -> np.ndarray:
  """This process's share of a leaf's (s_1, s_2): the shards it holds the first copy of."""
  shape = tuple(np.shape(leaf))
  if not isinstance(leaf, jax.Array):
    if jax.process_index() != 0:  # a host value: every process has it, one counts it
      return np.zeros(2, np.uint32)
    return _weighted_sums(np.asarray(leaf), (0,) * len(shape), shape)
  sums = np.zeros(2, np.uint32)
  for shard in leaf.addressable_shards:
    if shard.replica_id == 0:
      start = tuple(s.indices(n)[0] for s, n in zip(shard.index, shape))
      sums += _weighted_sums(np.asarray(shard.data), start, shape)
  return sums


def state_digest(state) -> str:
  """The digest of every array of ``state`` (module docstring): the same for the same
  values on any mesh and process count. Every process must call it (a collective)."""
  leaves = jax.tree_util.tree_leaves_with_path(state)
  sums = np.stack([_local_sums(leaf) for _, leaf in leaves]) if leaves else np.zeros(
      (0, 2), np.uint32)
  if jax.process_count() > 1:  # each process's share, added up (uint32: modulo 2**32)
    sums = np.sum(multihost_utils.process_allgather(sums), axis=0, dtype=np.uint32)
  h = hashlib.sha256()
  for (path, leaf), (s1, s2) in zip(leaves, sums.tolist()):
    h.update(f"{jax.tree_util.keystr(path)}|{np.dtype(leaf.dtype)}|{tuple(np.shape(leaf))}|"
             f"{s1:08x}{s2:08x}\n".encode())
  return h.hexdigest()


def legacy_sha256(state) -> str | None:
  """The digest jscale recorded before sharding (sha256 of every array's bytes in tree
  order), for checkpoints saved then; None where this process does not hold every
  array (they restore unverified)."""
  leaves = jax.tree_util.tree_leaves_with_path(state)
  if any(isinstance(x, jax.Array) and not x.is_fully_addressable for _, x in leaves):
    return None
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(state)):
    array = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|".encode())
    h.update(array.tobytes())
  return h.hexdigest()
