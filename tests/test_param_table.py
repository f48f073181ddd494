"""One parameter table per family decides what every parameter is: decay, compression,
quantization, muP, N and sharding all read it (``jscale.models.params``)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from jscale import compress, models
from jscale.models import params as params_lib
from jscale.models.transformer import TransformerSpec
from jscale.train import config as config_lib
from jscale.train.optim import make_optimizer

FAMILIES = [
    ("transformer", dict(width=16, depth=2, num_heads=2, context_length=8,
                         positions="learned")),
    ("mlp", dict(width=16, depth=3, input_shape=(4, 4, 1))),
    ("cnn", dict(width=8, depth=2, input_shape=(8, 8, 1))),
]


def _params(spec):
  return jax.eval_shape(spec.make_module().init, jax.random.key(0),
                        spec.dummy_inputs(1))["params"]


def _names(tree, values) -> dict[str, object]:
  return {params_lib.key_name(path[-2]) + "/" + params_lib.key_name(path[-1])
          if len(path) > 1 else params_lib.key_name(path[-1]): value
          for (path, _), value in zip(jax.tree_util.tree_leaves_with_path(tree),
                                      jax.tree.leaves(values))}


@pytest.mark.parametrize("family,fields", FAMILIES)
def test_every_parameter_matches_exactly_one_rule(family, fields):
  spec = models.make_spec(family, **fields)
  table = spec.param_table
  for path, leaf in jax.tree_util.tree_leaves_with_path(_params(spec)):
    name = "/".join(params_lib.key_name(k) for k in path)
    matching = [rule for rule in table.rules if rule.matches(name)]
    assert len(matching) == 1, (name, [r.pattern for r in matching])
    assert len(matching[0].axes) == leaf.ndim, name  # a logical axis per dimension


@pytest.mark.parametrize("family,fields", FAMILIES)
def test_the_matrices_are_the_kernels_the_old_rules_named(family, fields):
  # Before the table, decay, the compression selector and quantize_params each took the
  # leaves named "kernel" with two or more dimensions; for every family they agree.
  spec = models.make_spec(family, **fields)
  params = _params(spec)
  old = jax.tree_util.tree_map_with_path(
      lambda path, leaf: path[-1].key == "kernel" and leaf.ndim >= 2, params)
  assert jax.tree.leaves(spec.param_table.matrices(params)) == jax.tree.leaves(old)


def test_a_parameter_no_rule_names_is_an_error_naming_it():
  table = TransformerSpec.param_table
  with pytest.raises(ValueError, match="'block_0/adapter/kernel' matches no rule"):
    table.role("block_0/adapter/kernel")
  ambiguous = params_lib.ParamTable((params_lib.Param("a/kernel", "hidden"),
                                     params_lib.Param(r"\w/kernel", "input")))
  with pytest.raises(ValueError, match="matches 2 rules"):
    ambiguous.role("a/kernel")


def test_the_generic_table_takes_every_kernel():
  tree = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}, "scale": jnp.ones(2)}
  assert params_lib.GENERIC.matrices(tree) == {"dense": {"kernel": True, "bias": False},
                                               "scale": False}


class HeadAsTable(TransformerSpec):
  """A transformer whose table calls the head an embedding: nothing may treat it as a
  weight matrix any more."""
  param_table = params_lib.ParamTable(tuple(
      params_lib.Param(r.pattern, "embedding" if r.pattern == "head/kernel" else r.role, r.axes)
      for r in TransformerSpec.param_table.rules))


def test_decay_pruning_and_quantization_all_follow_the_table():
  spec = HeadAsTable(width=16, depth=1, num_heads=2, context_length=8)
  params = jax.jit(spec.make_module().init)(jax.random.key(0), spec.dummy_inputs(2))["params"]
  table = spec.param_table
  # Weight decay: one AdamW step on zero gradients moves only decayed weights.
  train = config_lib.resolve(tiny_config(learning_rate=0.1, weight_decay=0.5, warmup_steps=0,
                                         clip_norm=0.0)).train
  tx = make_optimizer(train, model=spec)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  moved = jax.tree.map(lambda u: bool(jnp.any(u != 0)), updates)
  assert moved == table.matrices(params)
  assert not moved["head"]["kernel"] and moved["block_0"]["mlp"]["up"]["kernel"]
  # Pruning's default selection.
  pruned = compress.make_pass("prune", sparsity=0.5, when="one_shot",
                              table=table).after_training(params)
  assert np.count_nonzero(pruned["head"]["kernel"]) == params["head"]["kernel"].size
  assert np.count_nonzero(pruned["block_0"]["mlp"]["up"]["kernel"]) < params[
      "block_0"]["mlp"]["up"]["kernel"].size
  # Post-training quantization: stored weights and the layers run on integers.
  quantized = compress.make_pass("ptq", table=table).after_training(params)
  assert not isinstance(quantized["head"]["kernel"], compress.QuantizedArray)
  assert isinstance(quantized["block_0"]["mlp"]["up"]["kernel"], compress.QuantizedArray)
  intercepted = []

  def spy(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
      intercepted.append(context.module.name)
    return next_fun(*args, **kwargs)

  apply = compress.make_pass("qat", table=table).wrap_apply(
      lambda p, x: spec.make_module().apply({"params": p}, x), training=True)
  with nn.intercept_methods(spy):
    apply(params, spec.dummy_inputs(2))
  assert intercepted.count("head") == 1  # the float layer ran once ...
  assert intercepted.count("up") == 2  # ... where a quantized one runs again, in fake-quant


def test_config_gives_compression_the_family_table():
  c = tiny_config()
  c.compress.passes = ("prune", "qat")
  run = config_lib.resolve(c)
  assert {p.table for p in run.compress.passes} == {TransformerSpec.param_table}


def test_learning_rate_multipliers_and_n_come_from_roles():
  spec = models.make_spec("mlp", width=32, depth=2, input_shape=(4, 4, 1),
                          parametrization="mup", mup_base_width=8)
  params = _params(spec)
  assert _names(params, spec.learning_rate_multipliers(params)) == {
      "head/bias": 1.0, "head/kernel": 0.25, "hidden_0/bias": 1.0, "hidden_0/kernel": 1.0,
      "hidden_1/bias": 1.0, "hidden_1/kernel": 0.25}
  lm = models.make_spec("transformer", width=16, depth=1, num_heads=2, context_length=8)
  mask = _names(_params(lm), lm.non_embedding_mask(_params(lm)))
  assert not mask["token_embedding/embedding"] and not mask["head/kernel"]
  assert mask["final_norm/scale"] and mask["up/kernel"]
