"""int quantization: grid error, realised int8 matmuls, QAT, storage bytes, bad input."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jscale import compress
from jscale.compress import quantization


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(256, name="hidden")(x))
    x = nn.DenseGeneral((4, 16), name="heads")(x)
    x = nn.DenseGeneral(64, axis=(-2, -1), name="merge")(x)
    return nn.Dense(10, name="head")(x)


class CNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3), name="conv")(x))
    return nn.Dense(10, name="head")(x.reshape(x.shape[0], -1))


def init(module, shape):
  x = jax.random.normal(jax.random.key(0), shape)
  return x, module.init(jax.random.key(1), x)["params"]


@pytest.mark.parametrize("bits", [8, 4])
def test_per_element_error_at_most_half_a_step(bits):
  w = jax.random.normal(jax.random.key(0), (64, 32)) * jnp.linspace(0.1, 3.0, 32)[None, :]
  q = quantization.quantize(w, bits)
  assert q.values.dtype == jnp.int8 and q.scale.shape == (1, 32)
  assert int(jnp.max(jnp.abs(q.values))) == 2 ** (bits - 1) - 1
  err = jnp.abs(q.dequantize() - w)
  assert bool(jnp.all(err <= q.scale / 2 * (1 + 1e-6)))


def test_int8_matmul_equals_float_matmul_of_dequantized_operands():
  x = jax.random.normal(jax.random.key(0), (8, 5, 64))
  w = jax.random.normal(jax.random.key(1), (64, 32))
  q = quantization.quantize(w)
  dims = (((2,), (0,)), ((), ()))
  got = quantization.int_dot_general(x, q.values, dims, weight_scale=q.scale,
                                     activation_bits=8)
  # The grids by hand in float64: absmax / 127 per token row (x) and per output column (w).
  x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
  x_scale = np.abs(x64).max(axis=2, keepdims=True) / 127
  w_scale = np.abs(w64).max(axis=0, keepdims=True) / 127
  x_grid = np.clip(np.round(x64 / x_scale), -127, 127) * x_scale
  w_grid = np.clip(np.round(w64 / w_scale), -127, 127) * w_scale
  want = np.einsum("blk,kn->bln", x_grid, w_grid)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(q.scale, w_scale, rtol=1e-6)
  np.testing.assert_array_equal(q.values, np.round(w64 / w_scale))
  # and the grid is coarse enough to matter: the float product is measurably different
  assert np.abs(want - np.einsum("blk,kn->bln", x64, w64)).max() > 1e-2


def dots(hlo: str, op: str):
  return [line for line in hlo.splitlines() if f"stablehlo.{op}" in line]


def test_lowered_hlo_multiplies_s8_by_s8_into_s32():
  module = MLP()
  x, params = init(module, (4, 3, 32))
  qparams = compress.quantize_params(params)
  hlo = jax.jit(lambda p, x: compress.int8_apply(module, p, x)).lower(qparams, x).as_text()
  lines = dots(hlo, "dot_general")
  assert len(lines) == 4
  assert all("xi8>, tensor<" in line and "xi32>" in line.split("->")[-1] for line in lines)
  assert all(line.count("xi8>") == 2 for line in lines)

  cnn = CNN()
  xi, pc = init(cnn, (2, 6, 6, 3))
  hlo = jax.jit(lambda p, x: compress.int8_apply(cnn, p, x)).lower(pc, xi).as_text()
  (conv,) = dots(hlo, "convolution")
  assert conv.count("xi8>") == 2 and "xi32>" in conv.split("->")[-1]


@pytest.mark.parametrize("model, shape", [(MLP(), (16, 3, 32)), (CNN(), (4, 6, 6, 3))])
def test_int8_forward_is_close_to_float(model, shape):
  x, params = init(model, shape)
  want = model.apply({"params": params}, x)
  got = compress.int8_apply(model, compress.quantize_params(params), x)
  rel = float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))
  assert rel < 0.03
  # and the same values whether kernels are stored int8 or quantized on the fly
  np.testing.assert_allclose(compress.int8_apply(model, params, x), got, rtol=1e-6, atol=1e-6)


def test_four_bit_is_coarser_than_eight_bit():
  model = MLP()
  x, params = init(model, (16, 3, 32))
  want = model.apply({"params": params}, x)
  error = {}
  for bits in (8, 4):
    ptq = compress.make_pass("ptq", bits=bits)
    apply_fn = ptq.wrap_apply(lambda p, x: model.apply({"params": p}, x), training=False)
    error[bits] = float(jnp.linalg.norm(apply_fn(ptq.after_training(params), x) - want))
  assert error[4] > 3 * error[8]


def test_qat_forward_is_fake_quantized_with_straight_through_gradient():
  model = MLP()
  x, params = init(model, (4, 3, 32))
  qat = compress.make_pass("qat")
  train_fn = qat.wrap_apply(lambda p, x: model.apply({"params": p}, x), training=True)
  eval_fn = qat.wrap_apply(lambda p, x: model.apply({"params": p}, x), training=False)
  # simulated and realised forward agree up to float rounding of the rescale
  np.testing.assert_allclose(train_fn(params, x), eval_fn(qat.after_training(params), x),
                             rtol=1e-4, atol=1e-4)
  grads = jax.grad(lambda p: jnp.sum(train_fn(p, x) ** 2))(params)
  assert all(bool(jnp.any(g != 0)) for g in jax.tree.leaves(grads))
  # straight-through: d/dw of sum(fake_quant(w) * c) is c exactly
  c = jax.random.normal(jax.random.key(3), (8, 4))
  w = jax.random.normal(jax.random.key(4), (8, 4))
  g = jax.grad(lambda w: jnp.sum(quantization.fake_quant(w, (0,), 8) * c))(w)
  np.testing.assert_array_equal(g, c)


def test_stored_int8_checkpoint_is_about_four_times_smaller(tmp_path):
  # big enough that orbax's per-array metadata does not dominate the bytes
  params = {f"layer_{i}": {"kernel": jax.random.normal(jax.random.key(i), (512, 512)),
                           "bias": jnp.zeros((512,))} for i in range(4)}
  qparams = compress.quantize_params(params)
  sizes = {}
  with ocp.StandardCheckpointer() as ckpt:
    for name, tree in (("float", params), ("int8", qparams)):
      ckpt.save(tmp_path / name, tree)
      ckpt.wait_until_finished()
      sizes[name] = sum(os.path.getsize(os.path.join(d, f))
                        for d, _, fs in os.walk(tmp_path / name) for f in fs)
    restored = ckpt.restore(tmp_path / "int8", jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), qparams))
  jax.tree.map(np.testing.assert_array_equal, restored, qparams)
  report = compress.weight_report(qparams)
  assert report["weight_bytes"] < compress.weight_report(params)["weight_bytes"] / 3.5
  assert sizes["float"] / sizes["int8"] > 3.5, sizes


@pytest.mark.parametrize("name, fields, message", [
    ("ptq", {"bits": 3}, "compress.ptq.bits must be one of 4, 8, got 3"),
    ("qat", {"bits": 16}, "compress.qat.bits must be one of 4, 8, got 16"),
    ("ptq", {"activation_bits": 2}, "compress.ptq.activation_bits"),
    ("ptq", {"include": "["}, "compress.ptq.include must be a valid regex"),
])
def test_bad_fields_fail_with_one_line(name, fields, message):
  with pytest.raises(ValueError) as e:
    compress.make_pass(name, **fields)
  assert message in str(e.value) and "\n" not in str(e.value)


def test_regex_matching_nothing_is_an_error():
  _, params = init(MLP(), (4, 3, 32))
  with pytest.raises(ValueError, match="compress.ptq.include matched no parameter"):
    compress.make_pass("ptq", include="^absent").after_training(params)
