"""Hoffmann et al.'s Approach 2, IsoFLOP profiles (Approach 3 is the parametric fit).

Per FLOP budget C, fit a parabola of the final loss in log N and one in log D and
take their minima N* and D*; then fit N*(C) = A C^a and D*(C) = B C^b, least-squares
lines in log-log space.

The FLOP convention, stated once: Approach 2 never assumes how C relates to N and D
when the table says. N* comes from the runs' parameter counts and D* from the tokens
the runs actually trained, each from its own parabola. Only a table lacking one of the
two columns gets it from Hoffmann's C = 6ND (D* = C / (6 N*) for (C, N, loss) data such
as Chinchilla's, N* = C / (6 D*) for (C, D, loss) data such as Llama 3's); ``sources``
in the result says which. A table whose C follows a fuller per-token rule (one that
counts attention and embeddings is 1.25-2.9x 6N on small models) would have its D*
overstated by that factor through C / (6 N*): such a table should carry the tokens, so
that this route is never taken.
"""

import dataclasses

import numpy as np

from jscale.errors import FitError
from jscale.fit import bootstrap as bootstrap_lib

FROM_PARABOLA = {"N": "parabola in log N", "D": "parabola in log D"}
FROM_6ND = {"N": "C / (6 D*)", "D": "C / (6 N*)"}


@dataclasses.dataclass(frozen=True)
class PowerLaw:
  """y = coef * x^exponent."""
  coef: float
  exponent: float

  def __call__(self, x):
    return self.coef * np.power(x, self.exponent)


def fit_power_law(x: np.ndarray, y: np.ndarray) -> PowerLaw:
  """Least-squares line through (log x, log y)."""
  if len(x) < 2 or np.ptp(np.log(x)) == 0:
    raise FitError(f"a power law needs at least 2 distinct x values, got {len(np.unique(x))}")
  exponent, log_coef = np.polyfit(np.log(x), np.log(y), 1)
  return PowerLaw(float(np.exp(log_coef)), float(exponent))


def group_budgets(compute: np.ndarray, rtol: float = 1e-3) -> np.ndarray:
  """Integer budget label per row; budgets within ``rtol`` share a label."""
  order = np.argsort(compute)
  labels = np.empty(len(compute), int)
  label, anchor = -1, None
  for i in order:
    if anchor is None or compute[i] > anchor * (1 + rtol):
      label, anchor = label + 1, compute[i]
    labels[i] = label
  return labels


def _parabola_minimum(x: np.ndarray, loss: np.ndarray) -> float | None:
  """x at the minimum of a parabola of loss in log x; None without an interior minimum."""
  if np.unique(x).size < 3:
    return None
  curvature, slope, _ = np.polyfit(np.log(x), loss, 2)
  if curvature <= 0:
    return None  # the profile does not bracket the optimum
  return float(np.exp(-slope / (2 * curvature)))


def isoflop_minima(compute: np.ndarray, loss: np.ndarray, covariates: dict[str, np.ndarray]):
  """Budgets C and, per covariate ("N", "D"), its optimum at each budget.

  A budget counts when every covariate takes >= 3 values there and every profile is
  convex; returns ``(C [B], {name: optimum [B]})``.
  """
  labels = group_budgets(compute)
  budgets, minima = [], {name: [] for name in covariates}
  for label in np.unique(labels):
    rows = labels == label
    found = {name: _parabola_minimum(x[rows], loss[rows]) for name, x in covariates.items()}
    if None in found.values():
      continue
    budgets.append(np.mean(compute[rows]))
    for name, value in found.items():
      minima[name].append(value)
  if len(budgets) < 2:
    raise FitError(f"isoflop needs at least 2 budgets with >= 3 model sizes and a convex "
                     f"profile, got {len(budgets)}")
  return np.asarray(budgets), {name: np.asarray(v) for name, v in minima.items()}


def optima(compute: np.ndarray, loss: np.ndarray, n: np.ndarray | None, d: np.ndarray | None):
  """``(C, N*, D*, sources)`` per budget; a missing column's optimum from C = 6ND."""
  covariates = {name: x for name, x in (("N", n), ("D", d)) if x is not None}
  if not covariates:
    raise FitError("isoflop needs a parameter column N or a token column D, got neither")
  budgets, found = isoflop_minima(compute, loss, covariates)
  n_star = found["N"] if "N" in found else budgets / (6 * found["D"])
  d_star = found["D"] if "D" in found else budgets / (6 * found["N"])
  sources = {f"{name.lower()}_opt": FROM_PARABOLA[name] if name in found else FROM_6ND[name]
             for name in ("N", "D")}
  return budgets, n_star, d_star, sources


def frontier(compute: np.ndarray, loss: np.ndarray, *, n: np.ndarray | None = None,
             d: np.ndarray | None = None, n_resamples: int = 0, seed: int = 0) -> dict:
  """Power laws N*(C), D*(C) of Approach 2 and, optionally, bootstrap intervals.

  Returns ``{"n_opt": {"coef", "exponent", "bootstrap"?}, "d_opt": {...}, "minima": ...,
  "sources": {"n_opt": how, "d_opt": how}}``. Bootstrap resamples rows with replacement
  and recomputes the minima.
  """
  def both(rows):
    budgets, n_star, d_star, sources = optima(
        compute[rows], loss[rows], None if n is None else n[rows], None if d is None else d[rows])
    return fit_power_law(budgets, n_star), fit_power_law(budgets, d_star), (budgets, n_star,
                                                                          d_star), sources

  n_law, d_law, (budgets, n_star, d_star), sources = both(np.arange(len(loss)))
  out = {"n_opt": dataclasses.asdict(n_law), "d_opt": dataclasses.asdict(d_law),
         "minima": {"compute": budgets.tolist(), "n_opt": n_star.tolist(),
                    "d_opt": d_star.tolist()},
         "sources": sources}
  if n_resamples:
    rng = np.random.default_rng(seed)
    samples = {k: [] for k in ("n_coef", "n_exponent", "d_coef", "d_exponent")}
    for _ in range(n_resamples):
      try:
        nl, dl, _, _ = both(rng.integers(0, len(loss), len(loss)))
      except FitError:
        continue  # a resample without enough budgets carries no frontier
      for key, value in (("n_coef", nl.coef), ("n_exponent", nl.exponent),
                         ("d_coef", dl.coef), ("d_exponent", dl.exponent)):
        samples[key].append(value)
    stats = bootstrap_lib.summarise({k: np.asarray(v) for k, v in samples.items()})
    out["n_opt"]["bootstrap"] = {"coef": stats["n_coef"], "exponent": stats["n_exponent"]}
    out["d_opt"]["bootstrap"] = {"coef": stats["d_coef"], "exponent": stats["d_exponent"]}
    out["bootstrap_resamples_used"] = len(samples["n_coef"])
  return out
