"""Decoder-only transformer language model (pre-norm, causal, untied head).

Shape letters: B batch, L sequence length, D width (d_model), H heads,
K head dimension (D / H), F MLP hidden width (mlp_ratio * D), V vocabulary.

Initialisation (chosen so that behaviour at init does not drift with width):
  * token and learned position embeddings: normal, std 1 (every block reads
    the residual stream through a LayerNorm, so only relative scale matters);
  * every matmul: normal with std 1/sqrt(fan_in), so activations keep unit
    scale at any width;
  * the two projections that write into the residual stream (attention output,
    MLP output) are further scaled by 1/sqrt(2 * depth), so the stream's
    variance stays O(1) however many blocks are stacked (GPT-2's scheme);
  * the output head has std HEAD_LOGIT_STD / sqrt(D) (see ``spec``); its
    input is the final LayerNorm's unit-variance output, so initial logits
    have std ~HEAD_LOGIT_STD at every width and the loss starts at ~log(V).
"""

import dataclasses
import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jscale.models import spec as spec_lib

POSITIONS = ("rotary", "learned")
ROPE_BASE = 10_000.0


@dataclasses.dataclass(frozen=True)
class TransformerSpec:
  """A GPT-style language model at one size.

  Attributes:
    width: d_model.
    depth: number of transformer blocks (n_layer).
    num_heads: attention heads; must divide ``width``.
    mlp_ratio: MLP hidden width as a multiple of ``width``.
    context_length: tokens per training example (n_ctx).
    vocab_size: number of token ids (256 for bytes).
    positions: "rotary" (RoPE on queries and keys, no parameters) or "learned"
      (an added position embedding table of ``context_length`` rows).
    dtype: compute dtype; parameters are float32 either way.
  """
  family: ClassVar[str] = "transformer"
  width: int = 128
  depth: int = 2
  num_heads: int = 4
  mlp_ratio: int = 4
  context_length: int = 128
  vocab_size: int = 256
  positions: str = "rotary"
  dtype: str = "float32"

  def __post_init__(self):
    spec_lib.check_common(self)
    for field in ("num_heads", "mlp_ratio", "context_length", "vocab_size"):
      spec_lib.check_positive_int(field, getattr(self, field))
    if self.width % self.num_heads:
      raise ValueError(
          f"model.num_heads must divide model.width={self.width}, got"
          f" {self.num_heads}")
    spec_lib.check_choice("positions", self.positions, POSITIONS)
    if self.positions == "rotary" and (self.width // self.num_heads) % 2:
      raise ValueError(
          "model.num_heads must leave an even head dimension for rotary"
          f" positions, got width {self.width} / {self.num_heads} heads")

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def mlp_width(self) -> int:
    return self.mlp_ratio * self.width

  @property
  def units_per_example(self) -> int:
    return self.context_length

  def make_module(self) -> nn.Module:
    return Transformer(self)

  def dummy_inputs(self, batch_size: int) -> jax.Array:
    return jnp.zeros((batch_size, self.context_length), jnp.int32)

  def matmul_params(self) -> int:
    """Weights that take part in a matmul: every block's plus the head."""
    per_block = 4 * self.width**2 + 2 * self.width * self.mlp_width
    return self.depth * per_block + self.width * self.vocab_size

  def param_counts(self) -> spec_lib.ParamCounts:
    layer_norm = 2 * self.width
    block = 4 * self.width**2 + 2 * self.width * self.mlp_width + 2 * layer_norm
    non_embedding = self.depth * block + layer_norm
    embeddings = self.vocab_size * self.width
    if self.positions == "learned":
      embeddings += self.context_length * self.width
    head = self.width * self.vocab_size
    return spec_lib.ParamCounts(
        total=non_embedding + embeddings + head, non_embedding=non_embedding)

  def train_flops_per_unit(self) -> float:
    """Training FLOPs per token; convention in ``jscale.flops``."""
    attention = 12 * self.depth * self.context_length * self.width
    return float(6 * self.matmul_params() + attention)


def rotate(x_BxLxHxK: jax.Array) -> jax.Array:
  """Applies rotary position embedding (rotate-half pairing) along L."""
  length, head_dim = x_BxLxHxK.shape[1], x_BxLxHxK.shape[3]
  half = head_dim // 2
  frequencies = ROPE_BASE**(-jnp.arange(half, dtype=jnp.float32) / half)
  angles_LxK2 = jnp.outer(jnp.arange(length, dtype=jnp.float32), frequencies)
  sin = jnp.sin(angles_LxK2)[None, :, None, :].astype(x_BxLxHxK.dtype)
  cos = jnp.cos(angles_LxK2)[None, :, None, :].astype(x_BxLxHxK.dtype)
  first, second = x_BxLxHxK[..., :half], x_BxLxHxK[..., half:]
  return jnp.concatenate(
      [first * cos - second * sin, second * cos + first * sin], axis=-1)


class CausalSelfAttention(nn.Module):
  spec: TransformerSpec

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    s = self.spec
    dtype = spec_lib.compute_dtype(s)
    qkv_BxLx3xHxK = nn.DenseGeneral(
        (3, s.num_heads, s.head_dim), use_bias=False, dtype=dtype,
        kernel_init=nn.initializers.normal(1 / math.sqrt(s.width)),
        name="qkv")(x_BxLxD)
    q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = (
        qkv_BxLx3xHxK[:, :, i] for i in range(3))
    if s.positions == "rotary":
      q_BxLxHxK, k_BxLxHxK = rotate(q_BxLxHxK), rotate(k_BxLxHxK)
    scores_BxHxLxL = jnp.einsum(
        "blhk,bmhk->bhlm", q_BxLxHxK, k_BxLxHxK).astype(jnp.float32)
    scores_BxHxLxL /= math.sqrt(s.head_dim)
    length = x_BxLxD.shape[1]
    causal_LxL = jnp.tril(jnp.ones((length, length), bool))
    scores_BxHxLxL = jnp.where(
        causal_LxL[None, None], scores_BxHxLxL, jnp.finfo(jnp.float32).min)
    weights_BxHxLxL = jax.nn.softmax(scores_BxHxLxL, axis=-1).astype(dtype)
    out_BxLxHxK = jnp.einsum("bhlm,bmhk->blhk", weights_BxHxLxL, v_BxLxHxK)
    return nn.DenseGeneral(
        s.width, axis=(-2, -1), use_bias=False, dtype=dtype,
        kernel_init=nn.initializers.normal(
            1 / math.sqrt(s.width * 2 * s.depth)),
        name="out")(out_BxLxHxK)


class Mlp(nn.Module):
  spec: TransformerSpec

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    s = self.spec
    dtype = spec_lib.compute_dtype(s)
    h_BxLxF = nn.Dense(
        s.mlp_width, use_bias=False, dtype=dtype,
        kernel_init=nn.initializers.normal(1 / math.sqrt(s.width)),
        name="up")(x_BxLxD)
    return nn.Dense(
        s.width, use_bias=False, dtype=dtype,
        kernel_init=nn.initializers.normal(
            1 / math.sqrt(s.mlp_width * 2 * s.depth)),
        name="down")(nn.gelu(h_BxLxF))


class Block(nn.Module):
  spec: TransformerSpec

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    dtype = spec_lib.compute_dtype(self.spec)
    x_BxLxD += CausalSelfAttention(self.spec, name="attention")(
        nn.LayerNorm(dtype=dtype, name="attention_norm")(x_BxLxD))
    x_BxLxD += Mlp(self.spec, name="mlp")(
        nn.LayerNorm(dtype=dtype, name="mlp_norm")(x_BxLxD))
    return x_BxLxD


class Transformer(nn.Module):
  """Maps int32 tokens [B, L] (L <= context_length) to float32 logits."""
  spec: TransformerSpec

  @nn.compact
  def __call__(self, tokens_BxL: jax.Array) -> jax.Array:
    s = self.spec
    dtype = spec_lib.compute_dtype(s)
    x_BxLxD = nn.Embed(
        s.vocab_size, s.width, dtype=dtype,
        embedding_init=nn.initializers.normal(1.0),
        name="token_embedding")(tokens_BxL)
    if s.positions == "learned":
      table_LxD = self.param(
          "position_embedding", nn.initializers.normal(1.0),
          (s.context_length, s.width), jnp.float32)
      x_BxLxD += table_LxD[None, :tokens_BxL.shape[1]].astype(dtype)
    for i in range(s.depth):
      x_BxLxD = Block(s, name=f"block_{i}")(x_BxLxD)
    x_BxLxD = nn.LayerNorm(dtype=dtype, name="final_norm")(x_BxLxD)
    logits_BxLxV = nn.Dense(
        s.vocab_size, use_bias=False, dtype=dtype,
        kernel_init=nn.initializers.normal(
            spec_lib.HEAD_LOGIT_STD / math.sqrt(s.width)),
        name="head")(x_BxLxD)
    return logits_BxLxV.astype(jnp.float32)
