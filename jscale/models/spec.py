"""What every model family's spec provides, and the checks they share.

A spec is a frozen dataclass that fully describes one architecture at one size.
It builds its flax module, makes dummy inputs for ``module.init``, and knows
its own parameter count and training FLOPs in closed form, so sweeps can plan
compute without initialising anything. The FLOPs convention is stated once, in
``jscale/flops.py``.
"""

import dataclasses
from typing import ClassVar, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp

# Parameters are always float32; these are the allowed compute dtypes.
COMPUTE_DTYPES = ("float32", "bfloat16")

# Every family's output head is initialised with std HEAD_LOGIT_STD / sqrt(fan_in)
# on unit-scale features, so initial logits have std ~HEAD_LOGIT_STD at any
# width and the initial loss is ~log(num_outputs) + HEAD_LOGIT_STD**2 / 2.
# Small rather than zero so the trunk receives gradient from the first step.
HEAD_LOGIT_STD = 0.1


@dataclasses.dataclass(frozen=True)
class ParamCounts:
  """Parameter counts of one model.

  Attributes:
    total: every parameter in the ``module.init`` pytree.
    non_embedding: Kaplan et al.'s N. For language models this excludes the
      token and position embeddings AND the (untied) output head; classifiers
      have no embedding tables, so for them it equals ``total``.
  """
  total: int
  non_embedding: int


class ModelSpec(Protocol):
  """The interface every family's frozen dataclass implements."""
  family: ClassVar[str]
  width: int
  depth: int
  dtype: str

  def make_module(self) -> nn.Module:
    ...

  def dummy_inputs(self, batch_size: int) -> jax.Array:
    ...

  def param_counts(self) -> ParamCounts:
    ...

  @property
  def units_per_example(self) -> int:
    ...

  def train_flops_per_unit(self) -> float:
    ...


def check_positive_int(field: str, value: object) -> None:
  """Raises a one-line ValueError unless ``value`` is an int > 0."""
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ValueError(f"model.{field} must be a positive integer, got {value!r}")


def check_choice(field: str, value: object, allowed: tuple[str, ...]) -> None:
  """Raises a one-line ValueError unless ``value`` is one of ``allowed``."""
  if value not in allowed:
    raise ValueError(
        f"model.{field} must be one of {', '.join(allowed)}, got {value!r}")


def check_common(spec: ModelSpec) -> None:
  """Validates the fields every family has."""
  check_positive_int("width", spec.width)
  check_positive_int("depth", spec.depth)
  check_choice("dtype", spec.dtype, COMPUTE_DTYPES)


def normalized_input_shape(value: object) -> tuple[int, int, int]:
  """Returns ``value`` as an (H, W, C) tuple of positive ints, or raises."""
  message = ("model.input_shape must be three positive integers (height, width,"
             f" channels), got {value!r}")
  try:
    shape = tuple(value)
  except TypeError:
    raise ValueError(message) from None
  if len(shape) != 3 or any(
      isinstance(n, bool) or not isinstance(n, int) or n <= 0 for n in shape):
    raise ValueError(message)
  return shape


def compute_dtype(spec: ModelSpec) -> jnp.dtype:
  return jnp.dtype(spec.dtype)


class ImageClassifierSpec:
  """What the image classifier specs (MLP, CNN) share: validation of the image fields,
  one example per unit, and zero images as dummy inputs. Mixed into frozen dataclasses
  that declare ``width``, ``depth``, ``input_shape``, ``num_classes`` and ``dtype``."""

  def __post_init__(self):
    check_common(self)
    object.__setattr__(self, "input_shape", normalized_input_shape(self.input_shape))
    check_positive_int("num_classes", self.num_classes)

  @property
  def units_per_example(self) -> int:
    return 1

  def dummy_inputs(self, batch_size: int) -> jax.Array:
    return jnp.zeros((batch_size, *self.input_shape), jnp.float32)

  def non_embedding_mask(self, params):
    """Classifiers have no embedding tables: every parameter counts in N."""
    return jax.tree.map(lambda _: True, params)
