"""What every model family's spec provides, and the checks they share.

A spec is a frozen dataclass that fully describes one architecture at one size.
It builds its flax module, makes dummy inputs for ``module.init``, and knows
its own parameter count and training FLOPs in closed form, so sweeps can plan
compute without initialising anything. The FLOPs convention is stated once, in
``jscale/models/flops.py``. Its family's ``param_table`` (``jscale.models.params``)
says what each parameter is, so the training code never guesses from names: which
parameters Kaplan's N counts, each one's learning-rate multiplier under the
parametrization, which are decayed, compressed and quantized, and how each is sharded.

Parametrizations. "sp" is the standard parametrization described in each
family's module docstring. "mup" is the Maximal Update Parametrization for Adam
of Tensor Programs V (Yang et al. 2022, arXiv:2203.03466), Table 3, taken
relative to a base width W0 (``mup_base_width``) so that at W0 it is SP exactly
and the base model's tuned learning rate carries over. With m = width / W0:

  ==============  ==========================  ===================  ================
  Table 3         input weights, all biases,  output weights       hidden weights
                  norm scales and offsets     (the head)           (D x D-like)
  ==============  ==========================  ===================  ================
  init variance   as SP                       SP / m (1/fan_in^2)  as SP (1/fan_in)
  Adam LR factor  1                           1/m (1/fan_in)       1/m (1/fan_in)
  ==============  ==========================  ===================  ================

and, for attention (TP5 Definition 4.1), logits scaled by 1/K instead of
1/sqrt(K) as the head dimension K grows with width, corrected to sqrt(K0) / K
with K0 the head dimension at W0 so that W0 is SP again. Table 3 needs only
initialisers and per-parameter learning rates (``learning_rate_multipliers``,
applied by ``jscale.train.optim.make_optimizer``); its equivalent Table 8 would
also put a 1/m multiplier into the forward pass. One model, no fork per
parametrization.
"""

import dataclasses
import math
from typing import Any, ClassVar, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp

from jscale.errors import BadInput
from jscale.models.params import ParamTable

# Parameters are always float32; these are the allowed compute dtypes.
COMPUTE_DTYPES = ("float32", "bfloat16")
PARAMETRIZATIONS = ("sp", "mup")

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
  # True for models of token sequences (text data), False for image classifiers.
  is_language_model: ClassVar[bool]
  width: int
  depth: int
  dtype: str
  parametrization: str  # one of PARAMETRIZATIONS (see the module docstring)
  # What each parameter is: its role and the logical axis of each dimension.
  param_table: ClassVar[ParamTable]

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

  def non_embedding_mask(self, params) -> Any:
    """A pytree of bools with the structure of ``params``: True for the leaves
    Kaplan's N (``param_counts().non_embedding``) counts."""
    ...

  def learning_rate_multipliers(self, params) -> Any:
    """A pytree of floats with the structure of ``params``: each leaf's factor on the
    learning rate (1.0 everywhere under "sp")."""
    ...


def check_positive_int(field: str, value: object) -> None:
  """Raises a one-line ValueError unless ``value`` is an int > 0."""
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise BadInput(f"model.{field} must be a positive integer, got {value!r}")


def check_choice(field: str, value: object, allowed: tuple[str, ...]) -> None:
  """Raises a one-line ValueError unless ``value`` is one of ``allowed``."""
  if value not in allowed:
    raise BadInput(
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
    raise BadInput(message) from None
  if len(shape) != 3 or any(
      isinstance(n, bool) or not isinstance(n, int) or n <= 0 for n in shape):
    raise BadInput(message)
  return shape


def check_parametrization(spec: ModelSpec) -> None:
  """Validates ``parametrization`` and ``mup_base_width`` (families that offer muP)."""
  check_choice("parametrization", spec.parametrization, PARAMETRIZATIONS)
  check_positive_int("mup_base_width", spec.mup_base_width)


def compute_dtype(spec: ModelSpec) -> jnp.dtype:
  return jnp.dtype(spec.dtype)


def mup_width_ratio(spec: ModelSpec) -> float:
  """m = width / mup_base_width under muP; 1 under SP, where nothing scales."""
  if spec.parametrization == "mup":
    return spec.width / spec.mup_base_width
  return 1.0


def head_init_std(spec: ModelSpec, fan_in: int) -> float:
  """Output head init std: HEAD_LOGIT_STD / sqrt(fan_in), times 1/sqrt(m) under muP,
  which makes its variance fall as 1/fan_in^2 (Table 3) and equal SP's at W0."""
  return HEAD_LOGIT_STD / math.sqrt(fan_in) / math.sqrt(mup_width_ratio(spec))


class DerivedFromParamTable:
  """The per-parameter answers of a spec, read off its family's ``param_table``
  (``jscale.models.params``): N's mask and muP's learning-rate multipliers."""

  def non_embedding_mask(self, params):
    return self.param_table.non_embedding(params)

  def learning_rate_multipliers(self, params):
    return self.param_table.learning_rate_multipliers(params, mup_width_ratio(self))


class ImageClassifierSpec(DerivedFromParamTable):
  """What the image classifier specs (MLP, CNN) share: validation of the image fields,
  one example per unit, and zero images as dummy inputs. Mixed into frozen dataclasses
  that declare ``width``, ``depth``, ``input_shape``, ``num_classes``, ``dtype`` and
  ``parametrization``."""
  is_language_model: ClassVar[bool] = False

  def __post_init__(self):
    check_common(self)
    object.__setattr__(self, "input_shape", normalized_input_shape(self.input_shape))
    check_positive_int("num_classes", self.num_classes)

  @property
  def units_per_example(self) -> int:
    return 1

  def dummy_inputs(self, batch_size: int) -> jax.Array:
    return jnp.zeros((batch_size, *self.input_shape), jnp.float32)
