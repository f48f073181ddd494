"""What compression is worth in parameters: effective-parameter multipliers from
fitted laws.

N_eff is the dense parameter count that a law says would reach the same loss:
for sparsity, (a + c) N_eff^-d = (a (1 - S)^b + c) N^-d; for post-training
quantization, E + A N_eff^-alpha + B D^-beta = L_hat(N, D, P); for any observed
loss (a quantized model's, a distilled student's), L_dense(N_eff, D) = L_observed,
solved by bisection in log N on any dense law that decreases in N.
"""

import jax
import numpy as np
from scipy import stats

from jscale.fit import registry

# Bisection brackets N_eff within e^+-_LOG_RANGE of N; 80 halvings leave a
# relative error far below anything a fit resolves.
_LOG_RANGE = 25.0
_BISECTIONS = 80


def sparsity_multipliers(params: dict[str, float], sparsities) -> dict[str, float]:
  """N_eff / N per sparsity level: ((a + c) / (a (1 - S)^b + c))^(1 / d), keyed by
  f"{S:g}"."""
  a, b, c, d = params["a"], params["b"], params["c"], params["d"]
  return {f"{s:g}": float(((a + c) / (a * (1 - s) ** b + c)) ** (1 / d))
          for s in np.unique(sparsities)}


def precision_multipliers(params: dict[str, float],
                          columns: dict[str, np.ndarray]) -> dict[str, float]:
  """Mean N_eff / N per precision P over the fitted points (precision law).

  N_eff solves E + A N_eff^-alpha + B D^-beta = L_hat(N, D, P): the dense model
  that loses as much as the quantized one.
  """
  n, d, p = columns["N"], columns["D"], columns["P"]
  degradation = (params["C_T"] * d ** params["gamma_D"] / n ** params["gamma_N"]
                 * np.exp(-p / params["gamma_post"]))
  size_term = params["A"] / n ** params["alpha"] + degradation
  n_eff = (params["A"] / size_term) ** (1 / params["alpha"])
  return {f"{bits:g}": float(np.mean(n_eff[p == bits] / n[p == bits])) for bits in np.unique(p)}


def effective_params(law: registry.Law, theta, loss: np.ndarray,
                     columns: dict[str, np.ndarray]) -> np.ndarray:
  """N_eff per row with L_law(N_eff, other covariates of the row) = loss.

  +inf where the loss is below what any N reaches within the bracket, 0 where
  it is above; the law must decrease in N.
  """
  loss = np.asarray(loss, np.float64)
  log_x = {c: registry.log_covariate(c, columns[c]) for c in law.covariates}
  lo, hi = log_x["N"] - _LOG_RANGE, log_x["N"] + _LOG_RANGE

  def predicted(log_n):
    with jax.enable_x64(True):
      log_loss = law.log_predict(np.asarray(theta, np.float64), dict(log_x, N=log_n))
      return np.exp(np.asarray(log_loss))

  out_of_reach_low, out_of_reach_high = loss < predicted(hi), loss > predicted(lo)
  for _ in range(_BISECTIONS):
    mid = 0.5 * (lo + hi)
    above = predicted(mid) > loss  # still too small a model
    lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
  n_eff = np.exp(0.5 * (lo + hi))
  return np.where(out_of_reach_low, np.inf, np.where(out_of_reach_high, 0.0, n_eff))


def mean_interval(values, level: float = 0.95) -> dict[str, float]:
  """Mean, sd and Student-t interval of the mean over the finite values."""
  values = np.asarray(values, np.float64)
  values = values[np.isfinite(values)]
  out = {"n": int(values.size), "mean": float(np.mean(values)) if values.size else float("nan")}
  if values.size < 2:
    return dict(out, sd=float("nan"), low=float("nan"), high=float("nan"))
  sd = float(np.std(values, ddof=1))
  half = stats.t.ppf(0.5 + level / 2, values.size - 1) * sd / np.sqrt(values.size)
  return dict(out, sd=sd, low=out["mean"] - half, high=out["mean"] + half)
