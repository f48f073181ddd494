"""Fully connected image classifier: flatten, ``depth`` ReLU layers, head.

Shape letters: B batch, H/W/C input height/width/channels, I = H*W*C flattened
input, D width, N classes.

Initialisation: hidden kernels are He-normal (std sqrt(2 / fan_in)) so ReLU
activations keep unit second moment at any width and depth; biases are zero;
the head has std HEAD_LOGIT_STD / sqrt(D) (see ``spec``), so the initial loss
is ~log(N) at every width.
"""

import dataclasses
import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jscale.models import spec as spec_lib


@dataclasses.dataclass(frozen=True)
class MLPSpec(spec_lib.ImageClassifierSpec):
  """A multilayer perceptron classifier at one size.

  Attributes:
    width: units in every hidden layer.
    depth: number of hidden layers.
    input_shape: (height, width, channels) of one image.
    num_classes: output logits.
    dtype: compute dtype; parameters are float32 either way.
  """
  family: ClassVar[str] = "mlp"
  width: int = 128
  depth: int = 2
  input_shape: tuple[int, int, int] = (28, 28, 1)
  num_classes: int = 10
  dtype: str = "float32"

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
    # [B, I] going in, [B, D] after the first layer.
    hidden = images_BxHxWxC.reshape(images_BxHxWxC.shape[0], -1)
    for i in range(s.depth):
      hidden = nn.relu(nn.Dense(
          s.width, dtype=dtype,
          kernel_init=nn.initializers.normal(math.sqrt(2 / hidden.shape[-1])),
          name=f"hidden_{i}")(hidden))
    logits_BxN = nn.Dense(
        s.num_classes, dtype=dtype,
        kernel_init=nn.initializers.normal(
            spec_lib.HEAD_LOGIT_STD / math.sqrt(s.width)),
        name="head")(hidden)
    return logits_BxN.astype(jnp.float32)
