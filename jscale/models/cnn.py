"""Residual convolutional image classifier with a bounded number of downsamples.

Shape letters: B batch, H/W spatial size at the current stage, C input
channels, D width (channels of every block), F = H * W * D features of the
last stage, N classes.

Standard parametrization only: ``parametrization="mup"`` is refused, because
muP's rules here would also have to settle how the flattened head's fan-in and
the pooled stages scale, which nothing in jscale measures yet.

Architecture: a linear 3x3 stem conv (C -> D), then ``depth`` pre-norm residual
blocks ``x + conv3x3(relu(layer_norm(x)))``, then a final LayerNorm and a dense
head on the flattened last feature map (a global average pool instead trained far
slower on small images: on 8x8 digits, width 16, 100 Adam steps reached loss 2.0
pooled vs 0.15 flattened). Blocks are split into at most
MAX_DOWNSAMPLES + 1 equal stages with a 2x2 average pool between stages, and a
pool happens only while both spatial sides stay >= 2, so a 64-block net still
runs on 8x8 digits (8 -> 4 -> 2) and on 28x28 MNIST (28 -> 14 -> 7). Channels
stay at D throughout so that width and depth are independent knobs. LayerNorm
(over channels, per position) rather than BatchNorm keeps the model a pure
function of its parameters: no mutable batch statistics under ``jax.vmap``.

Initialisation: the stem is fan-in normal (std 1/sqrt(9C)); block convs are
He-normal (std sqrt(2 / 9D)) scaled by 1/sqrt(depth) so the residual stream's
variance stays O(1) at any depth; biases are zero; the head has std
HEAD_LOGIT_STD / sqrt(fan_in) with fan_in = H * W * D of the last stage (see ``spec``).
"""

import dataclasses
import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jscale.errors import BadInput
from jscale.models import spec as spec_lib
from jscale.models.params import Param, ParamTable

MAX_DOWNSAMPLES = 2
KERNEL_SIZE = 3

# What each parameter is (jscale.models.params): the stem reads the image (input-like),
# the block convolutions are hidden, the head is the output layer. Logical axes: embed =
# the channels (or, for the head, the flattened features) a layer reads, which FSDP
# splits; mlp = the channels a convolution writes, which tensor parallelism splits; the
# 3x3 window and the classes stay whole.
PARAMS = ParamTable((
    Param("stem/kernel", "input", ("window", "window", "embed", "mlp")),
    Param(r"conv_\d+/kernel", "hidden", ("window", "window", "embed", "mlp")),
    Param(r"(stem|conv_\d+)/bias", "bias", ("mlp",)),
    Param(r"(norm_\d+|final_norm)/(scale|bias)", "norm", ("embed",)),
    Param("head/kernel", "output", ("embed", "classes")),
    Param("head/bias", "bias", ("classes",)),
))


@dataclasses.dataclass(frozen=True)
class CNNSpec(spec_lib.ImageClassifierSpec):
  """A residual CNN classifier at one size.

  Attributes:
    width: channels of the stem and of every block.
    depth: number of residual conv blocks.
    input_shape: (height, width, channels) of one image.
    num_classes: output logits.
    parametrization: "sp" only (module docstring).
    dtype: compute dtype; parameters are float32 either way.
  """
  family: ClassVar[str] = "cnn"
  param_table: ClassVar[ParamTable] = PARAMS
  width: int = 32
  depth: int = 2
  input_shape: tuple[int, int, int] = (28, 28, 1)
  num_classes: int = 10
  parametrization: str = "sp"
  dtype: str = "float32"

  def __post_init__(self):
    super().__post_init__()
    if self.parametrization != "sp":
      raise BadInput(
          "model.parametrization must be sp for the cnn family (mup is implemented for"
          f" transformer and mlp), got {self.parametrization!r}")

  def make_module(self) -> nn.Module:
    return CNN(self)

  def downsample_after(self) -> frozenset[int]:
    """Indices of the blocks followed by a 2x2 average pool."""
    height, width = self.input_shape[:2]
    halvings = 0
    while min(height, width) // 2**(halvings + 1) >= 2:
      halvings += 1
    count = min(MAX_DOWNSAMPLES, self.depth - 1, halvings)
    return frozenset(self.depth * k // (count + 1) - 1
                     for k in range(1, count + 1))

  def block_resolutions(self) -> list[tuple[int, int]]:
    """(H, W) at which each block's conv runs."""
    height, width = self.input_shape[:2]
    resolutions = []
    pooled_after = self.downsample_after()
    for i in range(self.depth):
      resolutions.append((height, width))
      if i in pooled_after:
        height, width = height // 2, width // 2
    return resolutions

  def head_inputs(self) -> int:
    """Features the head reads: the flattened last feature map (no block is followed by
    a pool, so it is the last block's resolution)."""
    height, width = self.block_resolutions()[-1]
    return height * width * self.width

  def stem_multiply_adds(self) -> int:
    height, width, channels = self.input_shape
    return (valid_taps(height) * valid_taps(width) * channels * self.width)

  def multiply_adds(self) -> int:
    """Multiply-accumulates of one forward pass on one example.

    Only taps that land inside the image count: with SAME zero padding the
    border outputs multiply nothing there (XLA's cost analysis agrees).
    """
    blocks = sum(valid_taps(h) * valid_taps(w) * self.width**2
                 for h, w in self.block_resolutions())
    return self.stem_multiply_adds() + blocks + self.head_inputs() * self.num_classes

  def param_counts(self) -> spec_lib.ParamCounts:
    taps = KERNEL_SIZE**2
    stem = taps * self.input_shape[2] * self.width + self.width
    block = 2 * self.width + taps * self.width**2 + self.width
    head = self.head_inputs() * self.num_classes + self.num_classes
    total = stem + self.depth * block + 2 * self.width + head
    return spec_lib.ParamCounts(total=total, non_embedding=total)

  def train_flops_per_unit(self) -> float:
    """Training FLOPs per example; convention in ``jscale.models.flops``."""
    return float(6 * self.multiply_adds() - 2 * self.stem_multiply_adds())


def valid_taps(size: int) -> int:
  """(output position, kernel tap) pairs inside the input along one axis.

  A stride-1 SAME convolution of a length-``size`` axis: tap offset ``o``
  (|o| <= KERNEL_SIZE // 2) reads real input at ``size - |o|`` positions.
  """
  reach = KERNEL_SIZE // 2
  return sum(max(size - abs(offset), 0) for offset in range(-reach, reach + 1))


class CNN(nn.Module):
  """Maps float32 images [B, H, W, C] to float32 logits [B, N]."""
  spec: CNNSpec

  @nn.compact
  def __call__(self, images_BxHxWxC: jax.Array) -> jax.Array:
    s = self.spec
    dtype = spec_lib.compute_dtype(s)
    kernel = (KERNEL_SIZE, KERNEL_SIZE)
    taps = KERNEL_SIZE**2
    x_BxHxWxD = nn.Conv(
        s.width, kernel, padding="SAME", dtype=dtype,
        kernel_init=nn.initializers.normal(
            1 / math.sqrt(taps * s.input_shape[2])),
        name="stem")(images_BxHxWxC)
    pooled_after = s.downsample_after()
    for i in range(s.depth):
      h_BxHxWxD = nn.relu(
          nn.LayerNorm(dtype=dtype, name=f"norm_{i}")(x_BxHxWxD))
      x_BxHxWxD += nn.Conv(
          s.width, kernel, padding="SAME", dtype=dtype,
          kernel_init=nn.initializers.normal(
              math.sqrt(2 / (taps * s.width * s.depth))),
          name=f"conv_{i}")(h_BxHxWxD)
      if i in pooled_after:
        x_BxHxWxD = nn.avg_pool(x_BxHxWxD, (2, 2), strides=(2, 2))
    x_BxHxWxD = nn.LayerNorm(dtype=dtype, name="final_norm")(x_BxHxWxD)
    features_BxF = x_BxHxWxD.reshape(x_BxHxWxD.shape[0], -1)
    logits_BxN = nn.Dense(
        s.num_classes, dtype=dtype,
        kernel_init=nn.initializers.normal(spec_lib.head_init_std(s, s.head_inputs())),
        name="head")(features_BxF)
    return logits_BxN.astype(jnp.float32)
