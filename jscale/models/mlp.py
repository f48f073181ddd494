"""Fully connected image classifier: flatten, ``depth`` ReLU layers, head.

Shape letters: B batch, H/W/C input height/width/channels, I = H*W*C flattened
input, D width, N classes.

Initialisation: hidden kernels are He-normal (std sqrt(2 / fan_in)) so ReLU
activations keep unit second moment at any width and depth; biases are zero;
the head has std HEAD_LOGIT_STD / sqrt(D) (see ``spec``), so the initial loss
is ~log(N) at every width.

Under muP (``parametrization="mup"``, table in ``spec``) the first layer (fan-in
I, fixed) and every bias are input-like, the D x D layers are hidden, and the
head is the output layer: it starts smaller by sqrt(W0 / D), and the hidden
layers and the head learn 1/m as fast.
"""

import dataclasses
import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jscale.models import spec as spec_lib
from jscale.models.params import Param, ParamTable

# What each parameter is (jscale.models.params): the first layer is input-like (its
# fan-in is the image), the D x D layers hidden, the head the output layer. Logical
# axes: embed = the features a layer reads (FSDP splits them), mlp = the units it
# writes (tensor parallelism splits them); the classes stay whole.
PARAMS = ParamTable((
    Param("hidden_0/kernel", "input", ("embed", "mlp")),
    Param(r"hidden_[1-9]\d*/kernel", "hidden", ("embed", "mlp")),
    Param(r"hidden_\d+/bias", "bias", ("mlp",)),
    Param("head/kernel", "output", ("embed", "classes")),
    Param("head/bias", "bias", ("classes",)),
))


@dataclasses.dataclass(frozen=True)
class MLPSpec(spec_lib.ImageClassifierSpec):
  """A multilayer perceptron classifier at one size.

  Attributes:
    width: units in every hidden layer.
    depth: number of hidden layers.
    input_shape: (height, width, channels) of one image.
    num_classes: output logits.
    parametrization: "sp" or "mup" (module docstring and ``spec``).
    mup_base_width: muP's base width W0, where it equals SP.
    dtype: compute dtype; parameters are float32 either way.
  """
  family: ClassVar[str] = "mlp"
  param_table: ClassVar[ParamTable] = PARAMS
  width: int = 128
  depth: int = 2
  input_shape: tuple[int, int, int] = (28, 28, 1)
  num_classes: int = 10
  parametrization: str = "sp"
  mup_base_width: int = 64
  dtype: str = "float32"

  def __post_init__(self):
    super().__post_init__()
    spec_lib.check_parametrization(self)

  @property
  def input_size(self) -> int:
    return math.prod(self.input_shape)

  def make_module(self) -> nn.Module:
    return MLP(self)

  def multiply_adds(self) -> int:
    """Multiply-accumulates of one forward pass on one example."""
    return (self.input_size * self.width
            + (self.depth - 1) * self.width**2
            + self.width * self.num_classes)

  def param_counts(self) -> spec_lib.ParamCounts:
    total = self.multiply_adds() + self.depth * self.width + self.num_classes
    return spec_lib.ParamCounts(total=total, non_embedding=total)

  def train_flops_per_unit(self) -> float:
    """Training FLOPs per example; convention in ``jscale.models.flops``."""
    first_layer = self.input_size * self.width
    return float(6 * self.multiply_adds() - 2 * first_layer)


class MLP(nn.Module):
  """Maps float32 images [B, H, W, C] to float32 logits [B, N]."""
  spec: MLPSpec

  @nn.compact
  def __call__(self, images_BxHxWxC: jax.Array) -> jax.Array:
    s = self.spec
    dtype = spec_lib.compute_dtype(s)
    x_BxI = images_BxHxWxC.reshape(images_BxHxWxC.shape[0], -1)

    def hidden(index: int, fan_in: int) -> nn.Dense:
      return nn.Dense(s.width, dtype=dtype,
                      kernel_init=nn.initializers.normal(math.sqrt(2 / fan_in)),
                      name=f"hidden_{index}")

    h_BxD = nn.relu(hidden(0, s.input_size)(x_BxI))
    for i in range(1, s.depth):
      h_BxD = nn.relu(hidden(i, s.width)(h_BxD))
    logits_BxN = nn.Dense(
        s.num_classes, dtype=dtype,
        kernel_init=nn.initializers.normal(spec_lib.head_init_std(s, s.width)),
        name="head")(h_BxD)
    return logits_BxN.astype(jnp.float32)
