"""The optimizer: schedule values derived by hand at chosen steps, and per-parameter
learning-rate multipliers (muP) against their table."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from jscale import models
from jscale.train import config as config_lib
from jscale.train.optim import cooldown_start, learning_rate_schedule, make_optimizer


def _train_spec(**train):
  return config_lib.resolve(tiny_config(**train)).train


def _rates(at_steps, train: dict) -> list[float]:
  schedule = learning_rate_schedule(_train_spec(**train))
  return [float(schedule(step)) for step in at_steps]


# Each case: config overrides, then {step: learning rate} worked out by hand.
SCHEDULE_CASES = {
    # Warm-up 4 steps to 0.8, then cosine over 8 steps to 0.25 * 0.8 = 0.2:
    # lr(4 + t) = 0.2 + 0.6 * (1 + cos(pi t / 8)) / 2.
    "cosine": (dict(schedule="cosine", steps=12, warmup_steps=4, learning_rate=0.8,
                    final_lr_fraction=0.25),
               {0: 0.0, 1: 0.2, 3: 0.6, 4: 0.8, 6: 0.2 + 0.3 * (1 + math.sqrt(0.5)),
                8: 0.5, 12: 0.2, 15: 0.2}),
    "cosine_no_warmup": (dict(schedule="cosine", steps=10, warmup_steps=0,
                              learning_rate=1.0, final_lr_fraction=0.0),
                         {0: 1.0, 5: 0.5, 10: 0.0}),
    # Linear from 0.8 at step 4 to 0.2 at step 12: 0.075 less per step.
    "linear": (dict(schedule="linear", steps=12, warmup_steps=4, learning_rate=0.8,
                    final_lr_fraction=0.25),
               {2: 0.4, 4: 0.8, 8: 0.5, 10: 0.35, 12: 0.2, 20: 0.2}),
    "constant": (dict(schedule="constant", steps=12, warmup_steps=4, learning_rate=0.8),
                 {0: 0.0, 2: 0.4, 4: 0.8, 12: 0.8}),
    "constant_no_warmup": (dict(schedule="constant", steps=12, warmup_steps=0,
                                learning_rate=0.8), {0: 0.8, 11: 0.8}),
    # 20 steps, cooldown the last 25% = 5 steps (15-20), 1.0 -> 0.1: 0.18 less per step.
    "wsd_linear": (dict(schedule="wsd", steps=20, warmup_steps=2, learning_rate=1.0,
                        cooldown_fraction=0.25, cooldown_shape="linear",
                        final_lr_fraction=0.1),
                   {1: 0.5, 2: 1.0, 14: 1.0, 15: 1.0, 16: 0.82, 18: 0.46, 20: 0.1,
                    25: 0.1}),
    # No warm-up, cooldown 16-20 from 2.0 to 0.5: lr = 0.5 + 1.5 (1 - sqrt((t - 16) / 4)).
    "wsd_1_sqrt": (dict(schedule="wsd", steps=20, warmup_steps=0, learning_rate=2.0,
                        cooldown_fraction=0.2, cooldown_shape="1-sqrt",
                        final_lr_fraction=0.25),
                   {0: 2.0, 16: 2.0, 17: 1.25, 18: 0.5 + 1.5 * (1 - math.sqrt(0.5)),
                    19: 0.5 + 1.5 * (1 - math.sqrt(0.75)), 20: 0.5}),
    # The cooldown starts where the warm-up ends: no stable phase at all.
    "wsd_cooldown_at_warmup_end": (dict(schedule="wsd", steps=10, warmup_steps=4,
                                        learning_rate=1.0, cooldown_fraction=0.6,
                                        cooldown_shape="linear", final_lr_fraction=0.0),
                                   {2: 0.5, 4: 1.0, 7: 0.5, 10: 0.0}),
    # No cooldown: the peak to the end.
    "wsd_no_cooldown": (dict(schedule="wsd", steps=10, warmup_steps=2, learning_rate=1.0,
                             cooldown_fraction=0.0), {1: 0.5, 2: 1.0, 10: 1.0}),
}


@pytest.mark.parametrize("name", SCHEDULE_CASES)
def test_schedule_values_by_hand(name):
  train, expected = SCHEDULE_CASES[name]
  assert _rates(expected, train) == pytest.approx(list(expected.values()), abs=1e-6)


def test_wsd_before_its_cooldown_is_the_constant_schedule_bit_for_bit():
  # What lets a constant-rate trunk stand in for the first steps of every wsd branch.
  wsd = dict(steps=40, warmup_steps=5, schedule="wsd", cooldown_fraction=0.5)
  constant = dict(steps=40, warmup_steps=5, schedule="constant")
  assert _rates(range(21), wsd) == _rates(range(21), constant)


def test_cooldown_start_is_the_last_constant_step():
  assert cooldown_start(_train_spec(schedule="wsd", steps=20, warmup_steps=2,
                                    cooldown_fraction=0.25)) == 15


@pytest.mark.parametrize("key,value,needle", [
    ("schedule", "step", "train.schedule must be one of"),
    ("cooldown_fraction", -0.1, r"train.cooldown_fraction must be a number in \[0, 1\]"),
    ("cooldown_fraction", 0.95, "would start inside the warm-up"),
    ("cooldown_shape", "cosine", "train.cooldown_shape must be one of"),
])
def test_bad_schedule_keys_are_named(key, value, needle):
  with pytest.raises(ValueError, match=needle):
    _train_spec(**{"schedule": "wsd", "steps": 20, "warmup_steps": 2, key: value})


def _params(spec):
  return jax.eval_shape(spec.make_module().init, jax.random.key(0),
                        spec.dummy_inputs(1))["params"]


def _by_path(tree) -> dict[str, float]:
  return {jax.tree_util.keystr(path): value
          for path, value in jax.tree_util.tree_leaves_with_path(tree)}


def test_transformer_multipliers_follow_the_table():
  spec = models.make_spec("transformer", width=128, depth=1, num_heads=2, context_length=8,
                          positions="learned", parametrization="mup", mup_base_width=32)
  multipliers = _by_path(spec.learning_rate_multipliers(_params(spec)))
  hidden = [path for path, m in multipliers.items() if m != 1.0]
  assert sorted(hidden) == sorted(
      [f"['block_0']['{part}']['kernel']" for part in
       ("attention']['qkv", "attention']['out", "mlp']['up", "mlp']['down")]
      + ["['head']['kernel']"])
  assert {multipliers[path] for path in hidden} == {0.25}
  assert multipliers["['token_embedding']['embedding']"] == 1.0
  assert multipliers["['position_embedding']"] == 1.0
  assert multipliers["['block_0']['attention_norm']['scale']"] == 1.0


def test_mlp_multipliers_follow_the_table():
  spec = models.make_spec("mlp", width=256, depth=3, input_shape=(8, 8, 1),
                          parametrization="mup", mup_base_width=64)
  multipliers = _by_path(spec.learning_rate_multipliers(_params(spec)))
  assert multipliers == {
      "['head']['bias']": 1.0, "['head']['kernel']": 0.25,
      "['hidden_0']['bias']": 1.0, "['hidden_0']['kernel']": 1.0,  # fan-in fixed
      "['hidden_1']['bias']": 1.0, "['hidden_1']['kernel']": 0.25,
      "['hidden_2']['bias']": 1.0, "['hidden_2']['kernel']": 0.25}


@pytest.mark.parametrize("family,fields", [
    ("transformer", dict(width=128, context_length=8)),
    ("mlp", dict(width=128)),
    ("cnn", dict(width=16, input_shape=(8, 8, 1))),
])
def test_standard_parametrization_multipliers_are_all_one(family, fields):
  spec = models.make_spec(family, **fields)
  assert set(jax.tree.leaves(spec.learning_rate_multipliers(_params(spec)))) == {1.0}


def test_first_adam_step_moves_each_parameter_by_rate_times_multiplier():
  # Adam's first bias-corrected update is g / |g| per coordinate, so without decay and
  # clipping every parameter moves by exactly lr * multiplier.
  train = _train_spec(schedule="constant", warmup_steps=0, learning_rate=0.01,
                      weight_decay=0.0, clip_norm=0.0)
  spec = models.make_spec("mlp", width=128, depth=2, input_shape=(4, 4, 1),
                          parametrization="mup", mup_base_width=32)
  params = jax.tree.map(jnp.zeros_like, _params(spec))
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.5), params)
  tx = make_optimizer(train, model=spec)
  updates, _ = tx.update(grads, tx.init(params), params)
  expected = jax.tree.map(lambda p, m: jnp.full(p.shape, -0.01 * m), params,
                          spec.learning_rate_multipliers(params))
  jax.tree.map(lambda u, e: np.testing.assert_allclose(u, e, rtol=1e-5), updates, expected)


def test_multipliers_keep_the_optimizer_state_layout_and_sp_bit_exact():
  train = _train_spec()
  fields = dict(width=64, depth=1, num_heads=2, context_length=8)
  sp = models.make_spec("transformer", **fields)
  mup = models.make_spec("transformer", parametrization="mup", mup_base_width=16, **fields)
  params = jax.jit(sp.make_module().init)(jax.random.key(0), sp.dummy_inputs(1))["params"]
  grads = jax.tree.map(lambda p: jnp.cos(p) * 0.1, params)
  plain = make_optimizer(train)
  states = [tx.init(params) for tx in (plain, make_optimizer(train, model=mup))]
  assert jax.tree.structure(states[0]) == jax.tree.structure(states[1])
  reference, _ = plain.update(grads, states[0], params)
  with_sp, _ = make_optimizer(train, model=sp).update(grads, states[0], params)
  jax.tree.map(np.testing.assert_array_equal, with_sp, reference)


def test_mup_at_its_base_width_is_the_standard_parametrization():
  fields = dict(width=32, depth=2, num_heads=2, context_length=8)
  sp = models.make_spec("transformer", **fields)
  mup = models.make_spec("transformer", parametrization="mup", mup_base_width=32, **fields)
  tokens = jnp.arange(16, dtype=jnp.int32).reshape(2, 8)
  outputs = []
  for spec in (sp, mup):
    module = spec.make_module()
    params = jax.jit(module.init)(jax.random.key(0), tokens)
    outputs.append(jax.jit(module.apply)(params, tokens))
    assert set(jax.tree.leaves(spec.learning_rate_multipliers(params))) == {1.0}
  np.testing.assert_array_equal(outputs[0], outputs[1])


def test_mup_head_init_and_attention_scale():
  base = dict(width=256, depth=1, num_heads=4, context_length=8)
  sp = models.make_spec("transformer", **base)
  mup = models.make_spec("transformer", parametrization="mup", mup_base_width=64, **base)
  fixed = models.make_spec("transformer", parametrization="mup", mup_base_width=64,
                           **dict(base, head_dim=64))
  # K = 64 in all three; with 4 heads the base model had K0 = 16: sqrt(16) / 64.
  assert sp.attention_scale == pytest.approx(1 / 8)
  assert mup.attention_scale == pytest.approx(1 / 16)
  assert fixed.attention_scale == pytest.approx(1 / 8)
  heads = []
  for spec in (sp, mup):
    params = jax.jit(spec.make_module().init)(jax.random.key(0), spec.dummy_inputs(1))
    heads.append(float(params["params"]["head"]["kernel"].std()))
  assert heads[0] == pytest.approx(0.1 / 16, rel=0.02)
  assert heads[1] == pytest.approx(heads[0] / 2, rel=0.02)  # sqrt(64 / 256)
