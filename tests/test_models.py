"""Model zoo: exact parameter counts, causality, positions, init, validation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_config

from jscale import models
from jscale.models import transformer
from jscale.train import config as config_lib


def _init(spec, seed=0):
  """Jitted apply and initial parameters (one compile beats many eager ops)."""
  module = spec.make_module()
  params = jax.jit(module.init)(jax.random.key(seed), spec.dummy_inputs(2))
  return jax.jit(module.apply), params


def _size(tree):
  return sum(leaf.size for leaf in jax.tree.leaves(tree))


def _shapes(spec, batch=2):
  """Parameter and logit shapes/dtypes, traced without running anything."""
  module = spec.make_module()
  params = jax.eval_shape(module.init, jax.random.key(0), spec.dummy_inputs(2))
  return params, jax.eval_shape(module.apply, params, spec.dummy_inputs(batch))


def _random_tokens(spec, batch, seed=1):
  return jax.random.randint(jax.random.key(seed), (batch, spec.context_length),
                            0, spec.vocab_size, jnp.int32)


@pytest.mark.parametrize("family,fields", [
    ("transformer", dict(width=16, depth=1, num_heads=2, context_length=8)),
    ("transformer", dict(width=24, depth=3, num_heads=3, context_length=16,
                         mlp_ratio=2, positions="learned", vocab_size=50)),
    ("transformer", dict(width=64, depth=2, num_heads=4, context_length=32)),
    ("mlp", dict(width=8, depth=1, input_shape=(8, 8, 1))),
    ("mlp", dict(width=32, depth=4, input_shape=(28, 28, 1), num_classes=7)),
    ("cnn", dict(width=8, depth=1, input_shape=(8, 8, 1))),
    ("cnn", dict(width=16, depth=5, input_shape=(28, 28, 3), num_classes=4)),
])
def test_param_counts_equal_the_initialised_tree(family, fields):
  spec = models.make_spec(family, **fields)
  params, _ = _shapes(spec)
  assert spec.param_counts().total == _size(params)


def test_transformer_non_embedding_excludes_embeddings_and_head():
  spec = models.make_spec("transformer", width=32, depth=2, num_heads=2,
                          context_length=16, positions="learned")
  params, _ = _shapes(spec)
  tree = params["params"]
  excluded = _size([tree["token_embedding"], tree["position_embedding"],
                    tree["head"]])
  assert spec.param_counts().non_embedding == _size(params) - excluded


@pytest.mark.parametrize("family,fields,batch,out_shape", [
    ("transformer", dict(width=32, depth=1, num_heads=2, context_length=8),
     3, (3, 8, 256)),
    ("mlp", dict(width=16, depth=2, input_shape=(8, 8, 1)), 3, (3, 10)),
    ("cnn", dict(width=8, depth=2, input_shape=(8, 8, 1)), 3, (3, 10)),
])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_outputs_are_float32_logits_and_params_float32(
    family, fields, batch, out_shape, dtype):
  spec = models.make_spec(family, dtype=dtype, **fields)
  params, logits = _shapes(spec, batch)
  assert logits.shape == out_shape and logits.dtype == jnp.float32
  assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}


def test_bfloat16_computes_matmuls_in_bfloat16_and_stays_close():
  fields = dict(width=32, depth=2, num_heads=2, context_length=16)
  spec32 = models.make_spec("transformer", **fields)
  spec16 = models.make_spec("transformer", dtype="bfloat16", **fields)
  _, params = _init(spec32)
  tokens = _random_tokens(spec32, 2)
  jaxpr = str(jax.make_jaxpr(spec16.make_module().apply)(params, tokens))
  dots = [line for line in jaxpr.splitlines() if "dot_general" in line]
  assert dots and all("bf16" in line for line in dots)
  logits32 = jax.jit(spec32.make_module().apply)(params, tokens)
  logits16 = jax.jit(spec16.make_module().apply)(params, tokens)
  np.testing.assert_allclose(logits16, logits32, atol=0.03)


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_logits_never_depend_on_future_tokens(positions):
  spec = models.make_spec("transformer", width=32, depth=2, num_heads=2,
                          context_length=16, positions=positions)
  apply, params = _init(spec)
  tokens = _random_tokens(spec, 2)
  logits = apply(params, tokens)
  for t in (0, 7, 14):
    changed = tokens.at[:, t + 1:].set((tokens[:, t + 1:] + 1) % 256)
    changed_logits = apply(params, changed)
    np.testing.assert_array_equal(changed_logits[:, :t + 1], logits[:, :t + 1])
    assert not np.allclose(changed_logits[:, t + 1:], logits[:, t + 1:])


def test_rotary_makes_attention_position_aware(monkeypatch):
  # One causal layer without positions sees its prefix as a set: swapping two
  # earlier tokens cannot change the last position's logits. Rotary must.
  spec = models.make_spec("transformer", width=32, depth=1, num_heads=2,
                          context_length=8)
  apply, params = _init(spec)
  tokens = _random_tokens(spec, 1)
  swapped = tokens.at[:, 0].set(tokens[:, 1]).at[:, 1].set(tokens[:, 0])
  def last_logits(t):
    return apply(params, t)[:, -1]
  assert not np.allclose(last_logits(tokens), last_logits(swapped), atol=1e-4)
  monkeypatch.setattr(transformer, "rotate", lambda x: x)
  apply = jax.jit(spec.make_module().apply)
  np.testing.assert_allclose(
      last_logits(tokens), last_logits(swapped), atol=1e-5)


@pytest.mark.parametrize("width,depth", [(32, 1), (128, 2), (256, 4)])
def test_initial_lm_loss_is_log_vocab_and_logit_scale_width_free(width, depth):
  spec = models.make_spec("transformer", width=width, depth=depth,
                          num_heads=4, context_length=32)
  apply, params = _init(spec)
  tokens = _random_tokens(spec, 8)
  logits = apply(params, tokens)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean()
  assert abs(float(loss) - math.log(256)) < 0.02
  assert 0.07 < float(logits.std()) < 0.13


@pytest.mark.parametrize("family,fields", [
    ("mlp", dict(width=32, depth=1)),
    ("mlp", dict(width=256, depth=6)),
    ("cnn", dict(width=8, depth=2, input_shape=(8, 8, 1))),
    ("cnn", dict(width=64, depth=12, input_shape=(8, 8, 1))),
])
def test_initial_classifier_loss_is_log_classes(family, fields):
  spec = models.make_spec(family, **fields)
  apply, params = _init(spec)
  images = jax.random.uniform(jax.random.key(1), spec.dummy_inputs(16).shape)
  labels = jnp.arange(16, dtype=jnp.int32) % 10
  logits = apply(params, images)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  assert abs(float(loss) - math.log(10)) < 0.05
  assert 0.02 < float(logits.std()) < 0.3


@pytest.mark.parametrize("input_shape,expected", [
    ((8, 8, 1), [(8, 8)] * 5 + [(4, 4)] * 5 + [(2, 2)] * 6),
    ((28, 28, 1), [(28, 28)] * 5 + [(14, 14)] * 5 + [(7, 7)] * 6),
    ((4, 4, 1), [(4, 4)] * 8 + [(2, 2)] * 8),
])
def test_cnn_downsamples_a_bounded_number_of_times(input_shape, expected):
  spec = models.make_spec("cnn", width=4, depth=16, input_shape=input_shape)
  assert spec.block_resolutions() == expected
  _, logits = _shapes(spec)
  assert logits.shape == (2, 10)


def test_init_and_apply_vmap_over_a_run_axis():
  spec = models.make_spec("transformer", width=16, depth=1, num_heads=2,
                          context_length=8)
  module = spec.make_module()
  keys = jax.random.split(jax.random.key(0), 3)
  params = jax.jit(jax.vmap(module.init, in_axes=(0, None)))(
      keys, spec.dummy_inputs(2))
  logits = jax.jit(jax.vmap(module.apply, in_axes=(0, None)))(
      params, _random_tokens(spec, 2))
  assert logits.shape == (3, 2, 8, 256)
  assert not np.allclose(logits[0], logits[1])


def test_specs_are_frozen_and_hashable():
  spec = models.make_spec("cnn", input_shape=[8, 8, 1])
  assert spec.input_shape == (8, 8, 1)
  assert hash(spec) == hash(models.make_spec("cnn", input_shape=(8, 8, 1)))
  with pytest.raises(AttributeError):
    spec.width = 3


@pytest.mark.parametrize("family,fields,words", [
    ("transformer", dict(width=-3), ["model.width", "-3", "positive integer"]),
    ("mlp", dict(width=0), ["model.width", "0", "positive integer"]),
    ("cnn", dict(depth=0), ["model.depth", "0", "positive integer"]),
    ("transformer", dict(depth=2.5), ["model.depth", "2.5"]),
    ("transformer", dict(width=30, num_heads=4),
     ["model.num_heads", "4", "divide", "30"]),
    ("transformer", dict(width=12, num_heads=4),
     ["model.num_heads", "even head dimension"]),
    ("transformer", dict(positions="sinusoidal"),
     ["model.positions", "sinusoidal", "rotary, learned"]),
    ("mlp", dict(dtype="float16"),
     ["model.dtype", "float16", "float32, bfloat16"]),
    ("cnn", dict(input_shape=(8, 8)), ["model.input_shape", "(8, 8)"]),
    ("cnn", dict(num_classes=0), ["model.num_classes", "0"]),
    ("mlp", dict(heads=2), ["model.heads", "mlp", "width"]),
    ("resnet", dict(), ["model.family", "resnet", "transformer, mlp, cnn"]),
])
def test_bad_input_is_a_one_line_value_error(family, fields, words):
  with pytest.raises(ValueError) as error:
    models.make_spec(family, **fields)
  message = str(error.value)
  assert "\n" not in message
  for word in words:
    assert word in message


@pytest.mark.parametrize("family,fields", [
    ("transformer", dict(width=16, depth=1, num_heads=2, context_length=8)),
    ("transformer", dict(width=48, depth=3, num_heads=4, context_length=16,
                         positions="learned", vocab_size=50)),
    ("transformer", dict(width=64, depth=2, head_dim=8, context_length=8,
                         parametrization="mup")),
    ("mlp", dict(width=8, depth=1, input_shape=(8, 8, 1))),
    ("mlp", dict(width=64, depth=3, input_shape=(28, 28, 1), parametrization="mup")),
    ("cnn", dict(width=8, depth=1, input_shape=(8, 8, 1))),
    ("cnn", dict(width=16, depth=5, input_shape=(28, 28, 3), num_classes=4)),
])
def test_non_embedding_mask_selects_exactly_n(family, fields):
  spec = models.make_spec(family, **fields)
  variables, _ = _shapes(spec)
  for tree in (variables["params"], variables):  # with and without flax's wrapper
    mask = spec.non_embedding_mask(tree)
    assert jax.tree.structure(mask) == jax.tree.structure(tree)
    counted = sum(leaf.size for leaf, keep in zip(jax.tree.leaves(tree),
                                                    jax.tree.leaves(mask)) if keep)
    assert counted == spec.param_counts().non_embedding


def test_only_the_transformer_is_a_language_model():
  assert {name: spec.is_language_model for name, spec in models.FAMILIES.items()} == {
      "transformer": True, "mlp": False, "cnn": False}
  assert models.make_spec("transformer").is_language_model


def test_head_dim_fixes_the_head_size_and_sets_num_heads():
  spec = models.make_spec("transformer", width=96, num_heads=4, head_dim=16)
  assert (spec.num_heads, spec.head_size, spec.head_dim) == (6, 16, 16)
  derived = models.make_spec("transformer", width=96, num_heads=4)
  assert (derived.num_heads, derived.head_size, derived.head_dim) == (4, 24, 0)
  params, _ = _shapes(spec)
  assert params["params"]["block_0"]["attention"]["qkv"]["kernel"].shape == (96, 3, 6, 16)
  # An odd head size is fine without rotary, and num_heads is not checked when unused.
  assert models.make_spec("transformer", width=15, head_dim=5, num_heads=0,
                          positions="learned").num_heads == 3


def test_model_keys_of_the_config_reach_the_spec():
  c = tiny_config()
  c.model.width, c.model.head_dim = 64, 8
  c.model.parametrization, c.model.mup_base_width = "mup", 32
  spec = config_lib.resolve(c).model
  assert (spec.num_heads, spec.head_dim, spec.parametrization, spec.mup_base_width) == (
      8, 8, "mup", 32)
  c.model.family, c.data.name = "cnn", "synthetic_images"
  with pytest.raises(ValueError, match="model.parametrization must be sp for the cnn"):
    config_lib.resolve(c)
  c.model.family, c.data.name = "mlp", "synthetic_text"
  with pytest.raises(ValueError, match="use transformer for text and mlp or cnn for images"):
    config_lib.resolve(c)


@pytest.mark.parametrize("fields,words", [
    (dict(width=64, head_dim=12), ["model.head_dim", "12", "positive divisor",
                                   "model.width=64"]),
    (dict(width=64, head_dim=-8), ["model.head_dim", "-8", "positive divisor"]),
    (dict(width=64, head_dim=2.5), ["model.head_dim", "2.5"]),
    (dict(width=63, head_dim=7), ["model.head_dim", "even", "rotary", "7"]),
    (dict(parametrization="ntk"), ["model.parametrization", "ntk", "sp, mup"]),
    (dict(parametrization="mup", mup_base_width=0), ["model.mup_base_width", "0"]),
])
def test_bad_transformer_fields_are_one_line_value_errors(fields, words):
  with pytest.raises(ValueError) as error:
    models.make_spec("transformer", **fields)
  message = str(error.value)
  assert "\n" not in message
  for word in words:
    assert word in message


def test_cnn_refuses_mup():
  with pytest.raises(ValueError, match="model.parametrization must be sp for the cnn family"):
    models.make_spec("cnn", parametrization="mup")
