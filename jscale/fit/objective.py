"""The fitting objective: Huber loss on log residuals, weighted and summed.

Weights are per-point multiplicities, so a bootstrap resample is the same
data with integer weights and every resample has the same array shapes.
"""

from typing import Mapping

import jax
import jax.numpy as jnp

from jscale.errors import BadInput
from jscale.fit import registry

Array = jax.Array


def huber(residual: Array, delta: float) -> Array:
  """Huber's function: quadratic within +-delta, linear beyond, continuous slope."""
  magnitude = jnp.abs(residual)
  return jnp.where(magnitude <= delta, 0.5 * residual**2, delta * (magnitude - 0.5 * delta))


def objective(theta: Array, law: registry.Law, log_x: Mapping[str, Array], log_y: Array,
              weights: Array, delta: float, reduction: str = "sum") -> Array:
  """Weighted Huber loss of (log L_hat - log L); +inf outside the law's bounds.

  Args:
    theta: parameter vector (P,).
    law: the law family.
    log_x: covariate name -> log values (n,).
    log_y: log observed loss (n,).
    weights: per-point multiplicity (n,).
    delta: Huber threshold on log residuals.
    reduction: "sum" (the standard) or "mean" (divides by the total weight).
  """
  residual = law.log_predict(theta, log_x) - log_y
  total = jnp.sum(weights * huber(residual, delta))
  if reduction == "mean":
    total = total / jnp.sum(weights)
  elif reduction != "sum":
    raise BadInput(f"reduction must be 'sum' or 'mean', got {reduction!r}")
  low = jnp.asarray([b[0] for b in law.bounds], theta.dtype)
  high = jnp.asarray([b[1] for b in law.bounds], theta.dtype)
  inside = jnp.all((theta >= low) & (theta <= high))
  return jnp.where(inside & jnp.isfinite(total), total, jnp.inf)


def _inside_bounds(theta_SxP: Array, law: registry.Law) -> Array:
  low = jnp.asarray([b[0] for b in law.bounds], theta_SxP.dtype)
  high = jnp.asarray([b[1] for b in law.bounds], theta_SxP.dtype)
  return jnp.all((theta_SxP >= low[None, :]) & (theta_SxP <= high[None, :]), axis=-1)


def _chinchilla_value_and_grad(theta_SxP: Array, log_n: Array, log_d: Array, log_y: Array,
                               weights: Array, delta: float) -> tuple[Array, Array]:
  """Summed Huber loss of the Chinchilla law and its gradient, written out by hand.

  With p_k the softmax weights of the three log-sum-exp terms and
  u = w * clip(r, -delta, delta), the gradient is sum_n u p_k for the
  coefficients a, b, e and -sum_n u p_k log X for the exponents: two small
  matrix products against (1, -log X). One fused elementwise pass plus those
  products measured 4.3 ms for 4,500 starts x 240 points in float32 against
  21 ms for the autodiff gradient (2-core CPU).
  """
  a, b, e, alpha, beta = (theta_SxP[:, i:i + 1] for i in range(5))
  term_n = a - alpha * log_n[None, :]
  term_d = b - beta * log_d[None, :]
  term_e = jnp.broadcast_to(e, term_n.shape)
  top = jnp.maximum(jnp.maximum(term_n, term_d), term_e)
  exp_n, exp_d, exp_e = jnp.exp(term_n - top), jnp.exp(term_d - top), jnp.exp(term_e - top)
  total = exp_n + exp_d + exp_e
  residual = top + jnp.log(total) - log_y[None, :]
  value = jnp.sum(weights[None, :] * huber(residual, delta), axis=-1)
  scaled = weights[None, :] * jnp.clip(residual, -delta, delta) / total
  design_n = jnp.stack([jnp.ones_like(log_n), -log_n], axis=1)
  design_d = jnp.stack([jnp.ones_like(log_d), -log_d], axis=1)
  grad_n = (scaled * exp_n) @ design_n   # (S, 2): d/da, d/dalpha
  grad_d = (scaled * exp_d) @ design_d   # (S, 2): d/db, d/dbeta
  grad_e = jnp.sum(scaled * exp_e, axis=-1, keepdims=True)
  grad = jnp.concatenate([grad_n[:, :1], grad_d[:, :1], grad_e, grad_n[:, 1:], grad_d[:, 1:]],
                         axis=-1)
  return value, grad


def batched_value_and_grad(law: registry.Law, log_x: Mapping[str, Array], log_y: Array,
                           weights: Array, delta: float, reduction: str = "sum"):
  """``theta_SxP -> (objective (S,), gradient (S, P))`` of ``objective`` for S parameter rows.

  The Chinchilla law gets the hand-written gradient above (same value as
  ``objective`` to rounding, tested); every other law uses autodiff.
  Outside the bounds the value is +inf and the gradient 0.
  """
  if reduction not in ("sum", "mean"):
    raise BadInput(f"reduction must be 'sum' or 'mean', got {reduction!r}")
  if law.name != "chinchilla":
    return jax.vmap(jax.value_and_grad(
        lambda theta: objective(theta, law, log_x, log_y, weights, delta, reduction)))

  def value_and_grad(theta_SxP):
    value, grad = _chinchilla_value_and_grad(theta_SxP, log_x["N"], log_x["D"], log_y, weights,
                                             delta)
    if reduction == "mean":
      total_weight = jnp.sum(weights)
      value, grad = value / total_weight, grad / total_weight
    ok = _inside_bounds(theta_SxP, law) & jnp.isfinite(value)
    return jnp.where(ok, value, jnp.inf), jnp.where(ok[:, None], grad, 0.0)

  return value_and_grad
