"""Optax optimizer and learning-rate schedule of a run.

AdamW with decoupled weight decay on the weight matrices only (the model family's
parameter table says which; norm scales, biases and embeddings are not decayed:
decaying them hurts small models and is the common convention),
warm-up followed by cosine, linear, constant or warmup-stable-decay (wsd), and optional
global-norm clipping.

wsd holds the peak until its cooldown, the last ``cooldown_fraction`` of the steps, which
decays to the floor linearly or as 1 - sqrt (Hägele et al. 2024, "Scaling Laws and
Compute-Optimal Training Beyond Fixed Training Durations"). Before its cooldown a wsd run
is exactly a constant-rate run, which is what lets a sweep branch runs of every length
from one trunk.

Per-parameter learning rates (muP) come from the model spec's
``learning_rate_multipliers``: they scale each parameter's whole AdamW update, learning
rate times (Adam direction + weight decay), as the ``mup`` package's MuAdamW does by
scaling each parameter group's rate in PyTorch's AdamW.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jscale.models import ModelSpec
from jscale.models import params as params_lib
from jscale.train.spec import TrainSpec


def learning_rate_schedule(spec: TrainSpec) -> optax.Schedule:
  """Linear warm-up to the peak, then decay to ``final_lr_fraction`` of it at the end."""
  peak, floor = spec.learning_rate, spec.learning_rate * spec.final_lr_fraction
  decay_steps = max(spec.steps - spec.warmup_steps, 1)
  if spec.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=spec.final_lr_fraction)
  elif spec.schedule == "linear":
    decay = optax.linear_schedule(peak, floor, decay_steps)
  elif spec.schedule == "wsd":
    decay = _stable_then_cooldown(spec)
  else:
    decay = optax.constant_schedule(peak)
  if spec.warmup_steps == 0:
    return decay
  warmup = optax.linear_schedule(0.0, peak, spec.warmup_steps)
  return optax.join_schedules([warmup, decay], [spec.warmup_steps])


def _stable_then_cooldown(spec: TrainSpec) -> optax.Schedule:
  """wsd after its warm-up: the peak, then the cooldown to the floor over its last steps."""
  peak, floor = spec.learning_rate, spec.learning_rate * spec.final_lr_fraction
  stable = cooldown_start(spec) - spec.warmup_steps
  length = spec.steps - cooldown_start(spec)
  if length == 0:
    return optax.constant_schedule(peak)

  def cooldown(count):
    done = jnp.clip(count / length, 0.0, 1.0)
    shape = jnp.sqrt(done) if spec.cooldown_shape == "1-sqrt" else done
    return floor + (peak - floor) * (1.0 - shape)

  if stable == 0:
    return cooldown
  return optax.join_schedules([optax.constant_schedule(peak), cooldown], [stable])


def make_optimizer(spec: TrainSpec, learning_rate: optax.Schedule | None = None,
                   weight_decay=None, *,
                   model: ModelSpec | None = None) -> optax.GradientTransformation:
  """AdamW of ``spec``; ``learning_rate`` (a schedule) and ``weight_decay`` override the
  spec's, which is how model-batched training passes per-run (traced) values. With
  ``model``, weight decay takes its family's weight matrices and each parameter's update
  is scaled by ``model.learning_rate_multipliers`` (all 1 under the standard
  parametrization, which then changes nothing); without, the matrices are the leaves
  named "kernel" (``params.GENERIC``)."""
  table = params_lib.GENERIC if model is None else model.param_table
  adamw = optax.adamw(learning_rate or learning_rate_schedule(spec), b1=spec.b1, b2=spec.b2,
                      eps=spec.eps,
                      weight_decay=spec.weight_decay if weight_decay is None else weight_decay,
                      mask=table.matrices)
  if model is not None:
    adamw = scale_updates(adamw, model.learning_rate_multipliers)
  if spec.clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(spec.clip_norm), adamw)
  return adamw


def scale_updates(tx: optax.GradientTransformation,
                  multipliers: Callable[[Any], Any]) -> optax.GradientTransformation:
  """``tx`` with each leaf of its updates times ``multipliers(updates)`` (a pytree of
  Python floats with the updates' structure). The state is ``tx``'s own, so the
  optimizer state has one layout under every parametrization: checkpoints, batched
  stacking and compression wrappers see no difference. Multipliers of 1 add no op."""

  def update(updates, state, params=None):
    updates, state = tx.update(updates, state, params)
    scaled = jax.tree.map(lambda u, m: u if m == 1.0 else u * m, updates,
                          multipliers(updates))
    return scaled, state

  return optax.GradientTransformation(tx.init, update)


def cooldown_start(spec: TrainSpec) -> int:
  """The step where a wsd schedule leaves its constant phase: a branch point."""
  return spec.steps - round(spec.cooldown_fraction * spec.steps)
