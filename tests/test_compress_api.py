"""The pass registry, composition and reports."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest

from jscale import compress


def test_registry_builds_every_pass_and_rejects_unknown_names_and_fields():
  assert set(compress.PASSES) == {"none", "prune", "ptq", "qat", "distill"}
  assert compress.make_pass("prune", sparsity=0.25).sparsity == 0.25
  with pytest.raises(ValueError, match="compress pass must be one of none, prune, ptq"):
    compress.make_pass("sparse")
  with pytest.raises(ValueError, match="compress.prune.sparsty is not a field"):
    compress.make_pass("prune", sparsty=0.5)


def test_every_pass_states_whether_compute_is_realised():
  assert not compress.make_pass("prune").realised
  assert compress.make_pass("ptq").realised
  assert not compress.make_pass("ptq", activation_bits=0).realised
  assert compress.make_pass("qat").realised
  for cls in compress.PASSES.values():
    assert "realised" in cls.__doc__ or "simulated" in cls.__doc__.lower(), cls


def test_compose_orders_hooks_and_validates():
  prune = compress.make_pass("prune", sparsity=0.5, when="one_shot")
  ptq = compress.make_pass("ptq")
  both = compress.compose([compress.make_pass("none"), prune, ptq])
  assert both.name == "prune+ptq" and both.realised
  params = {"dense": {"kernel": jax.random.normal(jax.random.key(0), (16, 8)),
                      "bias": jnp.ones((8,))}}
  out = both.after_training(params)
  kernel = out["dense"]["kernel"]
  assert isinstance(kernel, compress.QuantizedArray)
  assert int(jnp.count_nonzero(kernel.values)) == 64  # pruned zeros stay zero in int8
  report = both.report(out)
  assert report["params_total"] == 136 and report["params_nonzero"] == 72
  assert report["weight_bytes"] == 128 + 8 * 4 + 8 * 4
  assert report["prunable_sparsity"] == 0.5
  with pytest.raises(ValueError, match="must come last"):
    compress.compose([ptq, prune])
  with pytest.raises(ValueError, match="must be distinct"):
    compress.compose([prune, prune])


def test_identity_composition_changes_nothing():
  none = compress.compose([])
  tx = optax.sgd(0.1)
  params = {"w": jnp.ones((2, 2))}
  assert none.name == "none" and none.wrap_optimizer(tx) is tx
  assert none.post_update(params, None, 0) is params
  assert none.after_training(params) is params
  assert none.report(params)["params_nonzero"] == 4


def test_composed_prune_and_qat_train_in_one_jitted_step():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(4)(nn.relu(nn.Dense(32)(x)))

  net = Net()
  x = jax.random.normal(jax.random.key(0), (16, 8))
  y = jnp.arange(16) % 4
  params = net.init(jax.random.key(1), x)["params"]
  p = compress.compose([compress.make_pass("prune", sparsity=0.5, end_step=4, update_every=2),
                        compress.make_pass("qat")])
  tx = p.wrap_optimizer(optax.adam(1e-2))
  apply_fn = p.wrap_apply(lambda q, x: net.apply({"params": q}, x), training=True)
  loss_fn = p.wrap_loss(lambda logits, batch: jnp.mean(
      optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])))
  batch = {"inputs": x, "targets": y}

  @jax.jit
  def step(params, opt_state, count):
    loss, grads = jax.value_and_grad(lambda q: loss_fn(apply_fn(q, x), batch))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return p.post_update(optax.apply_updates(params, updates), opt_state, count), opt_state, loss

  opt_state = tx.init(params)
  losses = []
  for count in range(30):
    params, opt_state, loss = step(params, opt_state, count)
    losses.append(float(loss))
  assert losses[-1] < losses[0]
  final = p.after_training(params)
  # int8 rounding may zero a few more small weights; the report counts real zeros
  assert 0.5 <= p.report(final)["prunable_sparsity"] < 0.52
  evaluate = p.wrap_apply(lambda q, x: net.apply({"params": q}, x), training=False)
  assert jnp.isfinite(loss_fn(evaluate(final, x), batch))
