"""The fitting objective: Huber loss on log residuals, weighted and summed.

Weights are per-point multiplicities, so a bootstrap resample is the same
data with integer weights and every resample has the same array shapes.
"""

from typing import Mapping

import jax
import jax.numpy as jnp

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
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
  low = jnp.asarray([b[0] for b in law.bounds], theta.dtype)
  high = jnp.asarray([b[1] for b in law.bounds], theta.dtype)
  inside = jnp.all((theta >= low) & (theta <= high))
  return jnp.where(inside & jnp.isfinite(total), total, jnp.inf)
