"""Integer quantization: symmetric per-channel weights, dynamic per-token activations.

Weights are quantized per output channel (the kernel's last axis) with an absmax scale;
activations per row (token, or example for convolutions) at run time. Two forward modes
intercept every ``nn.Dense``, ``nn.DenseGeneral`` and ``nn.Conv`` call of any linen model:

  "int"   realised: integer operands in ``lax.dot_general`` / ``lax.conv_general_dilated``
          with ``preferred_element_type=int32``, rescaled to float after the product
          (the matmul runs s8 x s8 -> s32; 4-bit values ride in the int8 container).
  "fake"  simulated (quantization-aware training): both operands are rounded to the
          integer grid in float with a straight-through gradient.

Attention's activation-activation einsums, embeddings and norms stay float.
"""

import dataclasses
import functools
import re
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

from jscale.compress import base
from jscale.errors import BadInput
from jscale.models import params as params_lib

BITS = (4, 8)
LAYERS = (nn.Dense, nn.DenseGeneral, nn.Conv)


def _grid(x, reduce_axes, bits):
  """(integers as float, scale): symmetric absmax over ``reduce_axes``, kept as size 1."""
  qmax = 2.0 ** (bits - 1) - 1
  absmax = jnp.max(jnp.abs(x), axis=tuple(reduce_axes), keepdims=True).astype(jnp.float32)
  scale = jnp.where(absmax > 0, absmax / qmax, 1.0)
  return jnp.clip(jnp.round(x / scale), -qmax, qmax), scale


def _channel_axes(x):
  return tuple(range(x.ndim - 1))


def quantize(weight, bits: int = 8) -> base.QuantizedArray:
  """Per-output-channel symmetric quantization; error per element <= scale / 2."""
  values, scale = _grid(weight, _channel_axes(weight), bits)
  return base.QuantizedArray(values.astype(jnp.int8), scale)


def fake_quant(x, reduce_axes, bits: int):
  """x rounded to its integer grid, with the identity as gradient (straight-through)."""
  values, scale = _grid(x, reduce_axes, bits)
  return x + jax.lax.stop_gradient((values * scale).astype(x.dtype) - x)


def _rescale(acc, row_scale, weight_scale, out_dtype):
  """int32 accumulator [rows..., channels...] times row and per-channel scales."""
  ones = (1,) * acc.ndim
  rows = row_scale.reshape(row_scale.shape + ones[:acc.ndim - row_scale.ndim])
  channels = weight_scale.reshape(ones[:-1] + weight_scale.shape[-1:])
  return (acc.astype(jnp.float32) * rows * channels).astype(out_dtype)


def int_dot_general(lhs, rhs, dimension_numbers, precision=None,
                    preferred_element_type=None, *, weight_scale, activation_bits):
  """``lax.dot_general`` with integer ``rhs`` and ``lhs`` quantized per row."""
  del precision, preferred_element_type
  (lhs_contract, rhs_contract), (lhs_batch, _) = dimension_numbers
  lhs_contract = tuple(a % lhs.ndim for a in lhs_contract)
  if lhs_batch or rhs.ndim - 1 in [a % rhs.ndim for a in rhs_contract]:
    raise ValueError("int8 quantization supports kernels whose last axis is an output "
                     f"channel and no batch axes, got dimension_numbers {dimension_numbers}")
  if activation_bits is None:  # weight-only: simulated, float product
    acc = jax.lax.dot_general(lhs.astype(jnp.float32), rhs.astype(jnp.float32),
                              dimension_numbers)
    return _rescale(acc, jnp.ones((), jnp.float32), weight_scale, lhs.dtype)
  values, scale = _grid(lhs, lhs_contract, activation_bits)
  acc = jax.lax.dot_general(values.astype(jnp.int8), rhs, dimension_numbers,
                            preferred_element_type=jnp.int32)
  row_shape = tuple(d for a, d in enumerate(lhs.shape) if a not in lhs_contract)
  return _rescale(acc, scale.reshape(row_shape), weight_scale, lhs.dtype)


def int_conv(lhs, rhs, window_strides, padding, *, weight_scale, activation_bits, **kwargs):
  """``lax.conv_general_dilated`` (NHWC, HWIO) on integers, activations per example."""
  kwargs.pop("precision", None)
  if activation_bits is None:
    acc = jax.lax.conv_general_dilated(lhs.astype(jnp.float32), rhs.astype(jnp.float32),
                                       window_strides, padding, **kwargs)
    return _rescale(acc, jnp.ones((), jnp.float32), weight_scale, lhs.dtype)
  values, scale = _grid(lhs, range(1, lhs.ndim), activation_bits)
  acc = jax.lax.conv_general_dilated(values.astype(jnp.int8), rhs, window_strides, padding,
                                     preferred_element_type=jnp.int32, **kwargs)
  return _rescale(acc, scale.reshape(lhs.shape[:1]), weight_scale, lhs.dtype)


def fake_dot_general(lhs, rhs, dimension_numbers, precision=None,
                     preferred_element_type=None, *, weight_bits, activation_bits):
  (lhs_contract, _), _ = dimension_numbers
  if activation_bits:
    lhs = fake_quant(lhs, [a % lhs.ndim for a in lhs_contract], activation_bits)
  rhs = fake_quant(rhs, _channel_axes(rhs), weight_bits)
  return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                             preferred_element_type=preferred_element_type)


def fake_conv(lhs, rhs, window_strides, padding, *, weight_bits, activation_bits, **kwargs):
  if activation_bits:
    lhs = fake_quant(lhs, range(1, lhs.ndim), activation_bits)
  rhs = fake_quant(rhs, _channel_axes(rhs), weight_bits)
  return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)


def _keep_integer_kernel(inputs, kernel, bias, dtype=None, inexact=True):
  """flax's promote_dtype for inputs and bias; the integer kernel passes untouched."""
  inputs, bias = promote_dtype(inputs, bias, dtype=dtype, inexact=inexact)
  return [inputs, kernel, bias]


_OURS = (int_dot_general, int_conv, fake_dot_general, fake_conv)


def _is_ours(module) -> bool:
  op = getattr(module, "conv_general_dilated" if isinstance(module, nn.Conv) else "dot_general")
  return isinstance(op, functools.partial) and op.func in _OURS


def interceptor(mode: str, weight_bits: int, activation_bits: int | None, include: str,
                table: params_lib.ParamTable = params_lib.GENERIC):
  """``nn.intercept_methods`` function running selected layers in ``mode``: those whose
  kernel path ``include`` matches, or with ``include`` "", whose kernel is a weight
  matrix of ``table``."""
  pattern = re.compile(include) if include else None

  def selected(module) -> bool:
    name = "/".join(module.path + ("kernel",))
    return bool(pattern.search(name)) if pattern else table.role(name).matrix

  def intercept(next_fun, args, kwargs, context):
    module = context.module
    if (context.method_name != "__call__" or not isinstance(module, LAYERS)
        or _is_ours(module) or not module.has_variable("params", "kernel")):
      return next_fun(*args, **kwargs)
    if not selected(module):
      return next_fun(*args, **kwargs)
    kernel = module.get_variable("params", "kernel")
    variables = dict(module.variables["params"])
    conv = isinstance(module, nn.Conv)
    if mode == "fake":
      op = functools.partial(fake_conv if conv else fake_dot_general,
                             weight_bits=weight_bits, activation_bits=activation_bits)
      fields = {}
    else:
      q = kernel if isinstance(kernel, base.QuantizedArray) else quantize(kernel, weight_bits)
      variables["kernel"] = q.values
      op = functools.partial(int_conv if conv else int_dot_general, weight_scale=q.scale,
                             activation_bits=activation_bits)
      fields = {"promote_dtype": _keep_integer_kernel}
    fields["conv_general_dilated" if conv else "dot_general"] = op
    return module.clone(parent=None, **fields).apply({"params": variables}, *args, **kwargs)

  return intercept


def quantized_apply(apply_fn, *, mode: str, weight_bits: int = 8,
                    activation_bits: int | None = 8, include: str = "",
                    table: params_lib.ParamTable = params_lib.GENERIC):
  """Wraps ``apply_fn(params, inputs)`` so its Dense/Conv layers run in ``mode``.

  In "int" mode ``params`` may hold float kernels (quantized on the fly) or
  :class:`QuantizedArray` kernels from :func:`quantize_params`.
  """
  intercept = interceptor(mode, weight_bits, activation_bits, include, table)

  def wrapped(params, inputs):
    with nn.intercept_methods(intercept):
      return apply_fn(params, inputs)

  return wrapped


def int8_apply(module: nn.Module, params, inputs, *, activation_bits: int | None = 8):
  """Evaluates any linen module with int8 weights and activations (realised)."""
  apply_fn = quantized_apply(lambda p, x: module.apply({"params": p}, x), mode="int",
                             activation_bits=activation_bits)
  return apply_fn(params, inputs)


def quantize_params(params, bits: int = 8, include: str = "", field: str = "compress.ptq",
                    table: params_lib.ParamTable = params_lib.GENERIC):
  """Selected weight matrices of ``table`` become :class:`QuantizedArray` (int8 values +
  float32 scales); ``include`` (a regex) narrows the selection."""
  flags = base.selected(params, base.selector(include, f"{field}.include", table),
                        f"{field}.include", include)
  return jax.tree.map(lambda f, k, p: quantize(p, bits) if f and k else p,
                      flags, table.matrices(params), params)


def _check(field: str, bits: int, activation_bits, include: str) -> None:
  if bits not in BITS:
    raise BadInput(f"{field}.bits must be one of {', '.join(map(str, BITS))}, got {bits}")
  if activation_bits not in (*BITS, 0):
    raise BadInput(f"{field}.activation_bits must be 0 (float) or one of "
                     f"{', '.join(map(str, BITS))}, got {activation_bits}")
  base.selector(include, f"{field}.include")


@dataclasses.dataclass(frozen=True)
class PostTrainingQuantization(base.Identity):
  """Post-training int quantization. Realised when ``activation_bits`` > 0: the evaluation
  forward multiplies integer operands with int32 accumulation; weight-only (0) is simulated.

  Training is untouched; ``after_training`` stores kernels as int8 + scales (about 4x
  fewer weight bytes than float32) and ``wrap_apply(training=False)`` evaluates them.

  Attributes:
    bits: weight bits, 8 or 4.
    activation_bits: dynamic per-token activation bits, 8 or 4; 0 keeps activations float.
    include: regex over kernel paths; "" = every weight matrix of ``table``.
    table: the parameter table of the model quantized (``jscale.models.params``; its
      family's, set by ``jscale.train.config``); GENERIC takes every "kernel".
  """
  name: ClassVar[str] = "ptq"
  bits: int = 8
  activation_bits: int = 8
  include: str = ""
  table: params_lib.ParamTable = dataclasses.field(default=params_lib.GENERIC, repr=False)

  def __post_init__(self):
    _check(f"compress.{self.name}", self.bits, self.activation_bits, self.include)

  @property
  def realised(self) -> bool:
    return self.activation_bits > 0

  def wrap_apply(self, apply_fn, *, training):
    if training:
      return apply_fn
    return quantized_apply(apply_fn, mode="int", weight_bits=self.bits,
                           activation_bits=self.activation_bits or None, include=self.include,
                           table=self.table)

  def after_training(self, params):
    return quantize_params(params, self.bits, self.include, f"compress.{self.name}",
                           self.table)

  def report(self, params) -> dict:
    del params
    return {"weight_bits": self.bits, "activation_bits": self.activation_bits}


@dataclasses.dataclass(frozen=True)
class QuantizationAwareTraining(PostTrainingQuantization):
  """Quantization-aware training: the training forward is simulated (fake-quant weights
  and activations in float, straight-through gradients); evaluation and
  ``after_training`` are the realised int path of :class:`PostTrainingQuantization`."""
  name: ClassVar[str] = "qat"

  def wrap_apply(self, apply_fn, *, training):
    if not training:
      return super().wrap_apply(apply_fn, training=False)
    return quantized_apply(apply_fn, mode="fake", weight_bits=self.bits,
                           activation_bits=self.activation_bits or None, include=self.include,
                           table=self.table)
