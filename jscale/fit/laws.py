"""Scaling laws as pure functions of (parameters, log covariates) -> log loss.

Every law returns log L_hat so the fitter can score log residuals directly.
Letters: N non-embedding (for sparse models: non-zero) parameters, D training
tokens, C training FLOPs, S sparsity (its covariate is log(1 - S), the log
density), P post-training precision in bits, T the teacher's loss (for a
distilled student), S1 and S2 the learning-rate areas of the annealing law,
L loss, E irreducible loss. ``theta`` is the law's
parameter vector in the order of its registry entry; ``log_x`` maps covariate
names to arrays of natural logs (``registry.log_covariate``).

Each law is written in terms of ``coef - exponent * log X`` (or
``log X_c - log X``), so subtracting a constant from ``log X`` and adding the
matching amount to the coefficient leaves the prediction unchanged; the
optimizer uses that to centre the covariates (see ``registry.Law.shift``).
"""

import functools
from typing import Mapping

import jax
import jax.numpy as jnp

Array = jax.Array


def _logsumexp(*terms: Array) -> Array:
  """log(sum(exp(terms))) for a few same-shaped arrays, stable, cheap to differentiate."""
  top = jax.lax.stop_gradient(functools.reduce(jnp.maximum, terms))
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


def sparsity(theta: Array, log_r: Array, log_n: Array, log_d: Array) -> Array:
  """log of Frantar et al.'s L = (a (1 - S)^b + c) N^-d + e D^-f + g.

  theta = (log a, b, log c, d, log e, f, log g); log_r = log(1 - S); N counts
  non-zero parameters.
  """
  log_a, b, log_c, d, log_e, f, log_g = (theta[i] for i in range(7))
  size_term = _logsumexp(log_a + b * log_r, jnp.broadcast_to(log_c, log_r.shape)) - d * log_n
  return _logsumexp(size_term, log_e - f * log_d, jnp.broadcast_to(log_g, log_n.shape))


def sparsity_n(theta: Array, log_r: Array, log_n: Array) -> Array:
  """log of L = (a (1 - S)^b + c) N^-d + g: the sparsity law at fixed D (e D^-f folded into g).

  theta = (log a, b, log c, d, log g).
  """
  log_a, b, log_c, d, log_g = (theta[i] for i in range(5))
  size_term = _logsumexp(log_a + b * log_r, jnp.broadcast_to(log_c, log_r.shape)) - d * log_n
  return _logsumexp(size_term, jnp.broadcast_to(log_g, log_n.shape))


def precision(theta: Array, log_n: Array, log_d: Array, log_p: Array) -> Array:
  """log of Kumar et al.'s L = E + A N^-alpha + B D^-beta + delta_PTQ,

  delta_PTQ = C_T D^gamma_D / N^gamma_N * exp(-P / gamma_post), P the bits after
  post-training quantization. theta = (a, b, e, alpha, beta, log C_T, gamma_D,
  gamma_N, log gamma_post).
  """
  a, b, e, alpha, beta, log_ct, gamma_d, gamma_n, log_gamma_post = (theta[i] for i in range(9))
  degradation = log_ct + gamma_d * log_d - gamma_n * log_n - jnp.exp(log_p - log_gamma_post)
  return _logsumexp(a - alpha * log_n, b - beta * log_d, jnp.broadcast_to(e, log_n.shape),
                    degradation)


def distillation(theta: Array, log_t: Array, log_n: Array, log_d: Array) -> Array:
  """log of a distilled student's L_S = k L_T + L_T^-c0 (A N^-alpha + B D^-beta).

  The student approaches k times its teacher's loss T as its size N and its
  distillation tokens D grow; a weaker teacher (larger T) slows the approach
  when c0 > 0. This is Busbridge et al.'s (2025) form without the
  capacity-gap factor. theta = (log k, c0, a, b, alpha, beta).
  """
  log_k, c0, a, b, alpha, beta = (theta[i] for i in range(6))
  learning = _logsumexp(a - alpha * log_n, b - beta * log_d) - c0 * log_t
  return _logsumexp(log_k + log_t, learning)


def annealing(theta: Array, log_s1: Array, log_s2: Array) -> Array:
  """log of Tissue et al.'s (2024) L(s) = L0 + A S1^-alpha - C S2 for a learning-rate schedule.

  S1 is the sum of the learning rates up to step s and S2 the annealing momentum
  (``annealing.areas``); S2 is 0 (log -inf) until the schedule first decays.
  theta = (log L0, log A, alpha, log C). Where C S2 reaches L0 + A S1^-alpha the
  prediction is not positive and its log is NaN (the objective is then +inf).
  """
  log_l0, log_a, alpha, log_c = theta[0], theta[1], theta[2], theta[3]
  gain = _logsumexp(jnp.broadcast_to(log_l0, log_s1.shape), log_a - alpha * log_s1)
  return gain + jnp.log1p(-jnp.exp(log_c + log_s2 - gain))


def covariates(fn, *names: str):
  """Adapts a law of positional log covariates to the ``(theta, log_x mapping)`` signature."""

  def law(theta: Array, log_x: Mapping[str, Array]) -> Array:
    return fn(theta, *(log_x[name] for name in names))

  return law
