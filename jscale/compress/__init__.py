"""Compression passes as transforms of a training run: registry and composition.

``make_pass("prune", sparsity=0.5)`` builds and validates one pass; ``compose([...])``
chains several into one pass whose every hook the train loop calls unconditionally
(``compose([])`` is the identity), so no pass can be skipped. The protocol and the
meaning of each hook are in :mod:`jscale.compress.base`.
"""

import dataclasses

from jscale.compress.base import CompressionPass, Identity, QuantizedArray, weight_report
from jscale.compress.distillation import Distillation
from jscale.compress.pruning import MagnitudePruning, polynomial_sparsity
from jscale.compress.quantization import (
  PostTrainingQuantization,
  QuantizationAwareTraining,
  int8_apply,
  quantize_params,
)
from jscale.errors import BadInput

PASSES: dict[str, type] = {
    p.name: p for p in (Identity, MagnitudePruning, PostTrainingQuantization,
                        QuantizationAwareTraining, Distillation)
}


def make_pass(name: str, **fields) -> CompressionPass:
  """The registered pass ``name`` built from keyword fields; bad input -> ValueError."""
  if name not in PASSES:
    raise BadInput(f"compress pass must be one of {', '.join(PASSES)}, got {name!r}")
  allowed = [f.name for f in dataclasses.fields(PASSES[name])]
  for field in fields:
    if field not in allowed:
      raise BadInput(f"compress.{name}.{field} is not a field of the {name} pass; "
                       f"allowed: {', '.join(allowed) or 'none'}")
  return PASSES[name](**fields)


@dataclasses.dataclass(frozen=True)
class Composed:
  """Passes applied in order: the first pass's wrappers are innermost, its
  ``post_update`` and ``after_training`` run first (so prune before ptq)."""
  passes: tuple = ()

  def __post_init__(self):
    names = [p.name for p in self.passes]
    for name in set(names):
      if names.count(name) > 1:
        raise BadInput(f"compress passes must be distinct, got {name!r} twice in {names}")
    quantizers = [n for n in names if n in ("ptq", "qat")]
    if len(quantizers) > 1 or (quantizers and names[-1] != quantizers[0]):
      raise BadInput(f"compress passes may hold one of ptq/qat and it must come last, "
                       f"got {names}")

  @property
  def name(self) -> str:
    return "+".join(p.name for p in self.passes) or "none"

  @property
  def realised(self) -> bool:
    return any(p.realised for p in self.passes)

  def wrap_optimizer(self, tx):
    for p in self.passes:
      tx = p.wrap_optimizer(tx)
    return tx

  def wrap_apply(self, apply_fn, *, training):
    for p in self.passes:
      apply_fn = p.wrap_apply(apply_fn, training=training)
    return apply_fn

  def wrap_loss(self, loss_fn):
    for p in self.passes:
      loss_fn = p.wrap_loss(loss_fn)
    return loss_fn

  def post_update(self, params, opt_state, step):
    for p in self.passes:
      params = p.post_update(params, opt_state, step)
    return params

  def after_training(self, params):
    for p in self.passes:
      params = p.after_training(params)
    return params

  @property
  def frozen(self) -> tuple:
    """Each pass's frozen arrays (``base`` docstring), in order."""
    return tuple(p.frozen for p in self.passes)

  def with_frozen(self, frozen: tuple) -> "Composed":
    return Composed(tuple(p.with_frozen(f) for p, f in zip(self.passes, frozen)))

  def report(self, params) -> dict:
    record = {"compress": self.name, "compress_realised": self.realised,
              **weight_report(params)}
    for p in self.passes:
      record.update(p.report(params))
    return record


def compose(passes) -> Composed:
  return Composed(tuple(p for p in passes if p.name != Identity.name))


__all__ = [
    "CompressionPass", "Composed", "Distillation", "Identity", "MagnitudePruning",
    "PASSES", "PostTrainingQuantization", "QuantizationAwareTraining", "QuantizedArray",
    "compose", "int8_apply", "make_pass", "polynomial_sparsity", "quantize_params",
    "weight_report",
]
