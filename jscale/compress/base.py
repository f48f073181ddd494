"""The compression-pass protocol, the identity pass, parameter selection and reports.

A pass acts at five points of a run; the train loop calls every hook of the (composed)
pass unconditionally, so a pass cannot be silently skipped:

  wrap_optimizer(tx)           extra optimizer state (pruning masks live in the optax
                               state, so checkpoints and sharding need nothing special)
  wrap_apply(apply_fn, training)  the forward pass ``apply_fn(params, inputs) -> logits``
                               (fake-quant for QAT when training, int8 for evaluation)
  wrap_loss(loss_fn)           the objective ``loss_fn(logits, batch) -> scalar``
                               (distillation adds the teacher term)
  post_update(params, opt_state, step)  after each optimizer update, jit-safe
  after_training(params)       post-training transforms (one-shot pruning, PTQ)

A pass whose hooks read arrays it never updates (a distillation teacher's parameters)
exposes them as ``frozen`` and rebuilds itself around other values with
``with_frozen``: the train step takes them as arguments, laid out on the device mesh,
instead of closing over them as constants.

and ``report(params)`` adds its numbers to the run record. ``realised`` says whether the
pass's compute is real (int8 operands in the matmuls) or simulated in float (masks,
fake quantization): sparse weights are multiplied as dense float matrices either way.
"""

import dataclasses
import re
from typing import Callable, ClassVar, Protocol

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jscale.errors import BadInput
from jscale.models import params as params_lib

ApplyFn = Callable  # (params, inputs) -> logits
LossFn = Callable  # (logits, batch) -> scalar


class CompressionPass(Protocol):
  name: str
  realised: bool

  def wrap_optimizer(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
    ...

  def wrap_apply(self, apply_fn: ApplyFn, *, training: bool) -> ApplyFn:
    ...

  def wrap_loss(self, loss_fn: LossFn) -> LossFn:
    ...

  def post_update(self, params, opt_state, step):
    ...

  def after_training(self, params):
    ...

  def report(self, params) -> dict:
    ...

  @property
  def frozen(self):
    ...

  def with_frozen(self, frozen) -> "CompressionPass":
    ...


@dataclasses.dataclass(frozen=True)
class Identity:
  """No compression: every hook returns its input; dense float compute, nothing simulated
  or realised."""
  name: ClassVar[str] = "none"
  realised: ClassVar[bool] = False

  def wrap_optimizer(self, tx):
    return tx

  def wrap_apply(self, apply_fn, *, training):
    del training
    return apply_fn

  def wrap_loss(self, loss_fn):
    return loss_fn

  def post_update(self, params, opt_state, step):
    del opt_state, step
    return params

  def after_training(self, params):
    return params

  def report(self, params) -> dict:
    del params
    return {}

  @property
  def frozen(self):
    return None

  def with_frozen(self, frozen):
    del frozen
    return self


@flax.struct.dataclass
class QuantizedArray:
  """A weight stored as integers plus a float32 scale per output channel (last axis).

  ``values`` (int8 container, range +-(2**(bits-1) - 1)) has the weight's shape;
  ``scale`` has the same rank with every axis but the last of size 1.
  """
  values: jax.Array
  scale: jax.Array

  def dequantize(self) -> jax.Array:
    return self.values.astype(jnp.float32) * self.scale


def _is_quantized(x) -> bool:
  return isinstance(x, QuantizedArray)


def path_name(path) -> str:
  """'block_0/mlp/up/kernel' from a jax key path."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def selector(include: str, field: str,
             table: params_lib.ParamTable = params_lib.GENERIC) -> Callable:
  """``select(path, leaf) -> bool``: the default rule or a regex over path names.

  Default (``include == ""``): the weight matrices of the model's parameter ``table``
  (Dense/DenseGeneral/Conv weights, never embeddings, norm scales or biases).
  """
  if include:
    try:
      pattern = re.compile(include)
    except re.error as e:
      raise BadInput(f"{field} must be a valid regex, got {include!r} ({e})") from None
    return lambda path, leaf: np.ndim(leaf) >= 1 and bool(pattern.search(path_name(path)))
  return lambda path, leaf: table.role(path_name(path)).matrix


def selected(params, select: Callable, field: str, include: str):
  """Bool tree mirroring ``params``; a selection matching nothing is an error."""
  flags = jax.tree_util.tree_map_with_path(select, params)
  if not any(jax.tree.leaves(flags)):
    example = path_name(jax.tree_util.tree_leaves_with_path(params)[0][0])
    raise BadInput(f"{field} matched no parameter, got {include!r}"
                     f" (paths look like {example!r})")
  return flags


def weight_report(params) -> dict:
  """Parameter count, non-zero count and bytes of the weights as stored."""
  leaves = jax.tree.leaves(params, is_leaf=_is_quantized)
  values = [x.values if _is_quantized(x) else x for x in leaves]
  return {
      "params_total": int(sum(np.size(v) for v in values)),
      "params_nonzero": int(sum(int(jnp.count_nonzero(v)) for v in values)),
      "weight_bytes": int(sum(x.values.nbytes + x.scale.nbytes if _is_quantized(x)
                              else x.nbytes for x in leaves)),
  }
