"""Optax optimizer and learning-rate schedule of a run.

AdamW with decoupled weight decay on kernels only (norm scales, biases and embeddings
are not decayed: decaying them hurts small models and is the common convention),
warm-up followed by cosine, linear or constant, and optional global-norm clipping.
"""

import jax
import optax

from jscale.train.spec import TrainSpec


def learning_rate_schedule(spec: TrainSpec) -> optax.Schedule:
  """Linear warm-up to the peak, then decay to ``final_lr_fraction`` of it at the end."""
  peak, floor = spec.learning_rate, spec.learning_rate * spec.final_lr_fraction
  decay_steps = max(spec.steps - spec.warmup_steps, 1)
  if spec.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=spec.final_lr_fraction)
  elif spec.schedule == "linear":
    decay = optax.linear_schedule(peak, floor, decay_steps)
  else:
    decay = optax.constant_schedule(peak)
  if spec.warmup_steps == 0:
    return decay
  warmup = optax.linear_schedule(0.0, peak, spec.warmup_steps)
  return optax.join_schedules([warmup, decay], [spec.warmup_steps])


def decay_mask(params):
  """True for leaves that take weight decay: matrices and conv kernels named 'kernel'."""

  def is_kernel(path, leaf):
    return getattr(path[-1], "key", None) == "kernel" and leaf.ndim >= 2

  return jax.tree_util.tree_map_with_path(is_kernel, params)


def make_optimizer(spec: TrainSpec, learning_rate: optax.Schedule | None = None,
                   weight_decay=None) -> optax.GradientTransformation:
  """AdamW of ``spec``; ``learning_rate`` (a schedule) and ``weight_decay`` override the
  spec's, which is how model-batched training passes per-run (traced) values."""
  adamw = optax.adamw(learning_rate or learning_rate_schedule(spec), b1=spec.b1, b2=spec.b2,
                      eps=spec.eps,
                      weight_decay=spec.weight_decay if weight_decay is None else weight_decay,
                      mask=decay_mask)
  if spec.clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(spec.clip_norm), adamw)
  return adamw


def cooldown_start(spec: TrainSpec) -> int:
  """The step where a wsd schedule leaves its constant phase: a branch point."""
  return spec.steps - round(spec.cooldown_fraction * spec.steps)
