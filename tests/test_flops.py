"""FLOPs convention against XLA's own count; peaks and MFU."""

import math

import jax
import jax.numpy as jnp
import optax
import pytest

from jscale import flops
from jscale import models


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


def test_train_flops_per_step_counts_every_unit_of_the_batch():
  spec = models.make_spec("transformer", width=64, depth=2, num_heads=4,
                          context_length=128)
  per_step = flops.train_flops_per_step(spec, 16)
  assert per_step == 16 * 128 * spec.train_flops_per_unit()
  # 6N dominates and the attention term is what is left over.
  attention = per_step - 6 * spec.matmul_params() * 16 * 128
  assert attention == 12 * 2 * 128 * 64 * 16 * 128


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


def test_measured_matmul_peak_is_a_positive_rate():
  rate = flops.measure_matmul_peak(n=128, dtype="float32", repeats=3)
  assert math.isfinite(rate) and rate > 1e6


@pytest.mark.parametrize("width,depth,context,batch", [
    (32, 1, 32, 8), (64, 2, 64, 8), (128, 2, 128, 8)])
def test_the_real_train_step_matches_the_convention_within_10_percent(
    width, depth, context, batch):
  """The jitted step jscale trains with (AdamW, clipping, data-parallel jit)."""
  from jscale import config as config_lib  # noqa: PLC0415
  from jscale import data as data_lib  # noqa: PLC0415
  from jscale.optim import learning_rate_schedule, make_optimizer  # noqa: PLC0415
  from jscale.train.step import init_state, train_step_fn  # noqa: PLC0415

  c = config_lib.base_config()
  c.model.width, c.model.depth, c.model.num_heads = width, depth, 2
  c.data.name, c.data.seq_len, c.train.global_batch = "synthetic_text", context, batch
  run = config_lib.resolve(c)
  module, tx = run.model.make_module(), make_optimizer(run.train)
  state = jax.eval_shape(lambda: init_state(module, tx, run.model.dummy_inputs(1), 0))
  dataset = data_lib.load(config_lib.data_spec(c))
  batch_arrays = dataset.train_batch(0, batch, 0)
  step = train_step_fn(module, tx, learning_rate_schedule(run.train))
  measured = compiled_flops(step, state, batch_arrays)
  predicted = flops.train_flops_per_step(run.model, batch)
  assert measured == pytest.approx(predicted, rel=0.10)
