"""Scaling laws as pure functions of (parameters, log covariates) -> log loss.

Every law returns log L_hat so the fitter can score log residuals directly.
Letters: N non-embedding parameters, D training tokens, C training FLOPs,
L loss, E irreducible loss. ``theta`` is the law's parameter vector in the
order of its registry entry; ``log_x`` maps covariate names ("N", "D", "C")
to arrays of natural logs.

Each law is written in terms of ``coef - exponent * log X`` (or
``log X_c - log X``), so subtracting a constant from ``log X`` and adding the
matching amount to the coefficient leaves the prediction unchanged; the
optimizer uses that to centre the covariates (see ``registry.Law.shift``).
"""

from typing import Mapping

import jax
import jax.numpy as jnp

Array = jax.Array


def _logsumexp(*terms: Array) -> Array:
  """log(sum(exp(terms))) for a few same-shaped arrays, stable, cheap to differentiate."""
  top = jax.lax.stop_gradient(
      jnp.maximum(terms[0], terms[1]) if len(terms) == 2 else
      jnp.maximum(jnp.maximum(terms[0], terms[1]), terms[2]))
  total = sum(jnp.exp(t - top) for t in terms)
  return top + jnp.log(total)


def power_law(theta: Array, log_x: Array) -> Array:
  """log of L = (X_c / X)^alpha; theta = (log X_c, alpha)."""
  log_xc, alpha = theta[0], theta[1]
  return alpha * (log_xc - log_x)


def power_law_irreducible(theta: Array, log_x: Array) -> Array:
  """log of L = E + (X_c / X)^alpha; theta = (log E, log X_c, alpha)."""
  log_e, log_xc, alpha = theta[0], theta[1], theta[2]
  return _logsumexp(alpha * (log_xc - log_x), jnp.broadcast_to(log_e, log_x.shape))


def kaplan_nd(theta: Array, log_n: Array, log_d: Array) -> Array:
  """log of Kaplan's L = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D.

  theta = (log N_c, log D_c, alpha_N, alpha_D).
  """
  log_nc, log_dc, alpha_n, alpha_d = theta[0], theta[1], theta[2], theta[3]
  return alpha_d * _logsumexp((alpha_n / alpha_d) * (log_nc - log_n), log_dc - log_d)


def chinchilla(theta: Array, log_n: Array, log_d: Array) -> Array:
  """log of Chinchilla's L = E + A / N^alpha + B / D^beta in LSE form.

  theta = (a, b, e, alpha, beta) with A = e^a, B = e^b, E = e^e.
  """
  a, b, e, alpha, beta = theta[0], theta[1], theta[2], theta[3], theta[4]
  return _logsumexp(a - alpha * log_n, b - beta * log_d, jnp.broadcast_to(e, log_n.shape))


def single_covariate(fn, covariate: str):
  """Adapts a one-variable law to the ``(theta, log_x mapping)`` signature."""

  def law(theta: Array, log_x: Mapping[str, Array]) -> Array:
    return fn(theta, log_x[covariate])

  return law


def two_covariates(fn):
  """Adapts an (N, D) law to the ``(theta, log_x mapping)`` signature."""

  def law(theta: Array, log_x: Mapping[str, Array]) -> Array:
    return fn(theta, log_x["N"], log_x["D"])

  return law
