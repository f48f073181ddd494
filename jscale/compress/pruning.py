"""Magnitude pruning: unstructured (per layer or global) and N:M, gradual or one-shot.

Compute is simulated: pruned weights are exact zeros in dense float matrices, so a
sparse model costs the FLOPs of a dense one here; the run records its non-zero count.

Gradual pruning follows Zhu & Gupta (2017) with jaxpruner's polynomial schedule: the
masks live in the optax state and are recomputed from weight magnitudes at every
``update_every``-th update in [start_step, end_step] at sparsity ``sparsity_at(count)``;
between updates, updates of pruned weights are masked and ``post_update`` re-applies
the masks, so pruned weights stay exactly zero.
"""

import dataclasses
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jscale.compress import base
from jscale.errors import BadInput
from jscale.models import params as params_lib

STRUCTURES = ("unstructured", "n:m")
SCOPES = ("layer", "global")
WHEN = ("gradual", "one_shot")


def polynomial_sparsity(step, target: float, start: int, end: int, power: int = 3):
  """target * (1 - (1 - progress)^power), progress = clip(step + 1 - start, 0, L) / L.

  Equals jaxpruner's ``PolynomialSchedule``: 0 up to ``start - 1``, the target from
  ``end - 1`` on; ``step`` may be traced.
  """
  if end == start:
    return jnp.asarray(target, jnp.float32)
  length = float(end - start)
  progress = jnp.clip(jnp.asarray(step, jnp.float32) + 1.0 - start, 0.0, length) / length
  return target * (1.0 - (1.0 - progress) ** power)


def topk_mask(score, keep):
  """Bool mask of the ``keep`` largest scores (exactly ``keep``, ties by position)."""
  flat = score.reshape(-1)
  order = jnp.argsort(-flat)
  kept = jnp.arange(flat.size) < keep
  return jnp.zeros(flat.shape, bool).at[order].set(kept).reshape(score.shape)


def kept_count(size: int, sparsity):
  return jnp.round(size * (1.0 - sparsity)).astype(jnp.int32)


def n_m_mask(weight, n: int, m: int):
  """Keeps the n largest of every m consecutive weights along the contracting axes.

  The output channel is the last axis; groups run along the flattened remaining axes
  (the input axis varies fastest, as sparse tensor cores expect).
  """
  out = weight.shape[-1]
  rows = weight.reshape(-1, out).T  # [out, contracting]
  groups = jnp.abs(rows).reshape(out, -1, m)
  ranks = jnp.argsort(jnp.argsort(-groups, axis=-1), axis=-1)
  return (ranks < n).reshape(rows.shape).T.reshape(weight.shape)


class PruneState(NamedTuple):
  masks: object  # bool tree mirroring params; unpruned leaves hold a scalar True
  count: jax.Array  # int32: updates seen
  inner_state: object


@dataclasses.dataclass(frozen=True)
class MagnitudePruning(base.Identity):
  """Magnitude pruning. Simulated: masks on dense float weights (see module docstring).

  Attributes:
    sparsity: target fraction of zeros among the selected weights, in [0, 1).
    scope: "layer" (each leaf at the sparsity) or "global" (one threshold for all).
    structure: "unstructured" or "n:m" (keep n of every m; sparsity is then 1 - n/m).
    n, m: the N:M pattern, e.g. 2 and 4.
    when: "gradual" (during training on the cubic schedule) or "one_shot" (after training).
    start_step, end_step, update_every: the gradual schedule (optimizer update counts).
    include: regex over parameter paths ('block_0/mlp/up/kernel'); "" = the weight
      matrices of ``table`` (not embeddings, norms or biases).
    table: the parameter table of the model pruned (``jscale.models.params``; its
      family's, set by ``jscale.train.config``); GENERIC takes every "kernel".
  """
  name: ClassVar[str] = "prune"
  realised: ClassVar[bool] = False
  sparsity: float = 0.5
  scope: str = "layer"
  structure: str = "unstructured"
  n: int = 2
  m: int = 4
  when: str = "gradual"
  start_step: int = 0
  end_step: int = 1000
  update_every: int = 10
  include: str = ""
  table: params_lib.ParamTable = dataclasses.field(default=params_lib.GENERIC, repr=False)

  def __post_init__(self):
    f = "compress.prune"
    if not 0.0 <= self.sparsity < 1.0:
      raise BadInput(f"{f}.sparsity must be in [0, 1), got {self.sparsity}")
    for field, value, allowed in (("scope", self.scope, SCOPES),
                                  ("structure", self.structure, STRUCTURES),
                                  ("when", self.when, WHEN)):
      if value not in allowed:
        raise BadInput(f"{f}.{field} must be one of {', '.join(allowed)}, got {value!r}")
    if self.structure == "n:m" and not 0 < self.n < self.m:
      raise BadInput(f"{f}.n must satisfy 0 < n < m for N:M pruning, got n={self.n} m={self.m}")
    if not 0 <= self.start_step <= self.end_step:
      raise BadInput(f"{f}.end_step must be >= start_step >= 0, got start_step="
                       f"{self.start_step} end_step={self.end_step}")
    if self.update_every < 1:
      raise BadInput(f"{f}.update_every must be a positive integer, got {self.update_every}")
    base.selector(self.include, f"{f}.include")  # a bad regex fails at start-up

  # -- masks -------------------------------------------------------------------------

  def prunable(self, params):
    field = "compress.prune.include"
    flags = base.selected(params, base.selector(self.include, field, self.table), field,
                          self.include)
    if self.structure == "n:m":
      for flag, (path, leaf) in zip(jax.tree.leaves(flags),
                                    jax.tree_util.tree_leaves_with_path(params)):
        if flag and (leaf.size // leaf.shape[-1]) % self.m:
          raise BadInput(f"compress.prune.m={self.m} must divide the contracting size of "
                           f"{base.path_name(path)} (shape {leaf.shape})")
    return flags

  def masks_at(self, params, sparsity):
    """Masks of ``params`` at ``sparsity`` (traced allowed); scalar True where unpruned."""
    flags = self.prunable(params)
    keep_all = jnp.ones((), bool)
    if self.structure == "n:m":
      return jax.tree.map(lambda f, p: n_m_mask(p, self.n, self.m) if f else keep_all,
                          flags, params)
    if self.scope == "layer":
      return jax.tree.map(
          lambda f, p: topk_mask(jnp.abs(p), kept_count(p.size, sparsity)) if f else keep_all,
          flags, params)
    chosen = [p for f, p in zip(jax.tree.leaves(flags), jax.tree.leaves(params)) if f]
    scores = jnp.concatenate([jnp.abs(p).reshape(-1) for p in chosen])
    flat = topk_mask(scores, kept_count(scores.size, sparsity))
    pieces = iter(jnp.split(flat, list(_offsets(chosen))))
    return jax.tree.map(lambda f, p: next(pieces).reshape(p.shape) if f else keep_all,
                        flags, params)

  def sparsity_at(self, count):
    return polynomial_sparsity(count, self.sparsity, self.start_step, self.end_step)

  def is_update_iter(self, count):
    return ((count % self.update_every == 0) & (count >= self.start_step)
            & (count <= self.end_step))

  # -- hooks -------------------------------------------------------------------------

  def wrap_optimizer(self, tx):
    if self.when == "one_shot":
      return tx

    def init(params):
      masks = jax.tree.map(lambda f, p: jnp.ones(p.shape, bool) if f else jnp.ones((), bool),
                           self.prunable(params), params)
      return PruneState(masks, jnp.zeros((), jnp.int32), tx.init(params))

    def update(updates, state, params):
      masks = jax.lax.cond(self.is_update_iter(state.count),
                           lambda: self.masks_at(params, self.sparsity_at(state.count)),
                           lambda: state.masks)
      updates = apply_masks(updates, masks)
      updates, inner_state = tx.update(updates, state.inner_state, params)
      return (apply_masks(updates, masks),
              PruneState(masks, optax.safe_int32_increment(state.count), inner_state))

    return optax.GradientTransformation(init, update)

  def post_update(self, params, opt_state, step):
    del step
    if self.when == "one_shot":
      return params
    return apply_masks(params, find_prune_state(opt_state).masks)

  def after_training(self, params):
    if self.when == "gradual":
      return params
    return apply_masks(params, self.masks_at(params, self.sparsity))

  def report(self, params) -> dict:
    flags = self.prunable(_values(params))
    chosen = [p for f, p in zip(jax.tree.leaves(flags), jax.tree.leaves(_values(params))) if f]
    size = sum(p.size for p in chosen)
    zeros = sum(int(p.size - jnp.count_nonzero(p)) for p in chosen)
    return {"prunable_params": size, "prunable_sparsity": zeros / size}


def apply_masks(tree, masks):
  return jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros_like(x)) if m.ndim else x,
                      tree, masks)


def find_prune_state(opt_state) -> PruneState:
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, PruneState))
           if isinstance(s, PruneState)]
  if len(found) != 1:
    raise ValueError(f"compress.prune needs exactly one pruning state in the optimizer state"
                     f" (was the optimizer wrapped by the pass?), found {len(found)}")
  return found[0]


def _offsets(leaves):
  total = 0
  for p in leaves[:-1]:
    total += p.size
    yield total


def _values(params):
  """Integer values of quantized leaves (zeros survive quantization), floats otherwise."""
  return jax.tree.map(lambda x: x.values if isinstance(x, base.QuantizedArray) else x,
                      params, is_leaf=lambda x: isinstance(x, base.QuantizedArray))
