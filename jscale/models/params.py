"""What each parameter of a model is, decided once from its path.

Every family declares, beside its spec, a :class:`ParamTable`: rules from a parameter's
path ('block_0/mlp/up/kernel') to its *role* and to the *logical axis* of each of its
dimensions. Everything that treats parameters differently is derived from the table, so
no two places can disagree about which parameters are weight matrices:

  ============  ==============================  ===========  ===========
  role          weight decay, pruning and       muP Adam LR  Kaplan's N
                quantization by default         (spec.py)
  ============  ==============================  ===========  ===========
  hidden        yes (a weight matrix)           1/m          counted
  input         yes (fan-in fixed by the data)  1            counted
  output        yes (a classifier's head)       1/m          counted
  unembedding   yes (an LM's head)              1/m          not counted
  embedding     no                              1            not counted
  norm, bias    no                              1            counted
  ============  ==============================  ===========  ===========

The logical axes ("embed", "mlp", "heads", "vocab", ...) name what a dimension means;
``jscale.train.sharding`` maps them onto the device mesh with one rules table.

A rule's pattern is a regular expression matched against the whole path, or against its
end after a '/': the same table reads ``params`` trees, flax's ``{"params": ...}``
variables, and the copies of the parameters inside an optimizer state. A path must match
exactly one rule; a parameter no rule of a family names is a bug in that family's table,
raised as soon as anything asks. Rules look at names only, never at shapes, so a leading
run axis (model-batched training) changes nothing.
"""

import dataclasses
import functools
import re
from typing import Any, Callable

import jax


@dataclasses.dataclass(frozen=True)
class Role:
  matrix: bool  # weight decay, default pruning and quantization
  width_scaled: bool  # muP (Tensor Programs V, Table 3): learns 1/m as fast
  in_non_embedding: bool  # counted in Kaplan's non-embedding N


ROLES = {
    "hidden": Role(matrix=True, width_scaled=True, in_non_embedding=True),
    "input": Role(matrix=True, width_scaled=False, in_non_embedding=True),
    "output": Role(matrix=True, width_scaled=True, in_non_embedding=True),
    "unembedding": Role(matrix=True, width_scaled=True, in_non_embedding=False),
    "embedding": Role(matrix=False, width_scaled=False, in_non_embedding=False),
    "norm": Role(matrix=False, width_scaled=False, in_non_embedding=True),
    "bias": Role(matrix=False, width_scaled=False, in_non_embedding=True),
    # The parameters of a tree of no known family that are not named "kernel" (GENERIC).
    "other": Role(matrix=False, width_scaled=False, in_non_embedding=True),
}


@dataclasses.dataclass(frozen=True)
class Param:
  """One rule: the parameters whose path ``pattern`` matches have ``role``; ``axes`` holds
  the logical axis of each dimension (None: a dimension that is never sharded), or is
  None where sharding has nothing to say (the GENERIC table)."""
  pattern: str
  role: str
  axes: tuple[str | None, ...] | None = None

  def __post_init__(self):
    if self.role not in ROLES:
      raise ValueError(f"role must be one of {', '.join(ROLES)}, got {self.role!r}")

  @functools.cached_property
  def _regex(self) -> re.Pattern:
    return re.compile(f"(?:.*/)?(?:{self.pattern})")

  def matches(self, name: str) -> bool:
    return self._regex.fullmatch(name) is not None


def key_name(key) -> str:
  return str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))


def param_name(path) -> str:
  """The parameter path inside a tree path: the trailing dictionary keys joined by '/'
  ('block_0/mlp/up/kernel' in ``state.opt_state[1].mu['block_0']['mlp']['up']['kernel']``);
  "" where the path ends in no dictionary key (a step count, a pruning wrapper's count)."""
  names = []
  for key in reversed(path):
    if not isinstance(key, jax.tree_util.DictKey):
      break
    names.append(str(key.key))
  return "/".join(reversed(names))


@dataclasses.dataclass(frozen=True)
class ParamTable:
  """The rules of one family (or GENERIC). ``unmatched``: the role of a path no rule
  names; None makes it an error (every family names all of its parameters)."""
  rules: tuple[Param, ...]
  unmatched: str | None = None

  def find(self, name: str) -> Param | None:
    """The rule of the parameter ``name``, or None where no rule names it (or, with no
    ``unmatched`` role, where ``name`` is no parameter of this family)."""
    found = [rule for rule in self.rules if rule.matches(name)]
    if len(found) > 1:
      raise ValueError(f"parameter {name!r} matches {len(found)} rules of its table: "
                       f"{[r.pattern for r in found]}")
    return found[0] if found else None

  def role(self, name: str) -> Role:
    rule = self.find(name)
    if rule is not None:
      return ROLES[rule.role]
    if self.unmatched is None:
      raise ValueError(f"parameter {name!r} matches no rule of its family's table; "
                       "add one (jscale.models.params)")
    return ROLES[self.unmatched]

  def map_roles(self, tree, value_of: Callable[[Role], Any]):
    """A tree shaped like the parameter tree ``tree``: ``value_of(role)`` at each leaf."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: value_of(self.role("/".join(key_name(k) for k in path))), tree)

  def matrices(self, tree):
    """True for the weight matrices: decayed, and pruned and quantized by default."""
    return self.map_roles(tree, lambda role: role.matrix)

  def non_embedding(self, tree):
    """True for the parameters Kaplan's N counts."""
    return self.map_roles(tree, lambda role: role.in_non_embedding)

  def learning_rate_multipliers(self, tree, width_ratio: float):
    """muP's Adam learning-rate factor of each leaf: 1/m for the width-scaled roles, 1
    elsewhere (``width_ratio`` m is 1 under the standard parametrization)."""
    return self.map_roles(tree, lambda role: 1.0 / width_ratio if role.width_scaled else 1.0)

  def axes(self, name: str, ndim: int) -> tuple[str | None, ...] | None:
    """The logical axes of a ``ndim``-dimensional array at ``name``: the parameter's own,
    or a copy's in an optimizer state (same rank); None for anything else."""
    rule = self.find(name) if name else None
    if rule is None or rule.axes is None or len(rule.axes) != ndim:
      return None
    return rule.axes


# Parameter trees of no known family (a library user's model, a test's toy tree): flax
# names every Dense, DenseGeneral and Conv weight "kernel", so those are the matrices.
GENERIC = ParamTable((Param("kernel", "hidden"),), unmatched="other")
