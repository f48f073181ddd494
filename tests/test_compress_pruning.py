"""Magnitude pruning: schedule, exact counts, masks that survive training and checkpoints."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jscale import compress
from jscale.compress import pruning
from jscale.train.checkpoint import Checkpointer
from jscale.train.spec import CheckpointSpec


class TinyLM(nn.Module):
  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(32, 16, name="embed")(tokens)
    x = nn.LayerNorm(name="norm")(x)
    x = nn.gelu(nn.Dense(48, name="up")(x))
    return nn.Dense(32, name="head")(x)


def tiny():
  module = TinyLM()
  tokens = jax.random.randint(jax.random.key(0), (8, 6), 0, 32)
  return module, module.init(jax.random.key(1), tokens)["params"], tokens


def test_schedule_matches_jaxpruner_example():
  # update every 5, start 0, end 20, target 0.5: jaxpruner gives 0.4375 at step 9.
  assert float(pruning.polynomial_sparsity(9, 0.5, 0, 20)) == pytest.approx(0.4375)


def test_schedule_zero_before_start_target_after_end_and_traced():
  at = jax.jit(lambda s: pruning.polynomial_sparsity(s, 0.8, 10, 30))
  assert float(at(0)) == 0.0 and float(at(9)) == 0.0
  assert float(at(29)) == pytest.approx(0.8) and float(at(1000)) == pytest.approx(0.8)
  values = [float(at(s)) for s in range(10, 30)]
  assert all(a < b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.75])
def test_layer_masks_keep_exact_counts_of_kernels_only(sparsity):
  _, params, _ = tiny()
  pruned = compress.make_pass("prune", sparsity=sparsity, when="one_shot").after_training(params)
  for name in ("up", "head"):
    leaf = pruned[name]["kernel"]
    assert int(jnp.count_nonzero(leaf)) == round(leaf.size * (1 - sparsity))
    kept = jnp.abs(params[name]["kernel"])[leaf != 0]
    dropped = jnp.abs(params[name]["kernel"])[leaf == 0]
    assert float(jnp.min(kept)) >= float(jnp.max(dropped))  # magnitude order
  for name, leaf in (("embed", "embedding"), ("norm", "scale"), ("up", "bias")):
    np.testing.assert_array_equal(pruned[name][leaf], params[name][leaf])


def test_global_scope_counts_all_selected_weights_together():
  _, params, _ = tiny()
  p = compress.make_pass("prune", sparsity=0.6, scope="global", when="one_shot")
  pruned = p.after_training(params)
  size = params["up"]["kernel"].size + params["head"]["kernel"].size
  nonzero = sum(int(jnp.count_nonzero(pruned[n]["kernel"])) for n in ("up", "head"))
  assert nonzero == round(size * 0.4)
  assert p.report(pruned)["prunable_sparsity"] == pytest.approx(1 - nonzero / size)


def test_n_m_keeps_n_largest_of_each_group_of_m():
  _, params, _ = tiny()
  pruned = compress.make_pass("prune", structure="n:m", n=2, m=4,
                              when="one_shot").after_training(params)
  groups = pruned["up"]["kernel"].T.reshape(48, -1, 4)
  np.testing.assert_array_equal(jnp.count_nonzero(groups, axis=-1), 2)


def test_regex_selects_paths():
  _, params, _ = tiny()
  pruned = compress.make_pass("prune", sparsity=0.5, include="^up/",
                              when="one_shot").after_training(params)
  assert int(jnp.count_nonzero(pruned["up"]["kernel"])) == pruned["up"]["kernel"].size // 2
  np.testing.assert_array_equal(pruned["head"]["kernel"], params["head"]["kernel"])


def make_trainer(p, module, tokens):
  """Jitted (params, opt_state, count) -> (params, opt_state): the loop's hook order."""
  tx = p.wrap_optimizer(optax.adamw(1e-2, weight_decay=0.1))
  apply_fn = p.wrap_apply(lambda q, x: module.apply({"params": q}, x), training=True)
  loss_fn = p.wrap_loss(lambda logits, batch: jnp.mean(
      optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])))
  batch = {"inputs": tokens, "targets": jnp.roll(tokens, -1, axis=1)}

  @jax.jit
  def step(params, opt_state, count):
    grads = jax.grad(lambda q: loss_fn(apply_fn(q, batch["inputs"]), batch))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return p.post_update(optax.apply_updates(params, updates), opt_state, count), opt_state

  return tx, step


def test_gradual_pruning_reaches_target_and_zeros_survive_training_and_checkpoint(tmp_path):
  module, params, tokens = tiny()
  p = compress.compose([compress.make_pass("prune", sparsity=0.75, start_step=0,
                                           end_step=20, update_every=5)])
  tx, step = make_trainer(p, module, tokens)
  opt_state = tx.init(params)
  for count in range(21):  # the last mask update is at count 20
    params, opt_state = step(params, opt_state, count)
  zeros = {n: np.asarray(params[n]["kernel"]) == 0 for n in ("up", "head")}
  for z in zeros.values():
    assert (~z).sum() == round(z.size * 0.25)

  before = params["up"]["kernel"]
  for count in range(21, 121):
    params, opt_state = step(params, opt_state, count)
  assert not np.allclose(params["up"]["kernel"], before)  # training went on
  for name, z in zeros.items():
    np.testing.assert_array_equal(np.asarray(params[name]["kernel"])[z], 0.0)
  size = sum(z.size for z in zeros.values())
  zero_count = sum(int(z.sum()) for z in zeros.values())
  assert p.report(params)["prunable_sparsity"] == zero_count / size
  assert p.report(params)["params_nonzero"] == sum(
      int(jnp.count_nonzero(x)) for x in jax.tree.leaves(params))

  state = {"params": params, "opt_state": opt_state}
  with Checkpointer(tmp_path, CheckpointSpec(every=1, keep=1, async_save=False)) as ckpt:
    ckpt.save(121, state, {"step": 121})
    ckpt.wait()
    restored, _ = ckpt.restore(121, jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state))
  jax.tree.map(np.testing.assert_array_equal, restored, state)
  params, opt_state = step(restored["params"], restored["opt_state"], 121)
  for name, z in zeros.items():
    np.testing.assert_array_equal(np.asarray(params[name]["kernel"])[z], 0.0)


@pytest.mark.parametrize("fields, message", [
    ({"sparsity": 1.0}, "compress.prune.sparsity must be in [0, 1), got 1.0"),
    ({"sparsity": -0.1}, "compress.prune.sparsity"),
    ({"structure": "n:m", "n": 4, "m": 4}, "compress.prune.n must satisfy 0 < n < m"),
    ({"include": "("}, "compress.prune.include must be a valid regex"),
    ({"scope": "row"}, "compress.prune.scope must be one of layer, global"),
])
def test_bad_fields_fail_with_one_line(fields, message):
  with pytest.raises(ValueError) as e:
    compress.make_pass("prune", **fields)
  assert message in str(e.value) and "\n" not in str(e.value)


def test_regex_matching_nothing_is_an_error():
  _, params, _ = tiny()
  with pytest.raises(ValueError, match="compress.prune.include matched no parameter"):
    compress.make_pass("prune", include="^nothing$", when="one_shot").after_training(params)
