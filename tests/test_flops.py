"""FLOPs convention against XLA's own count; peaks and MFU."""


import jax
import jax.numpy as jnp
import optax
import pytest

from jscale import data as data_lib
from jscale import models
from jscale.models import flops
from jscale.train import config as config_lib
from jscale.train.step import build_run


def compiled_flops(step, *args) -> float:
  """FLOPs XLA reports for the compiled ``step(*args)``."""
  cost = jax.jit(step).lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
    cost = cost[0]
  return float(cost["flops"])


def sgd_train_step(spec):
  """Cross-entropy loss, its gradient and an SGD update, as one function."""
  module = spec.make_module()

  def loss(params, inputs, labels):
    logits = module.apply(params, inputs)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, labels).mean()

  def step(params, inputs, labels):
    grads = jax.grad(loss)(params, inputs, labels)
    return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)

  return module, step


@pytest.mark.parametrize("family,fields,batch", [
    ("transformer", dict(width=32, depth=1, num_heads=2, context_length=32), 4),
    ("transformer", dict(width=64, depth=2, num_heads=4, context_length=64,
                         positions="learned"), 4),
    ("transformer", dict(width=128, depth=2, num_heads=4, context_length=32), 4),
    ("transformer", dict(width=64, depth=4, num_heads=4, context_length=128), 2),
    ("mlp", dict(width=64, depth=3, input_shape=(8, 8, 1)), 8),
    ("mlp", dict(width=128, depth=1, input_shape=(28, 28, 1)), 8),
    ("cnn", dict(width=16, depth=3, input_shape=(8, 8, 1)), 8),
    ("cnn", dict(width=16, depth=5, input_shape=(28, 28, 1)), 8),
])
def test_train_flops_match_xla_cost_analysis_within_10_percent(
    family, fields, batch):
  spec = models.make_spec(family, **fields)
  module, step = sgd_train_step(spec)
  params = jax.eval_shape(module.init, jax.random.key(0), spec.dummy_inputs(1))
  inputs = spec.dummy_inputs(batch)
  if family == "transformer":
    labels = inputs
  else:
    labels = jnp.zeros((batch,), jnp.int32)
  measured = compiled_flops(step, params, inputs, labels)
  predicted = flops.train_flops_per_step(spec, batch)
  assert measured == pytest.approx(predicted, rel=0.10)


def test_transformer_step_flops_equal_a_count_by_hand():
  # d_model 64, 2 blocks, 4 heads, n_ctx 128, vocab 256, MLP 256; batch 16.
  # Forward multiply-accumulates (MACs) per token, layer by layer:
  #   qkv 64 x 192 = 12,288; out 64 x 64 = 4,096; up 64 x 256 = 16,384;
  #   down 256 x 64 = 16,384 -> 49,152 per block, 98,304 for two;
  #   head 64 x 256 = 16,384 -> 114,688 weight MACs; x 6 (fwd, two grads) = 688,128.
  #   attention per block: QK^T 128 keys x 64 = 8,192 MACs, AV 8,192 -> 16,384 MACs,
  #   x 2 FLOPs x 3 passes = 98,304; two blocks 196,608.
  # 884,736 FLOPs per token x 2,048 tokens per step.
  spec = models.make_spec("transformer", width=64, depth=2, num_heads=4,
                          context_length=128)
  assert spec.train_flops_per_unit() == 884_736
  assert flops.train_flops_per_step(spec, 16) == 1_811_939_328


def test_mlp_step_flops_equal_a_count_by_hand():
  # 8x8x1 images -> 64 inputs, two hidden layers of 32, 10 classes; batch 8.
  # MACs: 64 x 32 = 2,048; 32 x 32 = 1,024; 32 x 10 = 320 -> 3,392.
  # forward 2 x 3,392 = 6,784; weight gradients 6,784; input gradients of all but
  # the first layer 2 x (1,024 + 320) = 2,688 -> 16,256 per example.
  spec = models.make_spec("mlp", width=32, depth=2, input_shape=(8, 8, 1))
  assert spec.train_flops_per_unit() == 16_256
  assert flops.train_flops_per_step(spec, 8) == 130_048


def test_cnn_step_flops_equal_a_count_by_hand():
  # 4x4x1 images, stem and one block of 4 channels (no pooling), 10 classes.
  # A SAME 3x3 conv on 4 rows: taps inside the image per output row 2, 3, 3, 2 = 10,
  # so 10 x 10 = 100 (position, tap) pairs per channel pair.
  # MACs: stem 100 x 1 x 4 = 400; block 100 x 4 x 4 = 1,600; head 64 x 10 = 640.
  # 6 x 2,640 - 2 x 400 (the stem needs no input gradient) = 15,040 per example.
  spec = models.make_spec("cnn", width=4, depth=1, input_shape=(4, 4, 1))
  assert spec.train_flops_per_unit() == 15_040
  assert flops.train_flops_per_step(spec, 8) == 120_320


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_matmul_params_are_the_kernels_of_the_initialised_model(positions):
  spec = models.make_spec("transformer", width=32, depth=3, num_heads=2, mlp_ratio=3,
                          context_length=16, vocab_size=50, positions=positions)
  params = jax.eval_shape(spec.make_module().init, jax.random.key(0), spec.dummy_inputs(1))
  kernels = [leaf.size for path, leaf in jax.tree_util.tree_leaves_with_path(params)
             if path[-1].key == "kernel"]
  assert len(kernels) == 3 * 4 + 1  # qkv, out, up, down per block; the head
  assert spec.matmul_params() == sum(kernels)


def test_lm_flops_grow_with_width_depth_and_context():
  base = dict(width=64, depth=2, num_heads=4, context_length=64)
  reference = models.make_spec("transformer", **base).train_flops_per_unit()
  for change in (dict(width=128), dict(depth=3), dict(context_length=128)):
    bigger = models.make_spec("transformer", **{**base, **change})
    assert bigger.train_flops_per_unit() > reference


@pytest.mark.parametrize("device_kind,dtype,peak", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989e12),
    ("NVIDIA H100 80GB HBM3", "float32", 494e12),
    ("NVIDIA H200", "bfloat16", 989e12),
    ("NVIDIA A100-SXM4-40GB", "bfloat16", 312e12),
    ("TPU v4", "bfloat16", 275e12),
    ("TPU v5 lite", "bfloat16", 197e12),
    ("TPU v5p", "bfloat16", 459e12),
    ("TPU v6 lite", "bfloat16", 918e12),
])
def test_peak_flops_of_known_accelerators(device_kind, dtype, peak):
  assert flops.peak_flops_per_device(device_kind, dtype) == peak


@pytest.mark.parametrize("device_kind,dtype", [
    ("cpu", "float32"), ("cpu", "bfloat16"), ("Some Future Chip", "bfloat16"),
    ("TPU v4", "float32"), ("NVIDIA H100 NVL", "bfloat16"),
])
def test_unknown_peaks_are_none_and_so_is_mfu(device_kind, dtype):
  peak = flops.peak_flops_per_device(device_kind, dtype)
  assert peak is None
  assert flops.mfu(1e12, peak) is None


def test_mfu_is_achieved_over_peak():
  assert flops.mfu(494.5e12, 989e12) == pytest.approx(0.5)


@pytest.mark.parametrize("width,depth,context,batch", [
    (32, 1, 32, 8), (64, 2, 64, 8), (128, 2, 128, 8)])
def test_the_real_train_step_matches_the_convention_within_10_percent(
    width, depth, context, batch):
  """The jitted step jscale trains with (AdamW, clipping, data-parallel jit)."""
  c = config_lib.base_config()
  c.model.width, c.model.depth, c.model.num_heads = width, depth, 2
  c.data.name, c.data.seq_len, c.train.global_batch = "synthetic_text", context, batch
  run = config_lib.resolve(c)
  built = build_run(run)
  state = jax.eval_shape(built.init, 0)
  dataset = data_lib.load(config_lib.data_spec(c))
  batch_arrays = dataset.train_batch(0, batch, 0)
  measured = compiled_flops(built.step, state, batch_arrays)
  predicted = flops.train_flops_per_step(run.model, batch)
  assert measured == pytest.approx(predicted, rel=0.10)


@pytest.mark.parametrize("family,fields", [
    ("transformer", dict(width=128, depth=2, num_heads=4, context_length=32)),
    ("transformer", dict(width=64, depth=2, head_dim=16, context_length=32,
                         positions="learned")),
    ("mlp", dict(width=128, depth=3, input_shape=(8, 8, 1))),
])
def test_mup_changes_neither_parameter_counts_nor_flops(family, fields):
  sp = models.make_spec(family, **fields)
  mup = models.make_spec(family, parametrization="mup", mup_base_width=32, **fields)
  assert mup.param_counts() == sp.param_counts()
  assert mup.train_flops_per_unit() == sp.train_flops_per_unit()
  shapes = []
  for spec in (sp, mup):
    module, step = sgd_train_step(spec)
    params = jax.eval_shape(module.init, jax.random.key(0), spec.dummy_inputs(1))
    shapes.append(jax.tree.map(lambda x: x.shape, params))
    inputs = spec.dummy_inputs(4)
    labels = inputs if family == "transformer" else jnp.zeros((4,), jnp.int32)
    measured = compiled_flops(step, params, inputs, labels)
    assert measured == pytest.approx(flops.train_flops_per_step(spec, 4), rel=0.10)
  assert shapes[0] == shapes[1]
