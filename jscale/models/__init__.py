"""Model zoo: one frozen dataclass spec per family, registered by name.

``make_spec("transformer", width=256, depth=4)`` builds and validates a spec;
``spec.make_module()`` gives the flax.linen module (``init``/``apply`` are pure
functions of a parameter pytree, which is what jit, vmap-over-runs, optax and
orbax all want).
"""

import dataclasses

from jscale.errors import BadInput
from jscale.models.cnn import CNNSpec
from jscale.models.mlp import MLPSpec
from jscale.models.spec import ModelSpec, ParamCounts
from jscale.models.transformer import TransformerSpec

FAMILIES: dict[str, type] = {
    spec.family: spec for spec in (TransformerSpec, MLPSpec, CNNSpec)
}


def make_spec(family: str, **fields) -> ModelSpec:
  """Builds the spec of ``family`` from keyword fields; bad input -> ValueError."""
  if family not in FAMILIES:
    raise BadInput(
        f"model.family must be one of {', '.join(FAMILIES)}, got {family!r}")
  spec_class = FAMILIES[family]
  allowed = [f.name for f in dataclasses.fields(spec_class)]
  for name in fields:
    if name not in allowed:
      raise BadInput(
          f"model.{name} is not a field of the {family} family; allowed:"
          f" {', '.join(allowed)}")
  return spec_class(**fields)


__all__ = [
    "CNNSpec", "FAMILIES", "MLPSpec", "ModelSpec", "ParamCounts",
    "TransformerSpec", "make_spec",
]
