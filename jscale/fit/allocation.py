"""Compute-optimal allocation for Chinchilla's law under C = 6 N D.

Minimising L(N, C / (6N)) = E + A N^-alpha + B (6N/C)^beta over N gives
  N_opt = G (C/6)^a_share,  D_opt = G^-1 (C/6)^b_share,
  G = (alpha A / (beta B))^(1/(alpha+beta)),
  a_share = beta / (alpha+beta),  b_share = alpha / (alpha+beta).
``numerical_n_opt`` minimises the same function directly, as a check.
"""

import dataclasses

import numpy as np
from scipy import optimize as scipy_optimize

from jscale.errors import BadInput, FitError


@dataclasses.dataclass(frozen=True)
class Allocation:
  """Compute-optimal split of a FLOP budget."""
  compute: float
  n_opt: float
  d_opt: float
  tokens_per_param: float
  a_share: float
  b_share: float
  g: float

  def to_json(self) -> dict[str, float]:
    return dataclasses.asdict(self)


def chinchilla_allocation(params: dict[str, float], compute: float) -> Allocation:
  """Closed-form N_opt, D_opt at ``compute`` FLOPs for natural params E, A, B, alpha, beta."""
  if not compute > 0:
    raise BadInput(f"compute must be a positive number of FLOPs, got {compute}")
  alpha, beta, a_coef, b_coef = params["alpha"], params["beta"], params["A"], params["B"]
  if not (alpha > 0 and beta > 0):
    raise FitError(f"allocation needs positive exponents, got alpha={alpha}, beta={beta}")
  a_share, b_share = beta / (alpha + beta), alpha / (alpha + beta)
  g = (alpha * a_coef / (beta * b_coef)) ** (1.0 / (alpha + beta))
  n_opt = g * (compute / 6.0) ** a_share
  d_opt = (compute / 6.0) ** b_share / g
  return Allocation(compute=float(compute), n_opt=float(n_opt), d_opt=float(d_opt),
                    tokens_per_param=float(d_opt / n_opt), a_share=float(a_share),
                    b_share=float(b_share), g=float(g))


def chinchilla_loss(params: dict[str, float], n, d):
  """L(N, D) = E + A / N^alpha + B / D^beta in natural units."""
  return (params["E"] + params["A"] / np.power(n, params["alpha"])
          + params["B"] / np.power(d, params["beta"]))


def numerical_n_opt(params: dict[str, float], compute: float) -> float:
  """N minimising L(N, C/(6N)), found by a bounded scalar search in log N."""
  log_c6 = np.log(compute / 6.0)

  def loss(log_n):
    return chinchilla_loss(params, np.exp(log_n), np.exp(log_c6 - log_n))

  result = scipy_optimize.minimize_scalar(loss, bounds=(0.0, log_c6), method="bounded",
                                          options={"xatol": 1e-12})
  return float(np.exp(result.x))
