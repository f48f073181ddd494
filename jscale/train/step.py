"""The jitted train and eval steps: pure functions of (state, batch).

Shapes: B = global batch, K = gradient-accumulation micro-batches, b = B / K.
Batches are ``{"inputs", "targets"}``; the model maps inputs to float32 logits whose
last axis is the class (or vocabulary) axis, so one loss serves LMs and classifiers.
"""

import dataclasses
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jscale import compress
from jscale.models import ModelSpec
from jscale.train.optim import learning_rate_schedule, make_optimizer
from jscale.train.sharding import Layout
from jscale.train.spec import RunSpec


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: updates applied so far
  params: Any
  opt_state: Any


def init_state(module, tx: optax.GradientTransformation, dummy_inputs, seed: int) -> TrainState:
  params = module.init(jax.random.key(seed), dummy_inputs)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def cross_entropy(logits, targets) -> tuple[jax.Array, jax.Array]:
  """Mean cross-entropy (nats) and accuracy over every target position."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32))
  return jnp.mean(losses), accuracy


def _micro_batches(batch: dict, k: int) -> dict:
  """[B, ...] -> [K, b, ...] taking every K-th row, so each micro-batch keeps the
  device sharding of the data axis (row r*K + i lives where row r*K lives)."""

  def split(x):
    x = x.reshape((x.shape[0] // k, k) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  return jax.tree.map(split, batch)


def _apply_fn(module):
  return lambda params, inputs: module.apply({"params": params}, inputs)


def train_step_fn(module, tx: optax.GradientTransformation, schedule: optax.Schedule,
                  grad_accum: int = 1,
                  compression: compress.Composed = compress.compose([])) -> Callable:
  """The un-jitted ``step(state, batch) -> (state, metrics)`` (vmap-able over runs).

  Every compression hook is applied (the identity when there is no compression), so a
  configured pass cannot be skipped: the forward (fake-quant), the objective
  (distillation) and the post-update transform (pruning masks). ``tx`` must already be
  wrapped by ``compression.wrap_optimizer``.
  """
  apply = compression.wrap_apply(_apply_fn(module), training=True)
  objective = compression.wrap_loss(lambda logits, b: cross_entropy(logits, b["targets"])[0])

  def loss_fn(params, batch):
    return objective(apply(params, batch["inputs"]), batch)

  def grads_and_loss(params, batch):
    if grad_accum == 1:
      loss, grads = jax.value_and_grad(loss_fn)(params, batch)
      return loss, grads

    def accumulate(carry, micro):
      loss, grads = jax.value_and_grad(loss_fn)(params, micro)
      return jax.tree.map(jnp.add, carry, (loss, grads)), None

    zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    (loss, grads), _ = jax.lax.scan(accumulate, zeros, _micro_batches(batch, grad_accum))
    return jax.tree.map(lambda x: x / grad_accum, (loss, grads))

  def step(state: TrainState, batch: dict):
    loss, grads = grads_and_loss(state.params, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = compression.post_update(optax.apply_updates(state.params, updates), opt_state,
                                     state.step)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
               "learning_rate": schedule(state.step)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


def abstract_state(built: "BuiltRun", layout: Layout, seed: int = 0) -> TrainState:
  """One run's state as ShapeDtypeStructs laid out on ``layout`` by its model's parameter
  table: the restore target and the jit shardings of its state."""
  return layout.abstract(jax.eval_shape(lambda: built.init(seed)), built.model.param_table)


def fresh_state(built: "BuiltRun", layout: Layout, seed: int) -> TrainState:
  """A fresh state made in place on ``layout`` (each device draws only its part: random
  bits do not depend on the sharding)."""
  shardings = jax.tree.map(lambda x: x.sharding, abstract_state(built, layout, seed))
  return jax.jit(lambda: built.init(seed), out_shardings=shardings)()


def jit_train_step(built: "BuiltRun", layout: Layout) -> tuple[Callable, tuple]:
  """``(step, frozen)``: ``built.step`` jitted on ``layout`` as ``step(state, batch,
  frozen) -> (state, metrics)``, and the compression's frozen arrays (a distillation
  teacher's parameters), which enter the step as arguments laid out as they were
  restored, never as constants."""
  state = jax.tree.map(lambda x: x.sharding, abstract_state(built, layout))
  frozen = built.compression.frozen
  step = jax.jit(lambda state, batch, frozen: built.step_with(frozen)(state, batch),
                 in_shardings=(state, layout.batch, jax.tree.map(lambda x: x.sharding, frozen)),
                 out_shardings=(state, layout.replicated), donate_argnums=0)
  return step, frozen


def make_train_step(built: "BuiltRun", layout: Layout) -> Callable:
  """``built.step`` jitted on ``layout``: ``step(state, batch) -> (state, metrics)``."""
  step, frozen = jit_train_step(built, layout)
  return lambda state, batch: step(state, batch, frozen)


def make_eval_step(module, layout: Layout,
                   compression: compress.Composed = compress.compose([])) -> Callable:
  """Returns jitted ``eval_step(params, batch) -> {"loss", "accuracy"}`` (batch means);
  params may be float or, after ``compression.after_training``, quantized. Parameters
  and batch stay where they lie (restored or trained on ``layout``, batches from
  ``layout.shard_batch``)."""
  apply = compression.wrap_apply(_apply_fn(module), training=False)

  def eval_step(params, batch):
    logits = apply(params, batch["inputs"])
    loss, accuracy = cross_entropy(logits, batch["targets"])
    return {"loss": loss, "accuracy": accuracy}

  return jax.jit(eval_step, out_shardings=layout.replicated)


@dataclasses.dataclass(frozen=True)
class BuiltRun:
  """What training, restoring and measuring a run need, built once from its spec."""
  model: ModelSpec
  module: nn.Module
  optimizer: optax.GradientTransformation  # already wrapped by the compression
  schedule: optax.Schedule
  compression: compress.Composed
  grad_accum: int
  init: Callable[[Any], TrainState]  # seed -> fresh state
  step: Callable  # un-jitted step(state, batch) -> (state, metrics)

  def step_with(self, frozen) -> Callable:
    """``step`` with the compression's frozen arrays replaced by ``frozen`` (the traced
    arguments of a jitted step)."""
    return train_step_fn(self.module, self.optimizer, self.schedule, self.grad_accum,
                         self.compression.with_frozen(frozen))


def build_run(run: RunSpec, compression: compress.Composed = compress.compose([]), *,
              schedule: optax.Schedule | None = None, weight_decay=None) -> BuiltRun:
  """The module, optimizer, initialiser and step of ``run``. ``schedule`` and
  ``weight_decay`` override the spec's: model-batched training passes per-run traced
  values through them."""
  module = run.model.make_module()
  schedule = schedule or learning_rate_schedule(run.train)
  tx = compression.wrap_optimizer(
      make_optimizer(run.train, learning_rate=schedule, weight_decay=weight_decay,
                     model=run.model))
  dummy = run.model.dummy_inputs(1)
  return BuiltRun(model=run.model, module=module, optimizer=tx, schedule=schedule,
                  compression=compression, grad_accum=run.train.grad_accum,
                  init=lambda seed: init_state(module, tx, dummy, seed),
                  step=train_step_fn(module, tx, schedule, run.train.grad_accum, compression))
