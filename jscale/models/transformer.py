"""Decoder-only transformer language model (pre-norm, causal, untied head).

Shape letters: B batch, L sequence length, T = B * L tokens, D width
(d_model), H heads, K head dimension (D / H), F MLP hidden width
(mlp_ratio * D), V vocabulary.

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

Under muP (``parametrization="mup"``, see ``spec`` for the table) the hidden
matrices are the four projections of every block (qkv, out, up, down), the head
is the output layer, and the embeddings and LayerNorms are input-like: the head
starts smaller by sqrt(W0 / D), the projections and the head learn 1/m as fast,
and attention logits are scaled by sqrt(K0) / K where K0 is the head dimension
of the base model (W0 / H with a fixed head count; K itself with a fixed
``head_dim``, which keeps SP's 1/sqrt(K) since K does not grow).
"""

import dataclasses
import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jscale.errors import BadInput
from jscale.models import spec as spec_lib
from jscale.models.params import Param, ParamTable

POSITIONS = ("rotary", "learned")
ROPE_BASE = 10_000.0

# What each parameter is (jscale.models.params). The embeddings and the head are outside
# Kaplan's N; the four block projections and the head learn 1/m as fast under muP.
# Logical axes: embed = D, the residual stream (FSDP splits it); mlp = F, heads = H and
# vocab = V (tensor parallelism splits them); qkv, head_dim = K and position stay whole.
PARAMS = ParamTable((
    Param("token_embedding/embedding", "embedding", ("vocab", "embed")),
    Param("position_embedding", "embedding", ("position", "embed")),
    Param(r"block_\d+/attention/qkv/kernel", "hidden", ("embed", "qkv", "heads", "head_dim")),
    Param(r"block_\d+/attention/out/kernel", "hidden", ("heads", "head_dim", "embed")),
    Param(r"block_\d+/mlp/up/kernel", "hidden", ("embed", "mlp")),
    Param(r"block_\d+/mlp/down/kernel", "hidden", ("mlp", "embed")),
    Param(r"(block_\d+/(attention|mlp)_norm|final_norm)/(scale|bias)", "norm", ("embed",)),
    Param("head/kernel", "unembedding", ("embed", "vocab")),
))


@dataclasses.dataclass(frozen=True)
class TransformerSpec(spec_lib.DerivedFromParamTable):
  """A GPT-style language model at one size.

  Attributes:
    width: d_model.
    depth: number of transformer blocks (n_layer).
    num_heads: attention heads; must divide ``width``. With ``head_dim`` > 0 it
      is replaced by ``width // head_dim`` on construction.
    head_dim: 0 to derive the head size from ``num_heads``; > 0 for a fixed head
      size at every width (a positive divisor of ``width``, even for rotary).
      Kept as given: it records which of the two stays fixed as width scales.
    mlp_ratio: MLP hidden width as a multiple of ``width``.
    context_length: tokens per training example (n_ctx).
    vocab_size: number of token ids (256 for bytes).
    positions: "rotary" (RoPE on queries and keys, no parameters) or "learned"
      (an added position embedding table of ``context_length`` rows).
    parametrization: "sp" or "mup" (module docstring and ``spec``).
    mup_base_width: muP's base width W0, where it equals SP.
    dtype: compute dtype; parameters are float32 either way.
  """
  family: ClassVar[str] = "transformer"
  is_language_model: ClassVar[bool] = True
  param_table: ClassVar[ParamTable] = PARAMS
  width: int = 64
  depth: int = 2
  num_heads: int = 4
  head_dim: int = 0
  mlp_ratio: int = 4
  context_length: int = 128
  vocab_size: int = 256
  positions: str = "rotary"
  parametrization: str = "sp"
  mup_base_width: int = 64
  dtype: str = "float32"

  def __post_init__(self):
    spec_lib.check_common(self)
    for field in ("mlp_ratio", "context_length", "vocab_size"):
      spec_lib.check_positive_int(field, getattr(self, field))
    spec_lib.check_choice("positions", self.positions, POSITIONS)
    spec_lib.check_parametrization(self)
    if self.head_dim == 0:
      self._check_num_heads()
    else:
      self._check_head_dim()
      object.__setattr__(self, "num_heads", self.width // self.head_dim)

  def _check_num_heads(self):
    spec_lib.check_positive_int("num_heads", self.num_heads)
    if self.width % self.num_heads:
      raise BadInput(
          f"model.num_heads must divide model.width={self.width}, got"
          f" {self.num_heads}")
    if self.positions == "rotary" and (self.width // self.num_heads) % 2:
      raise BadInput(
          "model.num_heads must leave an even head dimension for rotary"
          f" positions, got width {self.width} / {self.num_heads} heads")

  def _check_head_dim(self):
    value = self.head_dim
    if (isinstance(value, bool) or not isinstance(value, int) or value < 0
        or self.width % value):
      raise BadInput(
          "model.head_dim must be 0 (heads from model.num_heads) or a positive"
          f" divisor of model.width={self.width}, got {value!r}")
    if self.positions == "rotary" and value % 2:
      raise BadInput(
          f"model.head_dim must be even for rotary positions, got {value}")

  @property
  def head_size(self) -> int:
    """K, the head dimension in use (``head_dim`` or ``width // num_heads``)."""
    return self.width // self.num_heads

  @property
  def attention_scale(self) -> float:
    """The factor on q . k: 1/sqrt(K) under SP; sqrt(K0) / K under muP."""
    scale = 1 / math.sqrt(self.head_size)
    if self.head_dim == 0:  # K grows with width as W / H; at W0 it was W0 / H.
      scale /= math.sqrt(spec_lib.mup_width_ratio(self))
    return scale

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
    """Training FLOPs per token; convention in ``jscale.models.flops``."""
    attention = 12 * self.depth * self.context_length * self.width
    return float(6 * self.matmul_params() + attention)


def rotate(x_BxLxHxK: jax.Array) -> jax.Array:
  """Applies rotary position embedding (rotate-half pairing) along L."""
  length, head_dim = x_BxLxHxK.shape[1], x_BxLxHxK.shape[3]
  half = head_dim // 2
  # NumPy tables are compile-time constants; jnp ones would be fused into the
  # rotation and re-evaluated (sin and cos) for every batch element and head.
  frequencies = ROPE_BASE**(-np.arange(half, dtype=np.float32) / half)
  angles_LxK2 = np.outer(np.arange(length, dtype=np.float32), frequencies)
  sin = jnp.asarray(np.sin(angles_LxK2)[None, :, None, :], x_BxLxHxK.dtype)
  cos = jnp.asarray(np.cos(angles_LxK2)[None, :, None, :], x_BxLxHxK.dtype)
  first, second = x_BxLxHxK[..., :half], x_BxLxHxK[..., half:]
  return jnp.concatenate(
      [first * cos - second * sin, second * cos + first * sin], axis=-1)


class CausalSelfAttention(nn.Module):
  spec: TransformerSpec

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    s = self.spec
    dtype = spec_lib.compute_dtype(s)
    batch, length, _ = x_BxLxD.shape
    qkv_Tx3xHxK = nn.DenseGeneral(
        (3, s.num_heads, s.head_size), use_bias=False, dtype=dtype,
        kernel_init=nn.initializers.normal(1 / math.sqrt(s.width)),
        name="qkv")(_flatten_tokens(x_BxLxD))
    qkv_BxLx3xHxK = qkv_Tx3xHxK.reshape(
        batch, length, *qkv_Tx3xHxK.shape[1:])
    q_BxLxHxK, k_BxLxHxK, v_BxLxHxK = (
        qkv_BxLx3xHxK[:, :, i] for i in range(3))
    if s.positions == "rotary":
      q_BxLxHxK, k_BxLxHxK = rotate(q_BxLxHxK), rotate(k_BxLxHxK)
    # Heads-major operands make every attention einsum a plain batched matmul.
    q_BxHxLxK, k_BxHxLxK, v_BxHxLxK = (
        jnp.swapaxes(x, 1, 2) for x in (q_BxLxHxK, k_BxLxHxK, v_BxLxHxK))
    scores_BxHxLxL = jnp.einsum(
        "bhlk,bhmk->bhlm", q_BxHxLxK * s.attention_scale,
        k_BxHxLxK).astype(jnp.float32)
    causal_LxL = jnp.tril(jnp.ones((length, length), bool))
    scores_BxHxLxL = jnp.where(
        causal_LxL[None, None], scores_BxHxLxL, jnp.finfo(jnp.float32).min)
    # Softmax with the normalisation applied after the value product: dividing
    # [B, H, L, K] instead of [B, H, L, L] saves a pass over the score matrix.
    # The max shift cancels in the quotient, so it needs no gradient.
    shift_BxHxLx1 = jax.lax.stop_gradient(
        scores_BxHxLxL.max(axis=-1, keepdims=True))
    exp_BxHxLxL = jnp.exp(scores_BxHxLxL - shift_BxHxLx1)
    out_BxHxLxK = jnp.einsum(
        "bhlm,bhmk->bhlk", exp_BxHxLxL.astype(dtype), v_BxHxLxK)
    out_BxHxLxK = (out_BxHxLxK / exp_BxHxLxL.sum(axis=-1, keepdims=True)
                   ).astype(dtype)
    out_TxHxK = _flatten_tokens(jnp.swapaxes(out_BxHxLxK, 1, 2))
    out_TxD = nn.DenseGeneral(
        s.width, axis=(-2, -1), use_bias=False, dtype=dtype,
        kernel_init=nn.initializers.normal(
            1 / math.sqrt(s.width * 2 * s.depth)),
        name="out")(out_TxHxK)
    return out_TxD.reshape(x_BxLxD.shape)


class Mlp(nn.Module):
  spec: TransformerSpec

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    s = self.spec
    dtype = spec_lib.compute_dtype(s)
    h_TxF = nn.Dense(
        s.mlp_width, use_bias=False, dtype=dtype,
        kernel_init=nn.initializers.normal(1 / math.sqrt(s.width)),
        name="up")(_flatten_tokens(x_BxLxD))
    out_TxD = nn.Dense(
        s.width, use_bias=False, dtype=dtype,
        kernel_init=nn.initializers.normal(
            1 / math.sqrt(s.mlp_width * 2 * s.depth)),
        name="down")(nn.gelu(h_TxF))
    return out_TxD.reshape(x_BxLxD.shape)


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
    logits_TxV = nn.Dense(
        s.vocab_size, use_bias=False, dtype=dtype,
        kernel_init=nn.initializers.normal(spec_lib.head_init_std(s, s.width)),
        name="head")(_flatten_tokens(x_BxLxD))
    return logits_TxV.reshape(*tokens_BxL.shape, -1).astype(jnp.float32)


def _flatten_tokens(x: jax.Array) -> jax.Array:
  """[B, L, ...] -> [T, ...], so that every projection is a 2-D matmul.

  A projection's weight gradient then contracts one token axis. Contracting
  (B, L) made XLA CPU transpose the [B, L, F] activation gradient inside the
  GELU-gradient fusion, which took longer than the MLP's matmuls (see
  BUILD_NOTES.md, training throughput).
  """
  return x.reshape(-1, *x.shape[2:])
